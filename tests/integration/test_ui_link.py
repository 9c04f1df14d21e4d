"""``molt ui-link`` from any shell on the data directory of a Molt serving the status page,
for the page or one of its pages."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from pathlib import Path

from tests.support import Molt, run_cli

StartMolt = Callable[..., Molt]
TOKEN = "ui-token-3f9a"


def test_a_shell_without_the_page_settings_gets_a_link_to_a_request_page(
    start_molt: StartMolt, molt_env: dict[str, str], tmp_path: Path
) -> None:
    molt = start_molt(MOLT_UI="true", MOLT_UI_TOKEN=TOKEN)
    port = int(molt.wait_for(r"Molt \S+ is up on port (\d+)").group(1))
    made = run_cli(molt_env, tmp_path, "ui-link", "/requests/r1234")
    assert made.returncode == 0, made.stderr
    link = made.stdout.split()[0]
    assert f":{port}/ui/login?" in link
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", link.split(str(port), 1)[1])
        reply = conn.getresponse()
        reply.read()
    finally:
        conn.close()
    assert (reply.status, reply.getheader("location")) == (303, "/requests/r1234")


def test_a_molt_without_the_page_says_so(
    start_molt: StartMolt, molt_env: dict[str, str], tmp_path: Path
) -> None:
    molt = start_molt()
    molt.wait_for(r"Molt \S+ is up on port")
    made = run_cli(molt_env, tmp_path, "ui-link")
    assert made.returncode == 1
    assert "the running Molt does not serve the status page" in made.stderr
