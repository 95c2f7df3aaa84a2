"""Shared fixtures, one section per concern.

PostgreSQL:
* ``pg_server`` (session): the server for the whole run. ``EXCHANGE_DATABASE_URL`` if set (its
  user needs CREATEDB), else an embedded server started once and stopped at the end.
* ``pg_dsn`` (function): DSN of a fresh, empty database for one test, dropped afterwards.
* ``pg_template`` (session): the template ``pg_dsn`` clones; override it to return a database
  that already has the schema applied, so each test gets a migrated database cheaply.
* ``embedded_pg_root`` (session): where tests may create their own embedded clusters.

The service:
* ``service`` (function): the real app on a loopback port on a fresh database, with the admin
  key ``ADMIN_TOKEN``; ``start_service(service_settings(dsn, ...))`` for custom settings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exchange.app import create_app
from exchange.embedded_pg import EmbeddedPostgres, temporary_database
from exchange.settings import Settings

# ---- PostgreSQL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PgServer:
    """The session's server: ``dsn`` is where CREATE/DROP DATABASE run."""

    dsn: str
    embedded: EmbeddedPostgres | None




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
    async with temporary_database(pg_server.dsn, "t_", pg_template) as dsn:
        yield dsn


# ---------------------------------------------------------------- the service over HTTP

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@dataclass
class Service:
    """The real app on a loopback port, on a fresh database."""

    url: str
    admin_key: str
    app: web.Application
    runner: web.AppRunner
    settings: Settings


async def start_service(settings: Settings) -> Service:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    port = runner.addresses[0][1]
    return Service(f"http://127.0.0.1:{port}", ADMIN_TOKEN, app, runner, settings)


def service_settings(dsn: str, **overrides: Any) -> Settings:
    """Test settings: generous rate limits unless a test sets its own; tests drive the daily cycle."""
    base: dict[str, Any] = {"database_url": dsn, "port": 0, "admin_token": ADMIN_TOKEN, "log_level": "WARNING",
                            "rate_limit_per_s": 100_000.0, "rate_limit_burst": 100_000,
                            "public_rate_limit_per_s": 100_000.0, "snapshot_every": 0, "scheduler": False}
    return replace(Settings(), **(base | overrides))


@pytest.fixture
async def service(pg_dsn: str) -> AsyncIterator[Service]:
    svc = await start_service(service_settings(pg_dsn))
    try:
        yield svc
    finally:
        await svc.runner.cleanup()
