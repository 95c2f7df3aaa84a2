"""Crash soak: the crash test's kill/restart/check loop for many points on its own embedded server.

    python -m tests.crash_soak [--points 1000] [--seed S] [--points-per-db 50] [--keep]

Each point SIGKILLs the sequencer server (tests.integration.crash_server) before COMMIT, after
COMMIT (at a random batch) or from outside at a random moment, restarts it on the same database
and checks every durability property (see tests/integration/test_crash.py). A fresh database is
used every ``--points-per-db`` points so that the full replay after each point stays cheap.

Prints the seed first (rerun a failure with ``--seed``), one line per point, and a summary; exits
non-zero on the first failure, keeping the cluster directory for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from exchange.embedded_pg import EmbeddedPostgres, temporary_database

from .integration.test_crash import plan, run_crash_points


def cluster_root() -> Path:
    """A fresh directory for the cluster. As root the server runs as another user, which must be
    able to traverse every parent: use a search-only (0711) directory in the system temp dir,
    as the test suite's ``embedded_pg_root`` fixture does."""
    root = Path(tempfile.mkdtemp(prefix="exchange-crash-soak-"))
    if os.geteuid() == 0:
        root.chmod(0o711)
    return root


async def soak(points: int, seed: int, points_per_db: int, root: Path) -> None:
    rng = random.Random(seed)
    pg = EmbeddedPostgres(root / "cluster")
    admin_dsn = await asyncio.to_thread(pg.start)
    log_path = root / "crash_server.log"
    t0 = time.monotonic()
    done = 0
    kinds: Counter[str] = Counter()
    acked = unacked = unacked_applied = 0
    try:
        for db_index in range((points + points_per_db - 1) // points_per_db):
            n = min(points_per_db, points - done)
            name = f"soak_{db_index}"
            async with temporary_database(admin_dsn, prefix=f"{name}_") as dsn:

                def say(line: str, name: str = name) -> None:
                    print(f"[{time.monotonic() - t0:7.1f}s] {name} {line}", flush=True)

                totals = await run_crash_points(dsn, plan(rng, n), rng, log_path, say=say,
                                                number_from=done, total=points)
            done += totals.points
            kinds.update(totals.by_kind)
            acked += totals.acked
            unacked += totals.unacked
            unacked_applied += totals.unacked_orders_applied
    finally:
        await asyncio.to_thread(pg.stop, "immediate")
        elapsed = time.monotonic() - t0
        print(f"\n{done}/{points} crash points passed in {elapsed:.1f}s (seed {seed}): "
              f"{dict(kinds)}; commands acknowledged {acked}, unanswered at a crash {unacked} "
              f"(of which orders found applied after restart: {unacked_applied})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1000, help="crash points to run")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--points-per-db", type=int, default=50, help="start a fresh database this often")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory even on success")
    args = parser.parse_args(argv)
    if not __debug__:
        parser.error("the checks are assert statements: run without -O")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"crash soak: {args.points} points, seed {seed} (rerun with --seed {seed})", flush=True)
    root = cluster_root()
    ok = False
    try:
        asyncio.run(soak(args.points, seed, max(1, args.points_per_db), root))
        ok = True
    except AssertionError as exc:
        print(f"FAILED (seed {seed}): {exc}", file=sys.stderr, flush=True)
    finally:
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"cluster and server log kept in {root}", file=sys.stderr, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
