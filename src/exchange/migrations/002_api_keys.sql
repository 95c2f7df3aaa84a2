-- API keys: only a hash of the secret is stored; the key itself is shown once at creation.
ALTER TABLE accounts ADD COLUMN name text NOT NULL DEFAULT '';

CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts (account_id),
    secret_hash  bytea  NOT NULL,
    scopes       text[] NOT NULL CHECK (scopes <@ ARRAY['read', 'trade']::text[] AND cardinality(scopes) > 0),
    label        text   NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_by_account ON api_keys (account_id);

-- Market data reads by time (ticker, candles): a BRIN index suits the append-only, time-ordered trades.
CREATE INDEX trades_by_time ON trades USING brin (ts_ns);
