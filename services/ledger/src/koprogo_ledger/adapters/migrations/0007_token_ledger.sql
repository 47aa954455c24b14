-- The grid's token ledger (docs/grid-trust.md, "The token ledger"; docs/grid-rewards.md), written
-- by the ledger service alone, and what the verification of tasks adds to `mcp_tasks`.
--
-- grid_ledger_entries  append-only, double-entry, hash-chained (koprogo_shared.token_chain): each
--                      row moves `amount_mt` milli-tokens from `debit` to `credit`; `hash` is
--                      sha256(prev_hash || canonical JSON of the row's token_chain.ENTRY_FIELDS).
--                      `entry_id` is derived from the event (or the task and attempt) and the leg,
--                      so a redelivered event writes nothing twice.
-- grid_ledger_heads    the ledger's signed heads (seq, hash), every LEDGER_HEAD_INTERVAL_S.
-- grid_ledger_keys     the public key the heads are signed with (one row, written at start).
-- grid_nodes           each node's standing (NodeTrustChanged) and its replicas' verdicts
--                      (counted from grid_task_replicas, written from TaskCompleted/TaskFailed).
-- grid_account_balances  a view: each account's balance (credits minus debits).
--
-- Append-only is enforced by triggers refusing UPDATE, DELETE and TRUNCATE. A superuser can
-- disable them (ALTER TABLE ... DISABLE TRIGGER): that is what the hash chain and the signed
-- heads detect.

CREATE TABLE IF NOT EXISTS grid_ledger_entries (
    seq         BIGINT      PRIMARY KEY CHECK (seq > 0),
    entry_id    TEXT        NOT NULL UNIQUE,
    recorded_at TIMESTAMPTZ NOT NULL,
    debit       TEXT        NOT NULL,
    credit      TEXT        NOT NULL,
    amount_mt   BIGINT      NOT NULL CHECK (amount_mt > 0),
    kind        TEXT        NOT NULL
        CHECK (kind IN ('reward', 'fund_share', 'co2_credit', 'escrow_release', 'escrow_forfeit')),
    task_id     TEXT,
    node_id     TEXT,
    copro_id    TEXT,
    memo        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    prev_hash   TEXT        NOT NULL,
    hash        TEXT        NOT NULL UNIQUE,
    CONSTRAINT grid_ledger_entries_movement CHECK (debit <> credit)
);
-- Balances (escrow released or forfeited, a node's page of entries) read by account.
CREATE INDEX IF NOT EXISTS idx_grid_ledger_entries_debit ON grid_ledger_entries (debit, seq);
CREATE INDEX IF NOT EXISTS idx_grid_ledger_entries_credit ON grid_ledger_entries (credit, seq);
CREATE INDEX IF NOT EXISTS idx_grid_ledger_entries_task ON grid_ledger_entries (task_id);

CREATE TABLE IF NOT EXISTS grid_ledger_heads (
    seq       BIGINT      PRIMARY KEY CHECK (seq > 0),
    hash      TEXT        NOT NULL,
    signed_at TIMESTAMPTZ NOT NULL,
    signer    TEXT        NOT NULL,
    signature TEXT        NOT NULL
);

CREATE OR REPLACE FUNCTION grid_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the token ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

DROP TRIGGER IF EXISTS grid_ledger_entries_append_only ON grid_ledger_entries;
CREATE TRIGGER grid_ledger_entries_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON grid_ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION grid_ledger_append_only();
DROP TRIGGER IF EXISTS grid_ledger_heads_append_only ON grid_ledger_heads;
CREATE TRIGGER grid_ledger_heads_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON grid_ledger_heads
    FOR EACH STATEMENT EXECUTE FUNCTION grid_ledger_append_only();

-- One row: the key every head is signed with. The ledger writes it at start, and refuses to
-- start with another key once heads exist (they would no longer verify).
CREATE TABLE IF NOT EXISTS grid_ledger_keys (
    one        BOOLEAN     PRIMARY KEY DEFAULT true CHECK (one),
    public_key TEXT        NOT NULL,
    since      TIMESTAMPTZ NOT NULL
);

CREATE OR REPLACE VIEW grid_account_balances AS
SELECT account, SUM(delta)::bigint AS balance_mt
FROM (
    SELECT credit AS account, amount_mt AS delta FROM grid_ledger_entries
    UNION ALL
    SELECT debit AS account, -amount_mt AS delta FROM grid_ledger_entries
) AS movements
GROUP BY account;

-- Each replica of a finished task as its verification judged it (TaskCompleted / TaskFailed):
-- one row per (task, attempt), so a redelivered or repeated decision counts it once.
CREATE TABLE IF NOT EXISTS grid_task_replicas (
    task_id    UUID        NOT NULL,
    attempt    INT         NOT NULL,
    node_id    TEXT        NOT NULL,
    owner      TEXT        NOT NULL,
    verdict    TEXT        NOT NULL,
    trusted    BOOLEAN     NOT NULL,
    flagged    BOOLEAN     NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
CREATE INDEX IF NOT EXISTS idx_grid_task_replicas_node ON grid_task_replicas (node_id);

-- validated / invalid / refused / flagged: the node's replicas judged so (grid_task_replicas);
-- trusted / valid_streak: the scheduler's word (NodeTrustChanged, the latest by its time,
-- `trust_changed_at`); before any, a node's first replica's standing.
CREATE TABLE IF NOT EXISTS grid_nodes (
    node_id          TEXT        PRIMARY KEY,
    owner            TEXT        NOT NULL,
    trusted          BOOLEAN     NOT NULL DEFAULT false,
    valid_streak     INT         NOT NULL DEFAULT 0,
    validated        INT         NOT NULL DEFAULT 0,
    invalid          INT         NOT NULL DEFAULT 0,
    refused          INT         NOT NULL DEFAULT 0,
    flagged          INT         NOT NULL DEFAULT 0,
    last_reason      TEXT,
    trust_changed_at TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- Tasks: how their result is (being) verified (task_events.TaskVerification as JSON, what
-- `GET /mcp/v1/tasks/{id}` shows), as of `verification_at`; and the status `verifying`.
ALTER TABLE mcp_tasks
    ADD COLUMN IF NOT EXISTS verification    JSONB,
    ADD COLUMN IF NOT EXISTS verification_at TIMESTAMPTZ;

ALTER TABLE mcp_tasks DROP CONSTRAINT IF EXISTS mcp_tasks_status_check;
ALTER TABLE mcp_tasks ADD CONSTRAINT mcp_tasks_status_check
    CHECK (status IN ('pending', 'assigned', 'running', 'verifying', 'completed', 'failed', 'expired',
                      'cancelled'))
    NOT VALID;
