"""Signed releases: manifests, keys and their rotation, and what the release check refuses
(tampered files, unsigned commits, untrusted keys, altered manifests, downgrades)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipeline import audit
from pipeline.config import Settings, load_settings
from pipeline.exceptions import ConfigError
from pipeline.git import Git
from pipeline.intake import control
from pipeline.keyspace import TargetKeys
from pipeline.releases import keys, ledger
from pipeline.releases import signing as releases
from pipeline.releases.manifests import Manifest, ReleaseKind
from pipeline.releases.trees import check_tree, tree_hash_at
from pipeline.releases.verification import Problem, Verdict, verify_checkout
from pipeline.requests.store import Origin, RequestStore
from pipeline.update.release_rollback import operator_rollback
from tests.support import ServiceRepo, git


def _key_text() -> tuple[str, str]:
    """A fresh Ed25519 key: (base64 private seed, base64 public key)."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(seed).decode(), base64.b64encode(public).decode()


def _deploy(service: ServiceRepo, settings: Settings, conn: redis.Redis, files: dict) -> str:
    """A new commit upstream, moved to live and signed as an update would sign it."""
    parent = service.live_head()
    commit = service.commit(files, "change")
    git(service.live, "pull", "-q", "--ff-only")
    releases.sign_release(
        settings,
        conn,
        kind=ReleaseKind.UPDATE,
        commit=commit,
        parent=parent,
        codename=f"update-{commit[:5]}",
    )
    return commit


def test_the_first_check_records_a_signed_baseline_and_audits_it(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    assert verify_checkout(settings, conn).problem is Problem.NO_RELEASE
    verdict = verify_checkout(settings, conn, baseline=True)
    assert verdict.allowed and verdict.baseline
    assert verdict.manifest is not None and verdict.manifest.release == 1
    assert verdict.manifest.kind is ReleaseKind.BASELINE
    assert verdict.manifest.target_commit == service.live_head()
    assert "is now the signed baseline, release 1 (baseline by " in verdict.reason
    [entry] = [e for e in audit.entries(conn) if e["action"] == "release_baseline"]
    assert entry["detail"]["commit"] == service.live_head()
    again = verify_checkout(settings, conn, baseline=True)
    assert again.allowed and not again.baseline and "tracked files are intact" in again.reason


def test_a_verdict_names_its_problem_as_its_check_and_takes_its_details_by_name() -> None:
    refused = Verdict(False, "downgrade refused", problem=Problem.DOWNGRADE, highest=2)
    assert not refused and refused.check == "release:downgrade"
    assert Verdict(True, "verified").check == "release"
    with pytest.raises(TypeError):
        Verdict(False, "downgrade refused", Problem.DOWNGRADE)  # type: ignore[call-arg]


def test_the_key_is_created_once_readable_only_by_its_owner(settings: Settings) -> None:
    key = keys.signing_key(settings)
    path = settings.data_dir / "keys" / "release-signing.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (settings.data_dir / "keys").stat().st_mode & 0o777 == 0o700
    assert keys.signing_key(settings).key_id == key.key_id
    assert (settings.data_dir / "keys" / "release-signing.pub").read_text().strip() == (
        key.public_b64
    )
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"can be read by others \(mode 644\): `chmod 600"):
        keys.signing_key(settings)


def test_a_signing_key_from_the_environment_is_pem_or_base64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed, public = _key_text()
    monkeypatch.setenv("MOLT_SIGNING_KEY", seed)
    from_seed = keys.signing_key(load_settings())
    assert from_seed.public_b64 == public and from_seed.source == "MOLT_SIGNING_KEY"
    pem = from_seed.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    monkeypatch.setenv("MOLT_SIGNING_KEY", pem)
    assert keys.signing_key(load_settings()).key_id == from_seed.key_id
    assert pem in load_settings().secrets()
    monkeypatch.setenv("MOLT_SIGNING_KEY", "not a key")
    with pytest.raises(ConfigError, match="MOLT_SIGNING_KEY: expected an Ed25519 private key"):
        load_settings()
    monkeypatch.delenv("MOLT_SIGNING_KEY")
    monkeypatch.setenv("MOLT_TRUSTED_KEYS", f"{public},abcd")
    with pytest.raises(ConfigError, match="MOLT_TRUSTED_KEYS: expected comma-separated Ed25519"):
        load_settings()


def test_an_edited_manifest_no_longer_verifies(settings: Settings, conn: redis.Redis) -> None:
    baseline = verify_checkout(settings, conn, baseline=True).manifest
    assert baseline is not None
    trusted = keys.trusted_keys(settings)
    assert keys.signature_problem(baseline, trusted) == ""
    again = Manifest.from_json(baseline.to_json())
    assert again == baseline and again.canonical() == baseline.canonical()
    forged = Manifest.from_json(baseline.to_json().replace('"release": 1', '"release": 9'))
    assert keys.signature_problem(forged, trusted) == "altered"

    # Edited on disk and in Redis alike: the release check names what happened.
    path = ledger.releases_dir(settings) / baseline.file_name
    edited = json.loads(path.read_text()) | {"checks": [{"name": "tests", "ok": True}]}
    path.write_text(json.dumps(edited))
    conn.hset(TargetKeys(settings.target_id).releases, "1", json.dumps(edited))
    verdict = verify_checkout(settings, conn)
    assert verdict.problem is Problem.ALTERED
    assert "was altered after it was signed" in verdict.reason


def test_tampered_files_are_named(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    verify_checkout(settings, conn, baseline=True)
    (service.live / "app.py").write_text("def greet():\n    return 'pwned'\n")
    (service.live / "health.py").unlink()
    (service.live / "checks" / "extra.py").write_text("x = 1\n")
    os.chmod(service.live / "service_tests.py", 0o755)  # the mode alone is not a change
    verdict = verify_checkout(settings, conn)
    assert verdict.problem is Problem.TAMPERED
    assert "modified: app.py; missing: health.py; added: checks/extra.py" in verdict.reason
    assert verdict.paths == ["app.py", "health.py", "checks/extra.py"]


def test_a_commit_no_release_names_is_refused(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    verify_checkout(settings, conn, baseline=True)
    before = service.live_head()
    service.commit({"app.py": "VERSION = 2\n"}, "pulled by hand")
    git(service.live, "pull", "-q", "--ff-only")
    verdict = verify_checkout(settings, conn)
    assert verdict.problem is Problem.UNSIGNED
    assert f"{service.live_head()[:7]} is not a signed release" in verdict.reason
    assert f"`git checkout {before[:7]}`" in verdict.reason


def test_a_downgrade_is_refused_until_a_rollback_release_allows_it(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    old = verify_checkout(settings, conn, baseline=True).manifest
    assert old is not None
    new = _deploy(service, settings, conn, {"app.py": "VERSION = 2\n"})
    assert verify_checkout(settings, conn).manifest.release == 2  # type: ignore[union-attr]
    git(service.live, "reset", "-q", "--hard", old.target_commit)
    verdict = verify_checkout(settings, conn)
    assert verdict.problem is Problem.DOWNGRADE
    assert f"{old.short} is release 1 (baseline by " in verdict.reason
    assert f"lower than release 2 (update-{new[:5]}, update) of {new[:7]}" in verdict.reason
    assert f"`molt release rollback update-{new[:5]}`" in verdict.reason

    back = operator_rollback(settings, conn, f"update-{new[:5]}", "console:alice")
    assert back.allowed, back.reason
    assert back.manifest is not None and back.manifest.release == 3
    assert back.manifest.kind is ReleaseKind.ROLLBACK
    assert back.manifest.operator == "console:alice"
    assert back.manifest.parent_commit == new
    assert verify_checkout(settings, conn).allowed


def test_an_operator_rollback_moves_a_clean_checkout_back(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    old = verify_checkout(settings, conn, baseline=True).manifest
    assert old is not None
    new = _deploy(service, settings, conn, {"app.py": "VERSION = 2\n"})
    (service.live / "app.py").write_text("VERSION = 3\n")
    refused = operator_rollback(settings, conn, f"update-{new[:5]}", "console:alice")
    assert not refused.allowed and "uncommitted changes: app.py" in refused.reason
    git(service.live, "checkout", "--", ".")
    done = operator_rollback(settings, conn, f"update-{new[:5]}", "console:alice")
    assert done.allowed and service.live_head() == old.target_commit
    unknown = operator_rollback(settings, conn, "no-such-update", "console:alice")
    assert "no signed release is named 'no-such-update'" in unknown.reason


def test_returning_after_a_failed_update_is_signed_only_when_needed(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    old = verify_checkout(settings, conn, baseline=True).manifest
    assert old is not None
    kept = releases.record_return(
        settings, conn, commit=old.target_commit, from_commit="x" * 40, codename="c", reason="r"
    )
    assert kept is None  # still the newest release: nothing to allow
    new = _deploy(service, settings, conn, {"app.py": "VERSION = 2\n"})
    back = releases.record_return(
        settings,
        conn,
        commit=old.target_commit,
        from_commit=new,
        codename="calm-heron",
        reason="update amber-otter failed in verify",
    )
    assert back is not None and back.describe() == "release 3 (calm-heron, rollback by molt)"
    git(service.live, "reset", "-q", "--hard", old.target_commit)
    assert verify_checkout(settings, conn).allowed


def test_keys_rotate_through_the_trusted_list(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    verify_checkout(settings, conn, baseline=True)
    old_public = keys.signing_key(settings).public_b64
    seed, _ = _key_text()
    rotated = settings.model_copy(
        update={"signing_key": load_settings(signing_key=seed).signing_key}
    )
    verdict = verify_checkout(rotated, conn)
    assert verdict.problem is Problem.UNTRUSTED
    assert "add its public key to MOLT_TRUSTED_KEYS" in verdict.reason
    hex_key = base64.b64decode(old_public).hex()
    both = rotated.model_copy(update={"trusted_keys": [hex_key]})
    assert verify_checkout(both, conn).allowed
    _deploy(service, both, conn, {"app.py": "VERSION = 2\n"})
    assert verify_checkout(rotated, conn).allowed  # the old key is no longer needed


def test_manifests_survive_a_wiped_redis(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    verify_checkout(settings, conn, baseline=True)
    _deploy(service, settings, conn, {"app.py": "VERSION = 2\n"})
    conn.delete(
        TargetKeys(settings.target_id).releases, TargetKeys(settings.target_id).highest_release
    )
    verdict = verify_checkout(settings, conn)
    assert verdict.allowed and verdict.highest == 2
    assert sorted(conn.hkeys(TargetKeys(settings.target_id).releases)) == ["1", "2"]
    assert conn.get(TargetKeys(settings.target_id).highest_release) == "2"


def test_the_tree_hash_is_the_same_from_git_and_from_disk(service: ServiceRepo) -> None:
    (service.work / "link").symlink_to("app.py")
    commit = service.commit({}, "a symlink")
    git(service.live, "pull", "-q", "--ff-only")
    live = Git(service.live)
    expected = tree_hash_at(live, commit)
    assert check_tree(live, commit, expected).paths == []
    (service.live / "link").unlink()
    (service.live / "link").symlink_to("health.py")
    assert check_tree(live, commit, expected).modified == ["link"]


def test_molt_release_verify_checks_another_target(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    env = {
        **os.environ,
        "MOLT_DATA_DIR": str(settings.data_dir),
        "MOLT_TARGET_DIR": str(service.live),
    }
    command = [sys.executable, "-m", "bot.cli", "release", "verify"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1 and "no release of" in first.stderr
    verify_checkout(settings, conn, baseline=True)
    ok = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "is signed release 1 (baseline by " in ok.stdout


def test_an_update_signs_its_checks_and_a_rollback_names_its_operator(
    settings: Settings, conn: redis.Redis, service: ServiceRepo
) -> None:
    requests = RequestStore(conn)
    parent = service.live_head()
    new = service.commit({"app.py": "VERSION = 2\n"}, "v2")
    git(service.live, "pull", "-q", "--ff-only")
    checks = [{"name": "phase 2: tests", "ok": True, "seconds": 0.25, "detail": "3 passed"}]
    deploy = requests.create(Origin("console", "alice"), "deploy main", "deploy", "main")
    kind = control.release_kind(settings, deploy)
    update = releases.record_update(
        settings, conn, deploy, kind=kind, commit=new, parent=parent, checks=checks
    )
    assert (update.release, update.kind, update.operator) == (2, ReleaseKind.UPDATE, "")
    assert update.checks == checks and update.parent_commit == parent
    baseline = ledger.read(settings, conn).by_release(1)
    assert baseline is not None and baseline.target_commit == parent  # what ran before

    for who, kind in (("alice", ReleaseKind.ROLLBACK), ("mallory", ReleaseKind.UPDATE)):
        asked = requests.create(Origin("console", who), "rollback amber-otter", "rollback", parent)
        back = releases.record_update(
            settings,
            conn,
            asked,
            kind=control.release_kind(settings, asked),
            commit=parent,
            parent=new,
            checks=checks,
        )
        assert back.kind is kind
    assert ledger.read(settings, conn).by_release(3).operator == "console:alice"  # type: ignore[union-attr]
