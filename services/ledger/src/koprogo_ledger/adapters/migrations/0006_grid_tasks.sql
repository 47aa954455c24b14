-- The grid's tasks as the ledger projects them from `koprogo.events.task.*` (task_events.py).
--
-- `mcp_tasks` keeps the seed's columns; `assigned_node` is the node of the current (or last)
-- attempt. What the seed lacks:
--   error / error_message     a failed task's code (TaskFailed.error) and its message
--   co2_grams                 the accepted attempt's CO2 (TaskCompleted; TaskFailed's when given)
--   attempts                  how many attempts were handed out so far
--   expires_at                after this, nobody may start it (TaskSubmitted.expires_at)
--   user_ref / user_id        the submitter, as 0004 stores it for mcp_requests: `user_ref` the
--                             token's `sub` as spelled, `user_id` its UUID when it is one (seed
--                             readers); hash index, for the same reasons as 0004
--   prompt_tokens, completion_tokens, duration_s   the accepted attempt's usage
--   completed_at              when the task reached a final status (any of them)
--   contents_purged_at        when the user's erasure removed parameters and result (the
--                             figures stay), as `mcp_requests.contents_purged_at`
--
-- copro_id becomes TEXT. The seed declared it UUID, but a copro id is whatever follows
-- `copro:` in a context (events.copro_id_from_context), and tests and deployments use ids such
-- as 'copro-a'. mcp_requests and mcp_responses already store it as TEXT (0002), and the stats
-- filter every table on the same text value, so the same type here is the least surprising; a
-- second column (copro_ref) would leave two columns that disagree for every non-UUID copro.
-- The conversion is lossless (a UUID becomes its canonical lower-case text) and keeps the
-- seed's index (PostgreSQL rebuilds it). A seed reader binding a UUID parameter must now cast
-- it (`copro_id = $1::text`); no reader in this project does.

ALTER TABLE mcp_tasks ALTER COLUMN copro_id TYPE TEXT USING copro_id::text;

ALTER TABLE mcp_tasks
    ADD COLUMN IF NOT EXISTS error              TEXT,
    ADD COLUMN IF NOT EXISTS error_message      TEXT,
    ADD COLUMN IF NOT EXISTS co2_grams          DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS attempts           INT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS expires_at         TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS user_ref           TEXT,
    ADD COLUMN IF NOT EXISTS user_id            UUID,
    ADD COLUMN IF NOT EXISTS prompt_tokens      INT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS completion_tokens  INT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS duration_s         DOUBLE PRECISION,
    ADD COLUMN IF NOT EXISTS completed_at       TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS contents_purged_at TIMESTAMPTZ;

-- The statuses of task_events.TaskStatus. NOT VALID: rows a seed database already holds are
-- not re-checked (their statuses are the seed's business), every new write is.
ALTER TABLE mcp_tasks DROP CONSTRAINT IF EXISTS mcp_tasks_status_check;
ALTER TABLE mcp_tasks ADD CONSTRAINT mcp_tasks_status_check
    CHECK (status IN ('pending', 'assigned', 'running', 'completed', 'failed', 'expired', 'cancelled'))
    NOT VALID;

CREATE INDEX IF NOT EXISTS idx_mcp_tasks_user_ref ON mcp_tasks USING hash (user_ref);
CREATE INDEX IF NOT EXISTS idx_mcp_tasks_user_id ON mcp_tasks (user_id);
-- `/mcp/v1/stats` counts completed tasks by copro and by when they completed.
CREATE INDEX IF NOT EXISTS idx_mcp_tasks_completed ON mcp_tasks (copro_id, completed_at DESC)
    WHERE status = 'completed';

-- One row per attempt: which node, when it was handed out, started and ended, and how it ended
-- (task_events.AttemptOutcome; NULL while it runs).
CREATE TABLE IF NOT EXISTS mcp_task_attempts (
    task_id     UUID        NOT NULL REFERENCES mcp_tasks (id) ON DELETE CASCADE,
    attempt     INT         NOT NULL,
    node_id     TEXT        NOT NULL,
    assigned_at TIMESTAMPTZ,
    started_at  TIMESTAMPTZ,
    ended_at    TIMESTAMPTZ,
    outcome     TEXT,
    PRIMARY KEY (task_id, attempt)
);
