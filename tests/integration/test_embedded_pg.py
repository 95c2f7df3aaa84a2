"""EmbeddedPostgres: lifecycle, adoption after a dead owner, stale pid files, crash recovery."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exchange.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError, resolve_database

MakePg = Callable[..., EmbeddedPostgres]


def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed owner's server is reparented and may stay unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _fetchval(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.fixture
def data_dir(embedded_pg_root: Path) -> Path:
    return embedded_pg_root / uuid.uuid4().hex


@pytest.fixture
def make_pg(data_dir: Path) -> Iterator[MakePg]:
    """Factory of EmbeddedPostgres objects for one data dir; all stopped at teardown."""
    made: list[EmbeddedPostgres] = []

    def make(**kwargs: Any) -> EmbeddedPostgres:
        made.append(EmbeddedPostgres(data_dir, **kwargs))
        return made[-1]

    yield make
    for pg in reversed(made):
        pg.stop("immediate")


async def test_start_query_stop(make_pg: MakePg) -> None:
    pg = make_pg()
    dsn = pg.start()
    assert pg.dsn == dsn
    pid = pg.pid
    assert pid is not None and _alive(pid)
    assert await _fetchval(dsn, "SELECT 1") == 1
    assert await _fetchval(dsn, "SELECT current_database()") == "exchange"
    assert pg.start() == dsn  # idempotent while running

    pg.stop()
    assert pg.pid is None
    assert not _alive(pid)
    assert not (pg.pg_dir / "postmaster.pid").exists()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn)
    with pytest.raises(EmbeddedPostgresError):
        _ = pg.dsn
    pg.stop()  # idempotent


async def test_settings_durable_and_socket_only(make_pg: MakePg) -> None:
    pg = make_pg()
    dsn = pg.start()
    conn = await asyncpg.connect(dsn)
    try:
        for name, want in [("fsync", "on"), ("synchronous_commit", "on"),
                           ("full_page_writes", "on"), ("listen_addresses", ""),
                           ("shared_buffers", "128MB"), ("max_connections", "100")]:  # fmt: skip
            assert await conn.fetchval(f"SHOW {name}") == want, name
        # ALTER SYSTEM cannot undo durability: our settings come from the command line
        await conn.execute("ALTER SYSTEM SET fsync = off")
        assert await conn.fetchval("SELECT inet_server_addr()") is None  # unix socket
    finally:
        await conn.close()
    dsn = pg.restart()
    assert await _fetchval(dsn, "SHOW fsync") == "on"
    assert (pg.pg_dir.stat().st_mode & 0o077) == 0
    with pytest.raises(ValueError):
        EmbeddedPostgres(pg.data_dir, settings={"fsync": "off"})


async def test_second_object_adopts_running_server(make_pg: MakePg) -> None:
    first = make_pg()
    first.start()
    pid = first.pid
    second = make_pg()  # the first owner "died" without stopping its server
    dsn = second.start()
    assert second.pid == pid
    assert await _fetchval(dsn, "SELECT 1") == 1
    second.stop()
    assert first.pid is None
    first.stop()  # its server is gone: a no-op that reaps its child


async def test_adopts_server_left_by_sigkilled_owner(make_pg: MakePg, data_dir: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from exchange.embedded_pg import "
        "EmbeddedPostgres as E; p = E(Path(sys.argv[1])); p.start(); print(p.pid, flush=True); "
        "time.sleep(600)"
    )
    owner = subprocess.Popen([sys.executable, "-c", script, str(data_dir)], stdout=subprocess.PIPE)
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
    finally:
        owner.kill()
        owner.wait()
    assert _alive(pid)  # the hazard: the server outlives its SIGKILLed owner

    pg = make_pg()
    dsn = pg.start()
    assert pg.pid == pid  # reused, not a second postmaster on the same data
    assert await _fetchval(dsn, "SELECT 1") == 1
    pg.stop()
    assert not _alive(pid)


@pytest.mark.parametrize("intruder", ["sleep", "other_cluster_postgres"])
async def test_stale_pid_file_never_signals_unrelated_process(
    make_pg: MakePg, embedded_pg_root: Path, intruder: str
) -> None:
    pg = make_pg()
    pg.start()
    pg.stop()
    other: EmbeddedPostgres | None = None
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        if intruder == "sleep":
            sleeper = subprocess.Popen(["sleep", "60"])
            victim = sleeper.pid
        else:  # a real postgres, but of another data directory: the name alone is not proof
            other = EmbeddedPostgres(embedded_pg_root / uuid.uuid4().hex)
            other.start()
            assert other.pid is not None
            victim = other.pid
        (pg.pg_dir / "postmaster.pid").write_text(
            f"{victim}\n{pg.pg_dir}\n{int(time.time())}\n5432\n/nonexistent\n\n"
            "  5432001         0\nready   \n"
        )
        dsn = pg.start()
        assert await _fetchval(dsn, "SELECT 1") == 1
        assert pg.pid not in (None, victim)
        pg.stop()
        assert _alive(victim)
        if other is not None:
            assert await _fetchval(other.dsn, "SELECT 1") == 1
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        if other is not None:
            other.stop("immediate")


async def test_stale_pid_file_of_dead_process(make_pg: MakePg) -> None:
    pg = make_pg()
    pg.start()
    pg.stop()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (pg.pg_dir / "postmaster.pid").write_text(f"{dead.pid}\n{pg.pg_dir}\n")
    assert await _fetchval(pg.start(), "SELECT 1") == 1


@pytest.mark.parametrize("crash", ["kill_immediate", "kill_hard"])
async def test_crash_and_restart_keeps_committed_data(make_pg: MakePg, crash: str) -> None:
    pg = make_pg()
    dsn = pg.start()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE t (v int)")
        await conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    finally:
        await conn.close()
    pid = pg.pid
    assert pid is not None
    getattr(pg, crash)()
    assert pg.pid is None and not _alive(pid)

    dsn = pg.start()
    assert pg.pid != pid
    assert await _fetchval(dsn, "SELECT sum(v) FROM t") == 500500
    assert "automatic recovery in progress" in pg.log_file.read_text()


async def test_readiness_timeout_reports_log_and_cleans_up(make_pg: MakePg) -> None:
    # pre_auth_delay stalls every new connection, so the server never answers pg_isready (the bound
    # leaves a loaded machine time to start the server and log that it is ready)
    slow = make_pg(ready_timeout_s=4.5, settings={"pre_auth_delay": "60s"})
    with pytest.raises(EmbeddedPostgresError, match="not ready within 4.5s") as err:
        slow.start()
    assert "database system is ready to accept connections" in str(err.value)  # the log tail
    assert slow.pid is None  # the half-started server was shut down, not leaked

    assert await _fetchval(make_pg().start(), "SELECT 1") == 1


async def test_resolve_database(data_dir: Path) -> None:
    url = "postgresql://u@db.example/x"
    assert await resolve_database(url, data_dir) == (url, None)
    dsn, server = await resolve_database(None, data_dir)
    assert server is not None
    try:
        assert await _fetchval(dsn, "SELECT 1") == 1
    finally:
        server.stop()


async def test_pg_dsn_fixture_gives_fresh_database(pg_dsn: str) -> None:
    assert (await _fetchval(pg_dsn, "SELECT current_database()")).startswith("t_")
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert await _fetchval(pg_dsn, tables) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
async def test_binaries_in_a_private_tree_run_from_a_shared_copy(make_pg: MakePg, tmp_path: Path) -> None:
    """A checkout in a 0700 directory (as `mktemp -d` makes) holds the venv and so the wheel's
    binaries, which the server user cannot reach: a copy in the temporary directory runs instead."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    pg = make_pg()
    install = pg._bin.parent  # <site-packages>/<package>/pginstallNN, libraries in <site-packages>/*.libs
    shutil.copytree(install, private / install.parent.name / install.name, symlinks=True)
    for libs in install.parent.parent.glob("*.libs"):
        shutil.copytree(libs, private / libs.name, symlinks=True)
    pg._bin = private / install.parent.name / install.name / "bin"
    dsn = pg.start()
    assert await _fetchval(dsn, "SELECT 1") == 1
    assert not pg._bin.is_relative_to(private)
    assert pg._bin.is_relative_to(tempfile.gettempdir()) and (pg._bin / "postgres").is_file()
