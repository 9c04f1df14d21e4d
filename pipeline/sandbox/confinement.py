"""Where a test command runs: a sandbox, because code under test is not trusted yet.

Every test command Molt runs (pre-flight, both validation phases, reruns, the model's
own test runs while it writes a change) starts here; the service's restart and health
commands do not (they must reach the live service). With bubblewrap (``bwrap``) a test
command gets:

- an environment built from an allowlist (``PATH``, ``HOME``, ``LANG``/``LC_*``, ``TZ``,
  ``TMPDIR``, ``CI``) plus the variables its target names in ``test_env``, and
  ``PYTHONDONTWRITEBYTECODE`` unless git ignores ``__pycache__`` in the checkout;
- a network namespace of its own (its own loopback only) unless ``test_network = "host"``;
- the whole filesystem read-only, writable only in the checkout under test, with a private
  ``/tmp`` and ``$HOME`` that vanish with it; Molt's data directory, the credential files
  Molt knows of, the Redis socket, the user's home and, unless the checkout *is* the live
  checkout (phase 2), the live checkout are out of sight;
- a PID namespace of its own, so that ending it ends everything it started;
- limits (``test_limits``): memory per process (RLIMIT_AS), processes (a pids cgroup where
  one can be made, else RLIMIT_NPROC) and open files (RLIMIT_NOFILE).

Without a sandbox (MOLT_SANDBOX=off, or ``auto`` on a host that cannot make one) the
command still gets the environment, the limits and a private ``HOME``/``TMPDIR``, and runs
under pipeline/sandbox/reaper.py, which ends every process it started when it ends.

As root, the command runs as uid 1000 of a user namespace of its own (the same files, no
capabilities), so that a Molt under test can make sandboxes of its own inside this one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import (
    NETWORK_HOST,
    NETWORK_NONE,
    SANDBOX_OFF,
    Limits,
    Settings,
)
from pipeline.git import Git
from pipeline.processes import alive, die_with_parent

#: Variables a test command gets from Molt's environment whatever the target says.
ALLOWED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM")
ALLOWED_PREFIXES = ("LC_",)
#: The uid and gid a test command has when Molt runs as root (mapped back to root outside:
#: files it writes in its checkout stay Molt's).
SANDBOX_UID = 1000
#: Where the sandbox's private home is, inside its private /tmp.
SANDBOX_HOME = "/tmp/home"

_REAPER = Path(__file__).resolve().parent / "reaper.py"


# -- what this host can do ----------------------------------------------------------------


@dataclass(frozen=True)
class Support:
    """What the host offers for sandboxes, found once per process (``molt doctor`` prints it)."""

    bwrap: str  # the working bwrap's path, or ""
    found: str  # what was found, for a person
    proc: tuple[str, ...] = ()  # how /proc is given to the sandbox
    cgroup: str = ""  # a pids cgroup sandboxes' cgroups are made in, or ""

    @property
    def works(self) -> bool:
        return bool(self.bwrap)

    @property
    def processes(self) -> str:
        """How the process limit is held."""
        if self.cgroup:
            return f"a pids cgroup under {self.cgroup}"
        if os.geteuid() != 0:
            return "RLIMIT_NPROC (counted for Molt's whole user)"
        return "not held: running as root, and no pids cgroup can be made"


@functools.cache
def support() -> Support:
    return _probe()


def _probe() -> Support:
    cgroup = _cgroup_home()
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return Support("", "bubblewrap (bwrap) is not installed", cgroup=cgroup)
    version = _output([bwrap, "--version"]).strip() or "bwrap"
    errors = []
    # A fresh /proc for the PID namespace; inside another sandbox the kernel refuses to
    # mount one (its /proc is partly covered), and the one there is kept.
    for proc in (("--proc", "/proc"), ("--bind", "/proc", "/proc")):
        argv = [bwrap, "--ro-bind", "/", "/", *proc, *_namespaces(True), "true"]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        if done.returncode == 0:
            how = "" if proc[0] == "--proc" else " (inside another sandbox: its /proc is kept)"
            return Support(bwrap, f"{version} at {bwrap}: works{how}", proc, cgroup)
        errors.append(done.stderr.decode(errors="replace").strip())
    return Support(
        "", f"{version} at {bwrap} cannot make a sandbox here: {errors[0]}", cgroup=cgroup
    )


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _namespaces(network: bool) -> list[str]:
    flags = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if network:
        flags.append("--unshare-net")
    if os.geteuid() == 0:
        flags += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    return [*flags, "--cap-drop", "ALL", "--die-with-parent", "--new-session"]


def _cgroup_home() -> str:
    """The pids cgroup (v1) this process is in, if Molt may make cgroups under it: a
    sandbox's process limit counts every process in it, whoever runs it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" not in controllers.split(","):
            continue
        home = Path("/sys/fs/cgroup/pids") / path.lstrip("/")
        probe = home / f"molt-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return ""
        return str(home)
    return ""


# -- one test command -----------------------------------------------------------------------


@dataclass(frozen=True)
class Confinement:
    """The rules test commands of one target run under, from its settings; ``launch`` applies
    them to one command in one checkout."""

    sandboxed: bool
    env: dict[str, str]
    network: str = NETWORK_NONE
    limits: Limits = field(default_factory=Limits)
    #: Out of sight: directories get an empty tmpfs, files /dev/null.
    hidden: tuple[Path, ...] = ()
    #: The live checkout: out of sight unless it is the checkout under test.
    live: Path | None = None
    #: Shown again, read-only, though under something hidden (the interpreter's environment).
    kept: tuple[Path, ...] = ()
    why_unsandboxed: str = ""

    @classmethod
    def of(cls, settings: Settings) -> Confinement:
        """The confinement of ``settings``' target (its ``test_env``, ``test_network`` and
        ``test_limits``), sandboxed as MOLT_SANDBOX says and the host allows."""
        found = support()
        why = ""
        if settings.sandbox == SANDBOX_OFF:
            why = "MOLT_SANDBOX=off"
        elif not found.works:
            why = found.found
        hidden = [settings.data_dir, *_credential_files(settings)]
        if settings.redis_url and settings.redis_url.startswith("unix://"):
            hidden.append(Path(settings.redis_url.removeprefix("unix://").split("?")[0]))
        return cls(
            sandboxed=not why,
            env=sandbox_env(settings.test_env),
            network=settings.test_network,
            limits=Limits.parse(settings.test_limits),
            hidden=tuple(hidden),
            live=settings.target_dir,
            why_unsandboxed=why,
        )

    @classmethod
    def default(cls) -> Confinement:
        """For a command run without a target's settings: the sandbox if the host has one,
        no extra variables, the default limits."""
        found = support()
        return cls(sandboxed=found.works, env=sandbox_env(()), why_unsandboxed=found.found)

    def describe(self) -> str:
        """One line for the plan and the start-up log."""
        if not self.sandboxed:
            return f"test commands run without a sandbox ({self.why_unsandboxed})"
        network = "the host's network" if self.network == NETWORK_HOST else "no network"
        return f"test commands run in a sandbox: {network}, {self.limits.describe()}"

    @contextlib.contextmanager
    def launch(self, command: str, checkout: Path) -> Iterator[Launch]:
        """How to start ``command`` in ``checkout`` (argv, environment, what the child does
        before it runs); cleans up after it (its cgroup, its scratch directories)."""
        _sweep_left_behind()
        cgroup = _Cgroup.make(self.limits.processes)
        bytecode = {} if _ignores_bytecode(checkout) else {"PYTHONDONTWRITEBYTECODE": "1"}
        scratch, held = None, None
        if not self.sandboxed:
            scratch = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-"))
            held = _hold(scratch)
        try:
            if self.sandboxed:
                argv = self._bwrap(command, checkout.resolve(), cgroup)
                env = {**self.env, **bytecode, "HOME": SANDBOX_HOME, "TMPDIR": "/tmp"}
            else:
                assert scratch is not None
                (scratch / "home").mkdir()
                (scratch / "tmp").mkdir()
                argv = [sys.executable, "-S", str(_REAPER), "/bin/sh", "-c", command]
                env = {
                    **self.env,
                    **bytecode,
                    "HOME": str(scratch / "home"),
                    "TMPDIR": str(scratch / "tmp"),
                }
            yield Launch(argv, env, self, cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if held is not None:
                os.close(held)

    def _bwrap(self, command: str, checkout: Path, cgroup: _Cgroup | None) -> list[str]:
        found = support()
        argv = [found.bwrap, "--ro-bind", "/", "/", *found.proc, "--dev", "/dev"]
        argv += _namespaces(self.network != NETWORK_HOST)
        home = Path.home().resolve()
        hidden = [Path("/tmp"), *(p.resolve() for p in self.hidden if p.exists())]
        if home != Path("/"):
            hidden.append(home)
        live = self.live.resolve() if self.live else None
        if live is not None and live != checkout and live.exists():
            hidden.append(live)
        mounts: list[tuple[Path, list[str]]] = []
        for path in hidden:
            how = "--tmpfs" if path.is_dir() else "--ro-bind"
            mounts.append(
                (path, [how, str(path)] if how == "--tmpfs" else [how, "/dev/null", str(path)])
            )
        hidden_dirs = [p for p in hidden if p.is_dir()]
        for path in {*self.kept, *_interpreter_paths(checkout)}:
            path = path.resolve()
            under = any(path == h or h in path.parents for h in hidden_dirs)
            writable = path == checkout or checkout in path.parents
            if path.exists() and under and not writable:
                mounts.append((path, ["--ro-bind", str(path), str(path)]))
        if live is not None and live != checkout:
            # A worktree's git data lives in the live checkout's .git: readable, and its own
            # part writable.
            mounts.append(
                (live / ".git", ["--ro-bind-try", str(live / ".git"), str(live / ".git")])
            )
            admin = _worktree_admin(checkout)
            if admin is not None:
                mounts.append((admin, ["--bind", str(admin), str(admin)]))
        mounts.append((checkout, ["--bind", str(checkout), str(checkout)]))
        if cgroup is not None:
            mounts.append((cgroup.path, ["--bind", str(cgroup.path), str(cgroup.path)]))
        # Parents before children: a later mount hides what an earlier one showed.
        for _, args in sorted(mounts, key=lambda m: len(m[0].parts)):
            argv += args
        argv += ["--dir", SANDBOX_HOME, "--chdir", str(checkout), "/bin/sh", "-c", command]
        return argv


def _interpreter_paths(checkout: Path) -> list[Path]:
    """The interpreter test commands find first on PATH, its environment and the rest of
    PATH: they stay reachable wherever they are (a virtualenv under /tmp or the home
    directory), read-only."""
    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).parent]
    # Tools on PATH under the home directory (~/.local/bin, ~/.cargo/bin) stay runnable.
    paths += [Path(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d.startswith("/")]
    venv = checkout / ".venv"
    if venv.is_symlink():
        paths.append(venv)
    return paths


def _worktree_admin(checkout: Path) -> Path | None:
    """A git worktree's own directory in the main repository (its HEAD, its index)."""
    dotgit = checkout / ".git"
    try:
        text = dotgit.read_text() if dotgit.is_file() else ""
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    path = Path(text.removeprefix("gitdir:").strip())
    return (checkout / path).resolve() if not path.is_absolute() else path.resolve()


def _credential_files(settings: Settings) -> list[Path]:
    """Credential settings that name a file rather than hold the key (an SSH key's path)."""
    files = []
    for secret in settings.secrets():
        text = secret.strip()
        if "\n" in text or len(text) > 4096 or not text.startswith(("/", "~")):
            continue
        path = Path(text).expanduser()
        with contextlib.suppress(OSError):
            if path.is_file():
                files.append(path)
    return files


def sandbox_env(names: Any) -> dict[str, str]:
    """The environment a test command starts with: the allowlist, Molt's interpreter first on
    PATH, and the variables ``names`` lists (those set)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name in ALLOWED_ENV or name.startswith(ALLOWED_PREFIXES)
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["CI"] = "true"
    for name in names:
        if name in os.environ:
            env[name] = os.environ[name]
    return env


# -- starting it, stopping it, and what it ran into ----------------------------------------

#: What a process says when a limit stopped it, by the limit's name in ``test_limits``.
_LIMIT_SIGNS = {
    "memory": re.compile(r"MemoryError|Cannot allocate memory|std::bad_alloc|out of memory"),
    "processes": re.compile(r"Resource temporarily unavailable|Cannot fork|fork: retry"),
    "open_files": re.compile(r"Too many open files"),
}


@dataclass
class Launch:
    """One test command about to start: what to run, with what, and how to end it."""

    argv: list[str]
    env: dict[str, str]
    confinement: Confinement
    cgroup: _Cgroup | None

    @property
    def preexec(self) -> Callable[[], None]:
        """Run in the child before it runs the command: limits, cgroup, death with Molt."""
        limits = self.confinement.limits
        root = os.geteuid() == 0
        cgroup = self.cgroup
        # The reaper ends the processes it started when told to stop; bwrap's namespace
        # ends with it whatever kills it.
        dies = die_with_parent(signal.SIGKILL if self.confinement.sandboxed else signal.SIGTERM)

        def preexec() -> None:
            if cgroup is not None:
                cgroup.join()
            elif not root:
                _lower(resource.RLIMIT_NPROC, limits.processes)
            _lower(resource.RLIMIT_AS, limits.memory * 1024 * 1024)
            _lower(resource.RLIMIT_NOFILE, limits.open_files)
            if dies is not None:
                dies()

        return preexec

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """End the command and everything it started."""
        if not self.confinement.sandboxed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def limits_reached(self, output: str) -> list[str]:
        """The limits the command ran into, each as a sentence naming it."""
        limits = self.confinement.limits
        reached = []
        for name, sign in _LIMIT_SIGNS.items():
            hit = sign.search(output) is not None
            if name == "processes" and self.cgroup is not None:
                hit = self.cgroup.reached()
            if hit:
                value = getattr(limits, name)
                unit = {"memory": " MiB a process", "processes": " processes"}.get(name, "")
                reached.append(f"it reached its {name} limit ({value}{unit}; test_limits.{name})")
        return reached


def _ignores_bytecode(checkout: Path) -> bool:
    """Whether git ignores Python's compiled bytecode in ``checkout``, at its top and in its
    packages: only then may a test command keep it there (a suite that starts its service
    hundreds of times compiles each module once, not in every process), since anything else
    it leaves would show as an untracked file of the live checkout, or of a change about to
    be committed."""
    name = f"__pycache__/module.{sys.implementation.cache_tag}.pyc"
    places = {name, f"package/{name}"}
    ignored = Git(checkout).run("check-ignore", *places, check=False).split()
    return set(ignored) == places


def _lower(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(which, (value, value))


@dataclass
class _Cgroup:
    """A pids cgroup of one test command: its processes limit counts every process in it."""

    path: Path

    @classmethod
    def make(cls, limit: int) -> _Cgroup | None:
        home = support().cgroup
        if not home:
            return None
        path = Path(home) / f"{_CGROUP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(limit))
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path)

    def join(self) -> None:
        """Called in the child: it and all it starts are counted here."""
        with open(self.path / "cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))

    def reached(self) -> bool:
        try:
            events = (self.path / "pids.events").read_text().split()
        except OSError:
            return False
        return len(events) >= 2 and events[0] == "max" and events[1] != "0"

    def remove(self) -> None:
        """Once everything in it ended (a PID namespace ends at once; allow a moment)."""
        deadline = time.monotonic() + 5
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                for pid in _members(self.path):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.005)


#: Names of what one test command leaves to clean up, followed by the pid of the Molt process
#: that made it: its cgroup (under the cgroup home) and, without a sandbox, its scratch
#: directory (under the temporary directory).
_CGROUP_PREFIX = "molt-"
_SCRATCH_PREFIX = "molt-tests-"
#: Younger than this, a cgroup or scratch directory may belong to a Molt in another PID
#: namespace that is just starting its command; it is left alone.
_LEFT_BEHIND_AGE = 60.0


def _sweep_left_behind() -> None:
    """Remove what test commands of a Molt process killed with SIGKILL left behind (its
    ``finally`` never ran): cgroups and scratch directories named after a process that is
    gone. A cgroup with a process still in it cannot be removed, and is not."""
    now = time.time()
    places = [(Path(tempfile.gettempdir()), _SCRATCH_PREFIX, True)]
    if support().cgroup:
        places.append((Path(support().cgroup), _CGROUP_PREFIX, False))
    for where, prefix, is_scratch in places:
        try:
            entries = list(where.iterdir())
        except OSError:
            continue
        for entry in entries:
            owner = entry.name.removeprefix(prefix).split("-", 1)[0]
            if not entry.name.startswith(prefix) or not owner.isdigit():
                continue
            try:
                if now - entry.stat().st_mtime < _LEFT_BEHIND_AGE or alive(int(owner)):
                    continue
                if not is_scratch:
                    entry.rmdir()  # refused while a process is in it
                    continue
                held = os.open(entry, os.O_RDONLY)
                try:
                    # Its Molt holds it while its command runs, in whatever PID namespace.
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(entry)
                finally:
                    os.close(held)
            except OSError:
                continue


def _hold(scratch: Path) -> int:
    """A shared lock on a scratch directory while its command runs (closing it lets go)."""
    held = os.open(scratch, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)
    return held


def _members(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
