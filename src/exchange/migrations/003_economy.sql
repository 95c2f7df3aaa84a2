-- Token economics projections (the journal stays the truth). 嗨值 in cash units
-- (0.0001 CNY of future cash-out value), HB in lots, prices in ticks.

-- Every change of an account's 嗨值: grants, consumptions, and each airdrop's depletion.
CREATE TABLE points_history (
    account_id  bigint NOT NULL,
    seq         bigint NOT NULL,
    idx         integer NOT NULL,
    ts_ns       bigint NOT NULL,
    change      bigint NOT NULL,
    balance     bigint NOT NULL CHECK (balance >= 0),
    reason      text   NOT NULL,
    PRIMARY KEY (account_id, seq, idx)
);

-- One row per fixing: the price of `day` and every input it was computed from.
CREATE TABLE fixings (
    day                  date   PRIMARY KEY,
    price_ticks          bigint NOT NULL CHECK (price_ticks > 0),
    policy               text   NOT NULL,
    reserve_cash         bigint NOT NULL,
    minted_lots          bigint NOT NULL,
    burned_lots          bigint NOT NULL,
    desk_lots            bigint NOT NULL,
    circulating_lots     bigint NOT NULL,
    previous_price_ticks bigint NOT NULL,
    vwap_ticks           bigint NOT NULL,
    band_bps             integer NOT NULL,
    clamped              boolean NOT NULL,
    seq                  bigint NOT NULL,
    ts_ns                bigint NOT NULL
);

-- The daily cycle of each closed day: begun, then completed once its airdrop is credited.
CREATE TABLE cycles (
    day               date   PRIMARY KEY,
    emission_lots     bigint NOT NULL,
    points_total      bigint NOT NULL,
    holders           bigint NOT NULL,
    started_seq       bigint NOT NULL,
    started_ts_ns     bigint NOT NULL,
    minted_lots       bigint,
    credited_accounts bigint,
    completed_seq     bigint,
    completed_ts_ns   bigint
);

CREATE TABLE consumptions (
    seq             bigint PRIMARY KEY,
    ts_ns           bigint NOT NULL,
    consumer_id     bigint NOT NULL,
    merchant_id     bigint NOT NULL,
    amount          bigint NOT NULL,
    rebate_ppm      integer NOT NULL,
    channel         text   NOT NULL CHECK (channel IN ('online', 'store')),
    rebate          bigint NOT NULL,
    consumer_points bigint NOT NULL,
    merchant_points bigint NOT NULL,
    burn_lots       bigint NOT NULL,
    price_ticks     bigint NOT NULL
);
CREATE INDEX consumptions_by_consumer ON consumptions (consumer_id, seq);
CREATE INDEX consumptions_by_merchant ON consumptions (merchant_id, seq);
