"""What changes between two commits: which paths are protected."""

from __future__ import annotations

from pipeline.planning import diffs


def test_molts_own_safety_modules_and_secrets_are_protected() -> None:
    paths = [
        "pipeline/intake/approval.py",
        "deploy/id_rsa",
        "certs/site.pem",
        ".env.prod",
        "app.py",
    ]
    assert diffs.protected_paths(paths) == paths[:4]
