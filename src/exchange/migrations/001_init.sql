-- The journal is the source of truth: one row per command, in sequence order,
-- with the command and the events it caused (msgpack). Everything else here is a
-- projection written in the same transaction, or a snapshot for fast recovery.
CREATE TABLE journal (
    seq      bigint PRIMARY KEY,
    ts_ns    bigint NOT NULL,
    type     text   NOT NULL,   -- the command's tag, e.g. place_order
    command  bytea  NOT NULL,
    events   bytea  NOT NULL
);

CREATE TABLE snapshots (
    seq         bigint PRIMARY KEY,
    state_hash  text   NOT NULL,
    state       bytea  NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    account_id   bigint PRIMARY KEY,
    role         text   NOT NULL CHECK (role IN ('user', 'merchant', 'desk', 'admin', 'system')),
    opened_seq   bigint NOT NULL
);

-- One row per account. Amounts in the market's units: HB in lots (0.01 HB), CNY in
-- cash units (0.0001 CNY). Only system accounts (ids below 100) may go negative:
-- they stand for the outside world.
CREATE TABLE balances (
    account_id     bigint PRIMARY KEY,
    hb_available   bigint NOT NULL,
    hb_held        bigint NOT NULL,
    cny_available  bigint NOT NULL,
    cny_held       bigint NOT NULL,
    updated_seq    bigint NOT NULL,
    CONSTRAINT no_negative_balance CHECK (
        account_id < 100 OR (hb_available >= 0 AND hb_held >= 0 AND cny_available >= 0 AND cny_held >= 0))
);

CREATE TABLE orders (
    order_id        bigint PRIMARY KEY,
    account_id      bigint NOT NULL,
    client_order_id text,
    side            text   NOT NULL,
    order_type      text   NOT NULL,
    price_ticks     bigint NOT NULL,
    qty_lots        bigint NOT NULL,
    remaining_lots  bigint NOT NULL,
    filled_lots     bigint NOT NULL,
    filled_cash     bigint NOT NULL,
    time_in_force   text   NOT NULL,
    post_only       boolean NOT NULL,
    stp             text   NOT NULL,
    status          text   NOT NULL,
    reason          text,
    created_seq     bigint NOT NULL,
    updated_seq     bigint NOT NULL,
    created_ts_ns   bigint NOT NULL,
    updated_ts_ns   bigint NOT NULL,
    CONSTRAINT unique_client_order_id UNIQUE (account_id, client_order_id),
    CONSTRAINT order_quantities CHECK (remaining_lots >= 0 AND filled_lots >= 0 AND filled_lots <= qty_lots)
);
CREATE INDEX orders_open_by_account ON orders (account_id, order_id)
    WHERE status IN ('new', 'partially_filled');
CREATE INDEX orders_by_account ON orders (account_id, order_id DESC);

CREATE TABLE trades (
    trade_id          bigint PRIMARY KEY,
    seq               bigint NOT NULL,
    ts_ns             bigint NOT NULL,
    price_ticks       bigint NOT NULL,
    qty_lots          bigint NOT NULL,
    taker_side        text   NOT NULL,
    taker_order_id    bigint NOT NULL,
    taker_account_id  bigint NOT NULL,
    maker_order_id    bigint NOT NULL,
    maker_account_id  bigint NOT NULL
);
CREATE INDEX trades_by_taker ON trades (taker_account_id, trade_id DESC);
CREATE INDEX trades_by_maker ON trades (maker_account_id, trade_id DESC);

-- Double-entry postings of wallet movements (deposits, withdrawals, transfers, mints,
-- burns). A trade is its own double-entry record (HB seller -> buyer, CNY buyer ->
-- seller) in `trades`; statements join both. Holds are not postings.
CREATE TABLE postings (
    seq                bigint NOT NULL,
    idx                integer NOT NULL,
    ts_ns              bigint NOT NULL,
    debit_account_id   bigint NOT NULL,
    credit_account_id  bigint NOT NULL,
    asset              text   NOT NULL,
    amount             bigint NOT NULL CHECK (amount > 0),
    kind               text   NOT NULL,
    PRIMARY KEY (seq, idx)
);
CREATE INDEX postings_by_debit ON postings (debit_account_id, seq DESC);
CREATE INDEX postings_by_credit ON postings (credit_account_id, seq DESC);

-- Stored responses of non-order commands, keyed per account (kept at least 24 h).
CREATE TABLE idempotency (
    account_id   bigint NOT NULL,
    key          text   NOT NULL,
    fingerprint  bytea  NOT NULL,
    seq          bigint NOT NULL,
    status       integer NOT NULL,
    response     bytea  NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
