"""Running `exchange serve` or `exchange gateway` as a child process (the demo day, tests, benches).

`spawn` starts one; `running` starts one on a free port, waits until it is ready, yields its
URL and stops it (SIGTERM, then SIGKILL) however the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO

from .client import free_port, wait_ready

STOP_TIMEOUT_S = 60.0  # a stopping service drains its in-flight commands first


def exchange_command() -> list[str]:
    """How to run `exchange ...`: the installed script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("exchange")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from exchange.cli import main; main()"]


def spawn(subcommand: str, env: Mapping[str, str], *, port: int, output: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """`exchange <subcommand>` on `port`, with this process's environment plus `env`; its output
    goes to `output` (a file open for writing) or nowhere."""
    return subprocess.Popen(
        [*exchange_command(), subcommand], env={**os.environ, **env, "EXCHANGE_PORT": str(port)},
        stdin=subprocess.DEVNULL, stdout=output if output is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL)


async def stop(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


@contextlib.asynccontextmanager
async def running(subcommand: str, env: Mapping[str, str], *, startup_timeout_s: float = 20.0,
                  output: IO[bytes] | None = None) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield (url, process) of a ready `exchange <subcommand>` on a free loopback port."""
    port = free_port()
    proc = spawn(subcommand, env, port=port, output=output)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, timeout_s=startup_timeout_s, alive=lambda: proc.poll() is None)
        yield url, proc
    finally:
        await stop(proc)
