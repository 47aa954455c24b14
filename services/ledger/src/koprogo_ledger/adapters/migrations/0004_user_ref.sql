-- Every request's user, whatever the shape of the token's `sub`.
--
-- The seed's `user_id` is a UUID, so a request whose user id was not one (the dev token's
-- 'dev-user', `koprogo token --user alice`, an e-mail from an identity provider) was stored
-- without a user: the GDPR export found nothing and the erasure erased nothing.
--
-- Text ids, not a mapping: `user_ref` holds the id as the token's `sub` spells it, for every
-- new row, and `user_id` keeps its UUID when it is one (readers of the seed's schema). A
-- mapping to UUIDs (a name-based uuid5 in `user_id`) was the alternative; it was not taken
-- because a mapped id cannot be told from a real one by readers of the seed's column, two
-- deployments with different namespaces would disagree, and the id the user knows is what
-- an export shows and an erasure is asked for.
--
-- A user's rows are `user_ref = sub OR user_id = uuid(sub)`: rows written before this
-- migration with a UUID user get their user_ref below, and the `user_id` arm matches a UUID
-- whatever its spelling (case, braces), as the gateway's access rule does. Rows written
-- before it with a user id of another shape recorded no user at all: nothing can name them.
--
-- A hash index: equality is the only lookup, and a hash index has no key-size limit (a
-- btree refuses keys over about 2.7 kB, and nothing bounds the length of a `sub`).

ALTER TABLE mcp_requests ADD COLUMN IF NOT EXISTS user_ref TEXT;
UPDATE mcp_requests SET user_ref = user_id::text WHERE user_ref IS NULL AND user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_mcp_requests_user_ref ON mcp_requests USING hash (user_ref);
