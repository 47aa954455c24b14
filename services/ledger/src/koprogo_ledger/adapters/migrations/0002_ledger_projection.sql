-- What the ledger's projection and the stats need beyond the seed.

-- Requests: the tenant, and how the request ended (the first outcome wins).
ALTER TABLE mcp_requests
    ADD COLUMN IF NOT EXISTS copro_id     TEXT,
    ADD COLUMN IF NOT EXISTS status       VARCHAR(20) NOT NULL DEFAULT 'pending'
        CONSTRAINT mcp_requests_status_check CHECK (status IN ('pending', 'completed', 'failed')),
    ADD COLUMN IF NOT EXISTS error        JSONB,
    ADD COLUMN IF NOT EXISTS completed_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS idx_mcp_requests_copro_id ON mcp_requests (copro_id);
CREATE INDEX IF NOT EXISTS idx_mcp_requests_status ON mcp_requests (status);

-- Responses: the figures the stats sum, as typed columns (execution_info stays the
-- seed's JSONB document). Rows written by the seed are back-filled from that document.
ALTER TABLE mcp_responses
    ADD COLUMN IF NOT EXISTS execution_type  VARCHAR(10),
    ADD COLUMN IF NOT EXISTS node_id         VARCHAR(255),
    ADD COLUMN IF NOT EXISTS latency_ms      DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS co2_grams       DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS co2_saved_grams DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS copro_id        TEXT;

UPDATE mcp_responses AS r SET
    execution_type  = COALESCE(r.execution_info->>'execution_type', 'cloud'),
    node_id         = r.execution_info->>'node_id',
    latency_ms      = COALESCE((r.execution_info->>'latency_ms')::double precision, 0),
    co2_grams       = COALESCE((r.execution_info->>'co2_grams')::double precision, 0),
    co2_saved_grams = COALESCE((r.execution_info->>'co2_saved_grams')::double precision, 0),
    copro_id        = (SELECT q.copro_id FROM mcp_requests AS q WHERE q.id = r.request_id)
WHERE r.execution_type IS NULL;

ALTER TABLE mcp_responses
    ALTER COLUMN execution_type  SET NOT NULL,
    ALTER COLUMN latency_ms      SET NOT NULL,
    ALTER COLUMN co2_grams       SET NOT NULL,
    ALTER COLUMN co2_saved_grams SET NOT NULL;
ALTER TABLE mcp_responses DROP CONSTRAINT IF EXISTS mcp_responses_execution_type_check;
ALTER TABLE mcp_responses ADD CONSTRAINT mcp_responses_execution_type_check
    CHECK (execution_type IN ('edge', 'cloud', 'grid'));

-- One answer per request: the stats count answered requests, and a second completion
-- (a fallback racing a slow node) must not count the request twice. The unique index
-- also serves the seed's lookups by request_id, so the plain one goes.
CREATE UNIQUE INDEX IF NOT EXISTS uq_mcp_responses_request_id ON mcp_responses (request_id);
DROP INDEX IF EXISTS idx_mcp_responses_request_id;
CREATE INDEX IF NOT EXISTS idx_mcp_responses_copro_created ON mcp_responses (copro_id, created_at DESC);

-- Which events the ledger applied: written in the same transaction as the event's
-- effect, so a redelivered event is recognised and applied once.
CREATE TABLE IF NOT EXISTS applied_events (
    event_id   TEXT         PRIMARY KEY,
    event_type VARCHAR(100) NOT NULL,
    applied_at TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
