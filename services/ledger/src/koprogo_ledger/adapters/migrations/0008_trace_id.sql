-- The trace of each chat request and grid task (issue 16): the 32-hex-digit W3C trace id the
-- gateway's ChatRequested (or TaskSubmitted) carried in its `traceparent` header, so support
-- goes from a user's complaint (a request id, or the `traceparent` the gateway returned) to
-- the trace in the trace UI. NULL when the gateway exported no traces, and for older rows.

ALTER TABLE mcp_requests ADD COLUMN IF NOT EXISTS trace_id TEXT NULL;
ALTER TABLE mcp_tasks ADD COLUMN IF NOT EXISTS trace_id TEXT NULL;
