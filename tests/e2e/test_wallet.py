"""Tips to merchants and merchants' burns through the API."""

from __future__ import annotations

import aiohttp

from exchange.app import current_engine
from tests.conftest import Service
from tests.e2e.helpers import call, funded


async def test_a_tip_moves_hb_to_a_merchant_once_per_key(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        user = await funded(service, http, hb="5")
        merchant = await funded(service, http, "merchant")
        other_user = await funded(service, http)
        body = {"to_account_id": merchant.account_id, "qty": "1.50"}
        first = await call(http, "POST", "/v1/transfers", user.key, body, headers={"Idempotency-Key": "tip-1"})
        again = await call(http, "POST", "/v1/transfers", user.key, body, headers={"Idempotency-Key": "tip-1"})
        assert first.status == again.status == 200 and first.body == again.body
        assert again.headers.get("Idempotent-Replayed") == "true"
        bal = {b["asset"]: b["available"] for b in (await call(http, "GET", "/v1/balances", merchant.key)).body}
        assert bal["HB"] == "1.50"  # one effect
        ledger = (await call(http, "GET", "/v1/ledger", user.key)).body["items"]
        assert [(e["kind"], e["asset"], e["amount"], e["counterparty_account_id"]) for e in ledger][0] == (
            "transfer", "HB", "-1.50", merchant.account_id)
        not_merchant = await call(http, "POST", "/v1/transfers", user.key,
                                  {"to_account_id": other_user.account_id, "qty": "1.00"})
        assert (not_merchant.status, not_merchant.body["error"]["code"]) == (422, "recipient_not_merchant")
        too_much = await call(http, "POST", "/v1/transfers", user.key, {"to_account_id": merchant.account_id,
                                                                         "qty": "9.00"})
        assert (too_much.status, too_much.body["error"]["code"]) == (422, "insufficient_funds")
    current_engine(service.app).check_invariants()


async def test_a_merchant_burns_hb_and_only_a_merchant_may(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        merchant = await funded(service, http, "merchant", hb="10")
        user = await funded(service, http, hb="10")
        r = await call(http, "POST", "/v1/burns", merchant.key, {"qty": "2.25"})
        assert r.status == 200 and r.body["qty"] == "2.25", r
        engine = current_engine(service.app)
        assert engine.ledger.burned_lots == 225
        bal = {b["asset"]: b["total"] for b in (await call(http, "GET", "/v1/balances", merchant.key)).body}
        assert bal["HB"] == "7.75"
        denied = await call(http, "POST", "/v1/burns", user.key, {"qty": "1.00"})
        assert denied.status == 403
        over = await call(http, "POST", "/v1/burns", merchant.key, {"qty": "100.00"})
        assert (over.status, over.body["error"]["code"]) == (422, "insufficient_funds")
    engine.check_invariants()
