"""The config file's backups, and putting the newest back (the config step of ``molt recover``).

``molt run`` keeps a copy of the config file each time it starts with one that changed
(``backup_config``); ``restore_config`` puts the newest back when the file is missing or
does not load, before the settings can load at all.

Files:
  MOLT_DATA_DIR/config-backup/<config name>.<UTC time>   the last KEEP_BACKUPS versions
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import Settings, config_file, load_settings
from pipeline.exceptions import ConfigError
from pipeline.update.repair import Step

KEEP_BACKUPS = 10
BACKUP_DIR = "config-backup"
_STAMP = re.compile(r"\.\d{8}T\d{12}Z$")


def backups(data_dir: Path, name: str) -> list[Path]:
    """Saved copies of the config file called ``name``, oldest first."""
    folder = data_dir / BACKUP_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{name}.*") if _STAMP.search(p.name))


def backup_config(settings: Settings, path: Path | None = None) -> Path | None:
    """Keep a copy of the config file that just loaded, if it changed since the last copy;
    returns the new copy, or None. ``molt run`` calls this at each start."""
    path = path or config_file()
    if not path.is_file():
        return None
    content = path.read_bytes()
    saved = backups(settings.data_dir, path.name)
    if saved and saved[-1].read_bytes() == content:
        return None
    folder = settings.data_dir / BACKUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    copy = folder / f"{path.name}.{stamp}"
    partial = folder / f".{copy.name}.partial"
    partial.write_bytes(content)
    partial.replace(copy)
    for old in backups(settings.data_dir, path.name)[:-KEEP_BACKUPS]:
        old.unlink(missing_ok=True)
    return copy


def config_problem(path: Path) -> str:
    """Why the settings do not load with ``path`` as the config file; "" if they do."""
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except tomllib.TOMLDecodeError as exc:
        return f"is not valid TOML: {exc}"
    before = os.environ.get("MOLT_CONFIG")
    os.environ["MOLT_CONFIG"] = str(path)
    try:
        load_settings()
    except ConfigError as exc:
        return " ".join(str(exc).split())
    finally:
        if before is None:
            os.environ.pop("MOLT_CONFIG", None)
        else:
            os.environ["MOLT_CONFIG"] = before
    return ""


def data_dir_hint(path: Path) -> Path:
    """MOLT_DATA_DIR before the settings can load: the environment, the config file if it
    still parses, else the default."""
    value = os.environ.get("MOLT_DATA_DIR")
    if not value:
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
            value = str(raw.get("MOLT_DATA_DIR") or raw.get("molt_data_dir") or "")
        except (OSError, tomllib.TOMLDecodeError):
            value = ""
    return Path(value or ".molt").expanduser().resolve()


def restore_config(path: Path, data_dir: Path) -> Step:
    """Put back the newest backup of the config file if it is missing or does not load
    (and the backup does); a broken file is kept beside it, renamed."""
    step = Step("config")
    saved = backups(data_dir, path.name)
    newest = saved[-1] if saved else None
    if not path.exists():
        if newest is None:
            step.say(f"no {path} and no backup of one: the settings come from the environment")
            return step
        problem = config_problem(newest)
        if problem:
            step.fail(f"{path} is missing, and its newest backup {newest} does not load: {problem}")
            return step
        shutil.copy2(newest, path)
        step.say(f"{path} was missing: restored it from {newest}")
        return step
    problem = config_problem(path)
    if not problem:
        step.say(f"{path} loads; nothing to restore")
        return step
    if newest is None:
        step.fail(f"{path} does not load ({problem}), and there is no backup in {data_dir}")
        return step
    if config_problem(newest):
        step.fail(
            f"{path} does not load ({problem}), and neither does its newest backup {newest}: "
            "left as it is"
        )
        return step
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}.broken-{stamp}")
    path.replace(kept)
    shutil.copy2(newest, path)
    step.say(
        f"{path} did not load ({problem}): restored it from {newest}; the broken file is {kept}"
    )
    return step
