"""Double-entry custodian ledger of HB and CNY.

Each account has, per asset, an *available* and a *held* amount, kept together
in one small list `[hb_available, hb_held, cny_available, cny_held]` so the hot
path does one dict lookup per account. Every movement between accounts is a
posting against another account; the outside world is represented by system
accounts (cash in/out, HB issuance, HB burned) whose balances may be negative,
so that for each asset the sum over all accounts is zero at all times.

Holds move an amount from available to held inside one account; they are not
postings. The engine calls these methods (or, on its hot path, edits the lists
directly) and `balance_deltas` recomputes every change from the events alone,
which is what the store persists and what tests cross-check.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from . import messages as m
from .units import Asset, Role

HB_AV: Final = 0
HB_HELD: Final = 1
CNY_AV: Final = 2
CNY_HELD: Final = 3

# System accounts: the outside world. Their balances are the negatives of what
# entered through them, so every asset sums to zero.
CASH_GATEWAY: Final = 1  # CNY deposited (negative) and withdrawn
HB_ISSUANCE: Final = 2  # HB minted (negative)
HB_BURNED: Final = 3  # HB burned (positive)
SYSTEM_ACCOUNTS = (CASH_GATEWAY, HB_ISSUANCE, HB_BURNED)
FIRST_USER_ACCOUNT: Final = 100

HB_CAP_LOTS = 39_000_000  # 390,000 HB at 0.01 HB a lot


class Ledger:
    __slots__ = ("balances", "roles", "minted_lots", "burned_lots", "next_account_id", "hb_cap_lots")

    def __init__(self, hb_cap_lots: int = HB_CAP_LOTS) -> None:
        self.balances: dict[int, list[int]] = {}
        self.roles: dict[int, Role] = {}
        self.minted_lots = 0
        self.burned_lots = 0
        self.next_account_id = FIRST_USER_ACCOUNT
        self.hb_cap_lots = hb_cap_lots
        for acct in SYSTEM_ACCOUNTS:
            self.balances[acct] = [0, 0, 0, 0]
            self.roles[acct] = Role.SYSTEM

    # ------------------------------------------------------------ accounts

    def open(self, account_id: int, role: Role) -> None:
        assert account_id not in self.balances
        self.balances[account_id] = [0, 0, 0, 0]
        self.roles[account_id] = role
        if account_id >= self.next_account_id:
            self.next_account_id = account_id + 1

    def exists(self, account_id: int) -> bool:
        return account_id in self.balances

    # ------------------------------------------------------------ reads

    def available(self, account_id: int, asset: Asset) -> int:
        return self.balances[account_id][HB_AV if asset is Asset.HB else CNY_AV]

    def held(self, account_id: int, asset: Asset) -> int:
        return self.balances[account_id][HB_HELD if asset is Asset.HB else CNY_HELD]

    def total(self, asset: Asset) -> int:
        i, j = (HB_AV, HB_HELD) if asset is Asset.HB else (CNY_AV, CNY_HELD)
        return sum(b[i] + b[j] for b in self.balances.values())

    # ------------------------------------------------------------ postings

    def post(self, debit: int, credit: int, index: int, amount: int) -> None:
        """Move `amount` of one asset's available balance from `debit` to `credit`."""
        self.balances[debit][index] -= amount
        self.balances[credit][index] += amount

    def deposit_cash(self, account_id: int, amount: int) -> None:
        self.post(CASH_GATEWAY, account_id, CNY_AV, amount)

    def withdraw_cash(self, account_id: int, amount: int) -> None:
        self.post(account_id, CASH_GATEWAY, CNY_AV, amount)

    def mint(self, account_id: int, qty_lots: int) -> None:
        assert self.minted_lots + qty_lots <= self.hb_cap_lots, "mint beyond the cap"
        self.post(HB_ISSUANCE, account_id, HB_AV, qty_lots)
        self.minted_lots += qty_lots

    def burn(self, account_id: int, qty_lots: int) -> None:
        self.post(account_id, HB_BURNED, HB_AV, qty_lots)
        self.burned_lots += qty_lots

    # ------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        for asset in Asset:
            assert self.total(asset) == 0, f"{asset.value} does not sum to zero"
        for acct, b in self.balances.items():
            if self.roles[acct] is not Role.SYSTEM:
                assert min(b) >= 0, f"negative balance in account {acct}: {b}"
        assert self.balances[HB_ISSUANCE][HB_AV] == -self.minted_lots
        assert self.balances[HB_BURNED][HB_AV] == self.burned_lots
        assert self.minted_lots <= self.hb_cap_lots, "minted beyond the cap"


Delta = tuple[int, int, int]  # (account_id, balance index, change)


def balance_deltas(event: m.Event, cash_per_tick_lot: int) -> list[Delta]:
    """Every balance change an event stands for, derived from the event alone.

    Replaying these over empty balances rebuilds the ledger exactly; the store
    aggregates them per account, and tests compare them with the live ledger.
    """
    match event:
        case m.OrderAccepted(side=side, hold=hold, account_id=acct) if hold:
            if side is m.Side.BUY:
                return [(acct, CNY_AV, -hold), (acct, CNY_HELD, hold)]
            return [(acct, HB_AV, -hold), (acct, HB_HELD, hold)]
        case m.TradeExecuted():
            e = event
            buy = e.taker_side is m.Side.BUY
            buyer = e.taker_account_id if buy else e.maker_account_id
            seller = e.maker_account_id if buy else e.taker_account_id
            q, cost = e.qty_lots, e.price_ticks * e.qty_lots * cash_per_tick_lot
            out: list[Delta] = [(seller, HB_HELD, -q), (buyer, HB_AV, q), (seller, CNY_AV, cost)]
            if e.buyer_hold_ticks:
                held = e.buyer_hold_ticks * q * cash_per_tick_lot
                out += [(buyer, CNY_HELD, -held), (buyer, CNY_AV, held - cost)]
            else:
                out.append((buyer, CNY_AV, -cost))
            return out
        case m.OrderExpired() | m.OrderCanceled():
            return _release(event.account_id, event.side, event.price_ticks, event.remaining_lots, cash_per_tick_lot)
        case m.OrderReduced():
            freed = event.old_remaining_lots - event.remaining_lots
            return _release(event.account_id, event.side, event.price_ticks, freed, cash_per_tick_lot)
        case m.CashDeposited(account_id=acct, amount=amount):
            return [(CASH_GATEWAY, CNY_AV, -amount), (acct, CNY_AV, amount)]
        case m.CashWithdrawn(account_id=acct, amount=amount):
            return [(acct, CNY_AV, -amount), (CASH_GATEWAY, CNY_AV, amount)]
        case m.HBTransferred(account_id=acct, to_account_id=to, qty_lots=q):
            return [(acct, HB_AV, -q), (to, HB_AV, q)]
        case m.HBMinted(account_id=acct, qty_lots=q):
            return [(HB_ISSUANCE, HB_AV, -q), (acct, HB_AV, q)]
        case m.HBBurned(account_id=acct, qty_lots=q):
            return [(acct, HB_AV, -q), (HB_BURNED, HB_AV, q)]
        case m.DeskBought(account_id=acct, desk_account_id=desk, qty_lots=q, cash=cash):
            return [(acct, HB_AV, -q), (HB_BURNED, HB_AV, q), (desk, CNY_AV, -cash), (acct, CNY_AV, cash)]
        case m.PaymentMade(account_id=acct, merchant_id=to, qty_lots=q):
            return [(acct, HB_AV, -q), (to, HB_AV, q)]
        case m.AirdropCredited(accounts=accounts, lots=lots):
            out = [(HB_ISSUANCE, HB_AV, -sum(lots))]
            out += [(acct, HB_AV, q) for acct, q in zip(accounts, lots, strict=True)]
            return out
    return []


def _release(acct: int, side: m.Side, price: int, lots: int, cpl: int) -> list[Delta]:
    if side is m.Side.BUY:
        if not price:  # a market buy holds nothing
            return []
        amount = price * lots * cpl
        return [(acct, CNY_HELD, -amount), (acct, CNY_AV, amount)]
    return [(acct, HB_HELD, -lots), (acct, HB_AV, lots)]


def apply_deltas(balances: dict[int, list[int]], deltas: Iterable[Delta]) -> None:
    for acct, index, change in deltas:
        row = balances.get(acct)
        if row is None:
            row = balances[acct] = [0, 0, 0, 0]
        row[index] += change


Posting = tuple[int, int, str, int, str]  # (debit account, credit account, asset, amount, kind)


def postings_of(event: m.Event, cash_per_tick_lot: int) -> list[Posting]:
    """The double-entry postings an event records (holds are not postings)."""
    match event:
        case m.TradeExecuted():
            buy = event.taker_side is m.Side.BUY
            buyer = event.taker_account_id if buy else event.maker_account_id
            seller = event.maker_account_id if buy else event.taker_account_id
            cost = event.price_ticks * event.qty_lots * cash_per_tick_lot
            return [(seller, buyer, "HB", event.qty_lots, "trade"), (buyer, seller, "CNY", cost, "trade")]
        case m.CashDeposited(account_id=acct, amount=amount):
            return [(CASH_GATEWAY, acct, "CNY", amount, "deposit")]
        case m.CashWithdrawn(account_id=acct, amount=amount):
            return [(acct, CASH_GATEWAY, "CNY", amount, "withdrawal")]
        case m.HBTransferred(account_id=acct, to_account_id=to, qty_lots=q):
            return [(acct, to, "HB", q, "transfer")]
        case m.HBMinted(account_id=acct, qty_lots=q):
            return [(HB_ISSUANCE, acct, "HB", q, "mint")]
        case m.HBBurned(account_id=acct, qty_lots=q, reason=reason):
            return [(acct, HB_BURNED, "HB", q, "consumption_burn" if reason == "consumption" else "burn")]
        case m.DeskBought(account_id=acct, desk_account_id=desk, qty_lots=q, cash=cash):
            return [(acct, HB_BURNED, "HB", q, "desk_retire"), (desk, acct, "CNY", cash, "desk_buy")]
        case m.PaymentMade(account_id=acct, merchant_id=to, qty_lots=q):
            return [(acct, to, "HB", q, "payment")]
        case m.AirdropCredited(accounts=accounts, lots=lots):
            return [(HB_ISSUANCE, acct, "HB", q, "airdrop") for acct, q in zip(accounts, lots, strict=True)]
    return []
