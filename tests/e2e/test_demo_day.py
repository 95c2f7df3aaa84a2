"""`exchange demo` end to end: a real engine, gateway and bot process play a day; the summary's
figures agree with each other, the same seed gives the same figures, and nothing is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

DEMO_TIMEOUT_S = 120  # a run takes about 5 s here


def run_demo(data_dir: Path, seed: int) -> tuple[dict[str, Any], str]:
    exe = Path(sys.executable).with_name("exchange")
    done = subprocess.run([str(exe), "demo", "--data-dir", str(data_dir), "--seed", str(seed)],
                          capture_output=True, timeout=DEMO_TIMEOUT_S, stdin=subprocess.DEVNULL)
    out = done.stdout.decode()
    assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{done.stderr.decode()}"
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0]), out


def leftovers(root: Path) -> list[str]:
    """Processes whose command line or working directory points into `root`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone, or not ours to read
        if str(root) in cmdline or cwd.startswith(str(root)):
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


def check_figures(s: dict[str, Any]) -> None:
    D = Decimal
    assert all(s["checks"].values()), s["checks"]
    # the airdrop: one closed day of the first year, every HB of it minted
    assert D(s["emission"]) == D(s["minted"]) == D("498")
    # P: the genesis price before the fixing; after it the reserve backs what circulates
    assert D(s["price_before"]) == D("1.00")
    assert D(s["price_after"]) == (D(s["reserve_before"]) / D(s["minted"])).quantize(D("0.01"), ROUND_DOWN)
    # supply
    assert D(s["circulating"]) == D(s["minted"]) - D(s["burned"]) - D(s["desk_held"])
    assert D(s["burned"]) == D(s["merchant_burned"]) + D(s["desk_retired"]) > 0
    assert D(s["desk_retired"]) == D(s["desk_sold"]) > 0
    assert D(s["desk_held"]) == D(s["bid_bought"]) > 0
    # the reserve paid what the desk bought, within the budget
    paid = D(s["desk_sells_paid"]) + D(s["bid_paid"])
    assert D(s["reserve_before"]) - D(s["reserve_after"]) == D(s["desk_spent"]) == paid > 0
    assert D(s["desk_spent"]) <= D(s["desk_budget"])
    # the bot bid at the genesis price, then moved to the new P
    assert D(s["bot_bid_before"][0]) == D(s["price_before"])
    assert D(s["bot_bid"][0]) == D(s["price_after"]) and D(s["bot_bid"][1]) > 0
    # activity
    assert s["trades"] > s["trades_with_bot"] > 0 and D(s["volume_hb"]) > 0
    assert s["consumptions_online"] > 0 and s["consumptions_store"] > 0 and s["payments"] > 0
    # the gateway published it: a fixing, supply moves and every trade (the `trades` updates,
    # one per feed window, carry lists of trades)
    assert s["gateway_updates"]["price"] == 1
    assert s["gateway_updates"]["supply"] > 0
    assert s["gateway_trades"] == s["trades"]
    assert 0 < s["gateway_updates"]["trades"] <= s["trades"]
    assert all(s["gateway_messages"][ch] > 0 for ch in ("price", "supply", "trades"))


def repeatable(s: dict[str, Any]) -> dict[str, Any]:
    """The summary without what differs between two runs of one seed: the run's directory and
    processes, and how many `trades` messages carried the trades (feed windows follow the clock)."""
    out = {k: v for k, v in s.items() if k not in ("data_dir", "pids")}
    for counts in ("gateway_messages", "gateway_updates"):
        out[counts] = {ch: n for ch, n in s[counts].items() if ch != "trades"}
    return out


def test_the_demo_day_adds_up_repeats_with_its_seed_and_leaves_nothing_running(embedded_pg_root: Path) -> None:
    root = embedded_pg_root / "demo-day"
    first, out = run_demo(root, seed=7)
    check_figures(first)
    assert "checks        8 of 8 hold" in out and "stopped: engine, gateway and bot ended" in out, out
    assert not Path(first["data_dir"]).exists()  # the run's directory is removed without --keep
    for pid in first["pids"].values():
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} still exists"
    assert leftovers(root) == []

    second, _ = run_demo(root, seed=7)  # a fresh directory and genesis: the same day again
    assert repeatable(second) == repeatable(first)
    assert second["data_dir"] != first["data_dir"]
    assert leftovers(root) == []
