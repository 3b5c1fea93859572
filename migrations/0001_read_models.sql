-- keyd read models. Every table here is a projection of the KEYD_EVENTS
-- stream and can be dropped and rebuilt from it (keyd projections rebuild).
-- No table holds a secret: only keyed digests and masks.

-- The last stream sequence each projection applied, written in the same
-- transaction as the rows it changed.
CREATE TABLE projection_checkpoints (
    name       text PRIMARY KEY,
    last_seq   bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The key listing (one row per key; status 'active' or 'revoked', expiry is
-- derived from expires_at at read time). Newest first is key_id DESC: key ids
-- are ULIDs, ordered by creation time.
CREATE TABLE keys (
    key_id       text PRIMARY KEY,
    org_id       text NOT NULL,
    name         text NOT NULL,
    owner_type   text NOT NULL,
    owner_id     text NOT NULL,
    mask         text NOT NULL,
    permissions  text[] NOT NULL,
    status       text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,          -- written by verifiers, not by the projector
    metadata     jsonb NOT NULL,
    version      bigint NOT NULL,
    last_seq     bigint NOT NULL       -- stream sequence of the event that produced this row
);
CREATE INDEX keys_org_key_id ON keys (org_id, key_id DESC);

-- The audit log: every key event, per organization, by stream sequence.
CREATE TABLE audit_events (
    seq         bigint PRIMARY KEY,    -- stream sequence
    org_id      text NOT NULL,
    key_id      text NOT NULL,
    event_id    text NOT NULL,
    type        text NOT NULL,
    occurred_at timestamptz NOT NULL,
    envelope    jsonb NOT NULL         -- the event envelope as stored in the stream
);
CREATE INDEX audit_events_org_seq ON audit_events (org_id, seq);

-- The permission catalog.
CREATE TABLE permissions (
    slug        text PRIMARY KEY,
    description text NOT NULL,
    status      text NOT NULL,
    last_seq    bigint NOT NULL
);

-- The verification snapshot verifiers boot from: keyed digest to what a
-- verification answers.
CREATE TABLE verification_keys (
    digest      bytea PRIMARY KEY,     -- HMAC-SHA-256 of the secret, 32 bytes
    key_id      text NOT NULL UNIQUE,
    org_id      text NOT NULL,
    owner_type  text NOT NULL,
    owner_id    text NOT NULL,
    name        text NOT NULL,
    permissions text[] NOT NULL,
    expires_at  timestamptz,
    status      text NOT NULL,
    metadata    jsonb NOT NULL,
    last_seq    bigint NOT NULL
);
