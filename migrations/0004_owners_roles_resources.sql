-- Owners, roles and resource-scoped keys (issue 12).

-- What a key was granted beyond permissions, and its effective permissions
-- (own active permissions plus the active permissions of its active roles,
-- sorted), which the projector keeps current when keys, roles or the
-- permission catalog change.
ALTER TABLE keys
    ADD COLUMN roles                 text[] NOT NULL DEFAULT '{}',
    ADD COLUMN resources             text[] NOT NULL DEFAULT '{}',
    ADD COLUMN effective_permissions text[] NOT NULL DEFAULT '{}';

UPDATE keys AS k SET effective_permissions = ARRAY(
    SELECT DISTINCT p FROM unnest(k.permissions) AS p
    WHERE NOT EXISTS (SELECT 1 FROM permissions AS r WHERE r.slug = p AND r.status = 'retired')
    ORDER BY p);

ALTER TABLE verification_keys
    ADD COLUMN roles     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN resources text[] NOT NULL DEFAULT '{}';

-- The role catalog. version is the role catalog's version (every row of one
-- catalog has the same: each role event rewrites every row), for the
-- readers' invariant on apply (eventstore.RoleCatalogInvariant), as
-- permissions.version (0002_versions.sql).
CREATE TABLE roles (
    slug        text PRIMARY KEY,
    description text NOT NULL,
    permissions text[] NOT NULL,
    status      text NOT NULL,
    last_seq    bigint NOT NULL,
    version     bigint NOT NULL DEFAULT 0
);

-- Listing filters, each served by an index (where a filter matches most of
-- an organization's keys, the planner rather walks keys_org_key_id newest
-- first and stops at the page size, which is cheaper still):
--   owner_id:               keys_org_owner (org_id, owner_type, owner_id, key_id DESC),
--                           also revoke_user_keys' lookup;
--   owner_type:             keys_org_owner, or keys_org_key_id when most keys match
--                           (newest first, stopping at the page size);
--   q (name substring):     keys_name_trgm (GIN: org_id, trigrams of lower(name));
--   q (mask's last four):   keys_org_mask4 (org_id, right(mask, 4));
--   permission:             keys_effective_permissions (GIN on effective_permissions);
--   expires_before:         keys_org_expires (org_id, expires_at);
--   a role's holders:       keys_roles (GIN on roles), for recomputing effective permissions.
-- pg_trgm and btree_gin are trusted extensions (PostgreSQL 13 and later):
-- the database owner may create them.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX keys_org_owner ON keys (org_id, owner_type, owner_id, key_id DESC);
CREATE INDEX keys_name_trgm ON keys USING gin (org_id, lower(name) gin_trgm_ops);
CREATE INDEX keys_org_mask4 ON keys (org_id, right(mask, 4));
CREATE INDEX keys_effective_permissions ON keys USING gin (effective_permissions);
CREATE INDEX keys_org_expires ON keys (org_id, expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX keys_roles ON keys USING gin (roles);
