-- Versions for the readers' invariants on apply (authentic events): the
-- verification snapshot carries each key's version, so that a verifier
-- booted from it refuses a replayed old event (version not previous + 1);
-- the permission catalog carries its version (every row of one catalog has
-- the same: each catalog event rewrites every row). 0: from before versions.
ALTER TABLE verification_keys ADD COLUMN version bigint NOT NULL DEFAULT 0;
UPDATE verification_keys v SET version = k.version FROM keys k WHERE k.key_id = v.key_id;
ALTER TABLE permissions ADD COLUMN version bigint NOT NULL DEFAULT 0;
