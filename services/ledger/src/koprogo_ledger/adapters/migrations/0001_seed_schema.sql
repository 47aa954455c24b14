-- The upstream seed's tables, with the seed's columns and indexes.
-- IF NOT EXISTS everywhere: a database created by the seed itself is adopted as is.
-- user_id and copro_id carry no foreign key: users and copros live in the platform.

CREATE TABLE IF NOT EXISTS mcp_models (
    id                 VARCHAR(255) PRIMARY KEY,
    name               VARCHAR(255) NOT NULL,
    provider           VARCHAR(50)  NOT NULL,
    context_length     INTEGER      NOT NULL,
    is_available       BOOLEAN      NOT NULL DEFAULT true,
    supports_streaming BOOLEAN      NOT NULL DEFAULT true,
    edge_compatible    BOOLEAN      NOT NULL DEFAULT false,
    created_at         TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_mcp_models_provider ON mcp_models (provider);
CREATE INDEX IF NOT EXISTS idx_mcp_models_is_available ON mcp_models (is_available);
CREATE INDEX IF NOT EXISTS idx_mcp_models_edge_compatible ON mcp_models (edge_compatible);

CREATE TABLE IF NOT EXISTS mcp_requests (
    id          UUID         PRIMARY KEY,
    model       VARCHAR(255) NOT NULL,
    messages    JSONB        NOT NULL,
    context     VARCHAR(255),
    max_tokens  INTEGER,
    temperature REAL,
    stream      BOOLEAN      NOT NULL DEFAULT false,
    user_id     UUID,
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_mcp_requests_user_id ON mcp_requests (user_id);
CREATE INDEX IF NOT EXISTS idx_mcp_requests_context ON mcp_requests (context);
CREATE INDEX IF NOT EXISTS idx_mcp_requests_model ON mcp_requests (model);
CREATE INDEX IF NOT EXISTS idx_mcp_requests_created_at ON mcp_requests (created_at DESC);

CREATE TABLE IF NOT EXISTS mcp_responses (
    id                UUID         PRIMARY KEY,
    request_id        UUID         NOT NULL REFERENCES mcp_requests (id) ON DELETE CASCADE,
    model             VARCHAR(255) NOT NULL,
    content           TEXT         NOT NULL,
    finish_reason     VARCHAR(50)  NOT NULL,
    prompt_tokens     INTEGER      NOT NULL,
    completion_tokens INTEGER      NOT NULL,
    total_tokens      INTEGER      NOT NULL,
    execution_info    JSONB        NOT NULL,
    created_at        TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_mcp_responses_request_id ON mcp_responses (request_id);
CREATE INDEX IF NOT EXISTS idx_mcp_responses_created_at ON mcp_responses (created_at DESC);
CREATE INDEX IF NOT EXISTS idx_mcp_responses_execution_type ON mcp_responses ((execution_info->>'execution_type'));

CREATE TABLE IF NOT EXISTS mcp_tasks (
    id            UUID         PRIMARY KEY,
    task_type     VARCHAR(50)  NOT NULL,
    input_data    JSONB        NOT NULL,
    copro_id      UUID,
    status        VARCHAR(50)  NOT NULL DEFAULT 'pending',
    result        JSONB,
    assigned_node VARCHAR(255),
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT NOW(),
    updated_at    TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_mcp_tasks_status ON mcp_tasks (status);
CREATE INDEX IF NOT EXISTS idx_mcp_tasks_copro_id ON mcp_tasks (copro_id);
CREATE INDEX IF NOT EXISTS idx_mcp_tasks_created_at ON mcp_tasks (created_at DESC);
