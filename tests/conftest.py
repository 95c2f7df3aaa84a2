"""Shared fixtures, one section per concern.

PostgreSQL:
* ``pg_server`` (session): the server for the whole run. ``EXCHANGE_DATABASE_URL`` if set (its
  user needs CREATEDB), else an embedded server started once and stopped at the end.
* ``pg_dsn`` (function): DSN of a fresh, empty database for one test, dropped afterwards.
* ``pg_template`` (session): the template ``pg_dsn`` clones; override it to return a database
  that already has the schema applied, so each test gets a migrated database cheaply.
* ``embedded_pg_root`` (session): where tests may create their own embedded clusters.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from exchange.embedded_pg import EmbeddedPostgres

# ---- PostgreSQL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PgServer:
    """The session's server: ``dsn`` is where CREATE/DROP DATABASE run."""

    dsn: str
    embedded: EmbeddedPostgres | None


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` (a postgresql:// URL) pointing at another database on the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def embedded_pg_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Parent directory for embedded clusters.

    As root the server runs as an unprivileged user (see exchange.embedded_pg), which cannot
    enter pytest's private 0700 basetemp; so as root use a fresh directory in the system temp
    dir (search-only for others), removed at the end.
    """
    if os.geteuid() != 0:
        yield tmp_path_factory.mktemp("pg")
        return
    root = Path(tempfile.mkdtemp(prefix="exchange-test-pg-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(embedded_pg_root: Path) -> Iterator[PgServer]:
    url = os.environ.get("EXCHANGE_DATABASE_URL")
    if url:
        yield PgServer(url, None)
        return
    server = EmbeddedPostgres(embedded_pg_root / "session")
    dsn = server.start()
    try:
        yield PgServer(dsn, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_template() -> str:
    return "template0"


@pytest.fixture
async def pg_dsn(pg_server: PgServer, pg_template: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    finally:
        await conn.close()  # hold no connection while the test runs
    try:
        yield dsn_with_database(pg_server.dsn, name)
    finally:
        conn = await asyncpg.connect(pg_server.dsn)
        try:  # FORCE: a test that leaked a connection must not fail the drop
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
