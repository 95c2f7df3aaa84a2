"""Demo accounts for a local try-out (`exchange serve --demo`): funded, with keys and ready-to-paste
curl lines. `exchange demo` is another thing: a simulated day of the platform (demo_day.py)."""

from __future__ import annotations

from .core import messages as m
from .core.units import Role
from .routes import Services

DEMO_ACCOUNTS = (("demo-alice", Role.USER), ("demo-bob", Role.USER), ("demo-merchant", Role.MERCHANT))
DEMO_CASH = "100000"  # CNY each
DEMO_HB = "1000"  # HB each, minted from the cap (a local try-out only: `exchange serve --demo`)


async def create_demo_accounts(services: Services) -> list[tuple[str, int, str]]:
    """(name, account id, key) for each demo account that did not exist yet."""
    out = []
    market = services.market
    for name, role in DEMO_ACCOUNTS:
        exists = await services.pool.fetchval("SELECT 1 FROM accounts WHERE name = $1", name)
        if exists:
            continue
        events = await services.sequencer.submit(m.OpenAccount(role=role, name=name))
        opened = events[0]
        assert isinstance(opened, m.AccountOpened)
        acct = opened.account_id
        await services.sequencer.submit(m.DepositCash(account_id=acct, amount=market.cash.parse(DEMO_CASH)))
        await services.sequencer.submit(m.MintHB(account_id=acct, qty_lots=market.qty.parse(DEMO_HB), reason="demo"))
        _, key = await services.keys.create(acct, ["read", "trade"], "demo")
        out.append((name, acct, key))
    return out


def curl_lines(base_url: str, accounts: list[tuple[str, int, str]]) -> list[str]:
    if not accounts:
        return []
    _, _, alice = accounts[0]
    _, _, bob = accounts[1] if len(accounts) > 1 else accounts[0]
    h = "-H 'Content-Type: application/json'"
    return [
        f"curl -s {base_url}/v1/book",
        f"curl -s {h} -H 'Authorization: Bearer {bob}' -d '{{\"side\":\"sell\",\"price\":\"10.00\",\"qty\":\"5.00\"}}' "
        f"{base_url}/v1/orders",
        f"curl -s {h} -H 'Authorization: Bearer {alice}' -d '{{\"side\":\"buy\",\"price\":\"10.00\",\"qty\":\"2.00\"}}' "
        f"{base_url}/v1/orders",
        f"curl -s -H 'Authorization: Bearer {alice}' {base_url}/v1/balances",
        f"curl -s -H 'Authorization: Bearer {alice}' {base_url}/v1/fills",
        f"curl -s {base_url}/v1/trades",
    ]
