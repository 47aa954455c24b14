-- An answer counts once its caller got it (issue 12): `/mcp/v1/stats` counts the responses
-- with a `delivered_at`, set by the gateway's ChatDelivered (stored before the caller gets the
-- answer). Responses from before this migration were counted as stored: they keep that. A
-- request answered but never delivered by its `deadline` (a gateway killed while its caller
-- waited: the connection dropped, no verdict was published) is settled by the ledger's sweep:
-- its response leaves `mcp_responses` (the stats) and is kept in the request's
-- `error.late_answer`, as for the gateway's own timeout. Rows from before this migration have
-- no deadline and are never swept.
--
-- The partial index holds only the answers not delivered yet: a few rows at any time.

ALTER TABLE mcp_requests ADD COLUMN IF NOT EXISTS deadline TIMESTAMPTZ;
ALTER TABLE mcp_responses ADD COLUMN IF NOT EXISTS delivered_at TIMESTAMPTZ;
UPDATE mcp_responses SET delivered_at = created_at WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_mcp_responses_undelivered ON mcp_responses (request_id) WHERE delivered_at IS NULL;
