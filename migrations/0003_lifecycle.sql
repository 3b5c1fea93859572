-- Lifecycle controls (issue 13): suspension, expiry notices, organization
-- policies, key history. Like every read model, all of it is a projection
-- of KEYD_EVENTS and can be rebuilt from it.

-- The expires_at for which the key.expiring and key.expired notices were
-- appended (the notice scheduler's candidates are keys where these differ
-- from expires_at).
ALTER TABLE keys ADD COLUMN expiring_noticed timestamptz;
ALTER TABLE keys ADD COLUMN expired_noticed timestamptz;
CREATE INDEX keys_notice_due ON keys (expires_at) WHERE status <> 'revoked' AND expires_at IS NOT NULL;

-- A key's history: its audit events in stream order.
CREATE INDEX audit_events_org_key_seq ON audit_events (org_id, key_id, seq);

-- Organization policies (org.policy_changed, org.keys_counted), the latest
-- per organization, with the organization aggregate's version for the
-- readers' invariants on apply (each event's version is the previous + 1,
-- as 0002_versions.sql keeps for keys and the catalog).
CREATE TABLE policies (
    org_id                text PRIMARY KEY,
    policy                jsonb NOT NULL,   -- the contract's Policy
    expiry_notice_seconds bigint NOT NULL,
    allowed_cidrs         text[],           -- NULL: any address
    last_seq              bigint NOT NULL,
    version               bigint NOT NULL
);
