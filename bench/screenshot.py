"""PNGs of the status page for a person to look at: the index and a failed update's page.

A generated target with embedded Redis and a real worker (bench/harness.py); one deploy
that lands and one that fails phase 2 and rolls back; the bot's real HTTP server with
MOLT_UI on, in this process; headless Chromium opens one-time links (``molt ui-link``'s)
and saves what it shows. Without Chromium it says so and saves nothing.

    python bench/screenshot.py [--out bench/screenshots]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for ``bench``

from bench.harness import rig
from bench.repo import push_change

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TOKEN = "screenshot-token"


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def shoot(chromium: str, url: str, png: Path, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="molt-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size=1280,{height}",
                f"--screenshot={png}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/screenshots"))
    args = parser.parse_args(argv)
    chromium = browser()
    if chromium is None:
        print("no headless Chromium found (chromium, google-chrome): no screenshots taken")
        return 0
    from bot.server import HttpServer
    from bot.ui import new_link
    from pipeline.config import load_settings
    from pipeline.requests.store import RequestStore

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    with rig(files=200, change=20) as the_rig:
        request, _ = the_rig.submit()
        the_rig.approve_and_wait(request.id)
        push_change(the_rig.root / "service", 10, seed=2, break_live=True)
        failed, _ = the_rig.submit()
        the_rig.approve_and_wait(failed.id)
        shown = the_rig.settings.model_dump(exclude_none=True)
        settings = load_settings(**shown | {"ui": True, "ui_token": TOKEN, "http_port": 0})
        server = HttpServer("127.0.0.1", 0, the_rig.conn, settings, "screenshot")
        port = server.start()
        try:
            shown = RequestStore(the_rig.conn).get(failed.id)
            for name, page, height in (
                ("index.png", "/", 1400),
                ("update.png", f"/requests/{shown.id}", 1000),
            ):
                shoot(chromium, new_link(the_rig.conn, "127.0.0.1", port, page), out / name, height)
                print(f"saved {out / name}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
