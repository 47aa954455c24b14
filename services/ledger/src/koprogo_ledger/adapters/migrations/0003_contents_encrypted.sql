-- Contents encrypted at rest, and purged after the retention window.
--
-- The seed's `mcp_requests.messages` and `mcp_responses.content` stay (NOT NULL, for
-- readers of the seed's schema) but hold a placeholder ('[]' and ''): the contents are in
-- `*_ciphertext` (AES-256-GCM, see koprogo_shared.content_crypto), sealed under `key_id`.
-- A row with no key_id and no contents_purged_at still holds plaintext from before this
-- migration: the ledger encrypts those at start. A purged row keeps every figure the
-- stats read and loses its contents (ciphertext and key_id NULL, contents_purged_at set).

ALTER TABLE mcp_requests
    ADD COLUMN IF NOT EXISTS messages_ciphertext BYTEA,
    ADD COLUMN IF NOT EXISTS key_id              VARCHAR(64),
    ADD COLUMN IF NOT EXISTS contents_purged_at  TIMESTAMPTZ;
ALTER TABLE mcp_requests DROP CONSTRAINT IF EXISTS mcp_requests_ciphertext_key_check;
ALTER TABLE mcp_requests ADD CONSTRAINT mcp_requests_ciphertext_key_check
    CHECK ((messages_ciphertext IS NULL) = (key_id IS NULL));

ALTER TABLE mcp_responses
    ADD COLUMN IF NOT EXISTS content_ciphertext BYTEA,
    ADD COLUMN IF NOT EXISTS key_id             VARCHAR(64),
    ADD COLUMN IF NOT EXISTS contents_purged_at TIMESTAMPTZ;
ALTER TABLE mcp_responses DROP CONSTRAINT IF EXISTS mcp_responses_ciphertext_key_check;
ALTER TABLE mcp_responses ADD CONSTRAINT mcp_responses_ciphertext_key_check
    CHECK ((content_ciphertext IS NULL) = (key_id IS NULL));

-- Rows still in plaintext (the start-up backfill's work; empty once it has run).
CREATE INDEX IF NOT EXISTS idx_mcp_requests_plaintext ON mcp_requests (id)
    WHERE key_id IS NULL AND contents_purged_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_mcp_responses_plaintext ON mcp_responses (id)
    WHERE key_id IS NULL AND contents_purged_at IS NULL;

-- Rows whose contents are still there, by age: the retention purge walks these only,
-- not the ever-growing history of rows it already purged.
CREATE INDEX IF NOT EXISTS idx_mcp_requests_contents_by_age ON mcp_requests (created_at)
    WHERE contents_purged_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_mcp_responses_contents_by_age ON mcp_responses (created_at)
    WHERE contents_purged_at IS NULL;

