"""`exchange ...`: serve (the main job), demo (a day of platform life), migrate, gateway (feeds from the
journal), cycle, bot."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from . import demo_day, logs, settings
from .app import StartupError, create_app, dsn_key
from .bot import BotSettings, run_bot
from .client import ApiError, ExchangeClient
from .demo import create_demo_accounts, curl_lines
from .demo_day import DEFAULT_SEED
from .embedded_pg import EmbeddedPostgres
from .gateway import create_gateway_app
from .loop import run as run_on_loop
from .routes import serving_key
from .store import migrate

log = logging.getLogger("exchange")
SHUTDOWN_TIMEOUT_S = 10.0  # in-flight requests get this long to finish on SIGTERM


async def serve(cfg: settings.Settings, *, demo: bool = False) -> None:
    app = create_app(cfg)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()  # starts the database, recovers the engine, starts the sequencer
    site = web.TCPSite(runner, cfg.host, cfg.port, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await site.start()
    url = f"http://{cfg.host}:{cfg.port}"
    services = app[serving_key].services
    print(f"exchange: serving on {url} (database: {'embedded in ' + str(cfg.data_dir) if cfg.embedded else 'external'})",
          flush=True)
    if services is None:
        print("exchange: standby: another instance leads; this one takes over when it stops (readyz: not ready)",
              flush=True)
    elif services.bootstrap_admin_key:
        print(f"exchange: first start: the operator's admin key (shown once): {services.bootstrap_admin_key}",
              flush=True)
    if demo and services is not None:
        accounts = await create_demo_accounts(services)
        for name, acct, key in accounts:
            print(f"exchange: demo account {name} (id {acct}) key: {key}", flush=True)
        for line in curl_lines(url, accounts):
            print(line, flush=True)
        if not accounts:
            print("exchange: demo accounts exist already (their keys were shown when created)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("exchange: stopping: draining in-flight commands", flush=True)
    # Stops accepting, lets in-flight requests finish, drains the sequencer, stops PostgreSQL.
    await runner.cleanup()
    print("exchange: stopped", flush=True)


async def serve_gateway(cfg: settings.Settings) -> None:
    """A feed gateway: /v1/ws from the committed journal of the engine's database."""
    app = create_gateway_app(cfg)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()  # reads the starting point and starts tailing the journal
    site = web.TCPSite(runner, cfg.host, cfg.port, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await site.start()
    print(f"exchange: gateway serving /v1/ws on http://{cfg.host}:{cfg.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    print("exchange: gateway stopped", flush=True)


async def run_migrate(cfg: settings.Settings) -> list[str]:
    server = None
    dsn = cfg.database_url
    if dsn is None:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        server = EmbeddedPostgres(cfg.data_dir.resolve())
        dsn = server.start()
    try:
        conn = await asyncpg.connect(dsn)
        try:
            return await migrate(conn)
        finally:
            await conn.close()
    finally:
        if server is not None:
            server.stop()


async def run_cycle(url: str, key: str, day: str | None) -> int:
    """`exchange cycle`: ask the running service to run a day's cycle (or catch up); print the outcome."""
    async with ExchangeClient(url, key, timeout_s=600) as client:
        try:
            run = await client.run_cycle(day)
        except ApiError as exc:
            print(f"exchange: cycle refused: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
    for d in run.days:
        print(f"exchange: cycle {d.date}: {d.status}, minted {d.minted} HB to {d.credited_accounts} accounts"
              f" ({d.holders} holders), price of {d.price_date}: {d.price} CNY")
    if not run.days:
        print("exchange: no closed day left to run")
    print(f"exchange: next day to run: {run.next_date}")
    return 0


async def _run_until_signal(run: Any, bot_settings: BotSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"exchange: bot following {bot_settings.url}", flush=True)
    await run(bot_settings, stop)
    print("exchange: bot stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="exchange", description="The 嗨贝 (HB) exchange service")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bot", help="run the platform's buyback bot (env EXCHANGE_URL, EXCHANGE_BOT_KEY, "
                               "EXCHANGE_BOT_MAX_QTY, EXCHANGE_BOT_INTERVAL_S)")
    cyc = sub.add_parser("cycle", help="run the daily cycle of a closed day now (or catch up) on a running service")
    cyc.add_argument("--date", help="YYYY-MM-DD, a closed day; absent: every closed day not yet run")
    cyc.add_argument("--url", default=os.environ.get("EXCHANGE_URL", "http://127.0.0.1:8080"),
                     help="the service (env EXCHANGE_URL)")
    cyc.add_argument("--admin-key", default=os.environ.get("EXCHANGE_ADMIN_TOKEN"),
                     help="an admin API key (env EXCHANGE_ADMIN_TOKEN)")
    demo = sub.add_parser("demo", help="a day of platform life: start the engine, a gateway and the bot, simulate"
                                        " consumptions, a daily cycle and trading, print a summary")
    demo.add_argument("--data-dir", type=Path, default=Path("var/demo"),
                      help="where each run gets a fresh sub-directory for its embedded PostgreSQL (default var/demo)")
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the simulation's random seed")
    demo.add_argument("--consumers", type=int, default=20, help="consumers to open (default 20)")
    demo.add_argument("--keep", action="store_true",
                      help="after the summary keep everything running (URLs and keys printed) until Ctrl-C")
    for name, help_text in (("serve", "run the service (--demo: with three funded demo accounts)"),
                            ("migrate", "apply database migrations and exit"),
                            ("gateway", "serve the /v1/ws feeds from the engine's database (needs --database-url)")):
        settings.add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    if args.command == "bot":
        logs.configure(os.environ.get("EXCHANGE_LOG_LEVEL", "INFO").upper())
        try:
            bot_settings = BotSettings.from_env()
        except ValueError as exc:
            parser.error(str(exc))
        sys.exit(asyncio.run(_run_until_signal(run_bot, bot_settings)))
    if args.command == "demo":
        if not 10 <= args.consumers <= 1000:
            parser.error("--consumers must be from 10 to 1000")
        sys.exit(demo_day.main(demo_day.Options(args.data_dir, seed=args.seed, keep=args.keep,
                                                consumers=args.consumers)))
    if args.command == "cycle":
        if not args.admin_key:
            parser.error("cycle needs --admin-key (or EXCHANGE_ADMIN_TOKEN)")
        sys.exit(asyncio.run(run_cycle(args.url, args.admin_key, args.date)))
    try:
        cfg = settings.load(args=args)
    except ValueError as exc:
        parser.error(str(exc))
    logs.configure(cfg.log_level)
    if args.command == "gateway":
        if not cfg.database_url:
            parser.error("gateway needs --database-url (or EXCHANGE_DATABASE_URL): it never starts a database")
        try:
            run_on_loop(serve_gateway(cfg), cfg.event_loop)
        except KeyboardInterrupt:
            sys.exit(130)
        return
    if args.command == "migrate":
        applied = run_on_loop(run_migrate(cfg), cfg.event_loop)
        print(f"exchange: migrations applied: {', '.join(applied) or 'none (up to date)'}")
        return
    try:
        run_on_loop(serve(cfg, demo=cfg.demo), cfg.event_loop)
    except KeyboardInterrupt:
        sys.exit(130)
    except StartupError as exc:
        print(f"exchange: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)


__all__ = ["main", "serve", "dsn_key"]
