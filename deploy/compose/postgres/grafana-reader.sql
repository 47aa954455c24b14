-- The read-only role Grafana's PostgreSQL data source (deploy/grafana/provisioning/datasources)
-- logs in as: SELECT on the tables and views the dashboards read, nothing else (not the message
-- contents' keys, not the audit log). Run by the compose file's `grafana-db-role` one-shot as the
-- database's owner, after the ledger's migrations, at every `up`: idempotent.
--   psql -v ON_ERROR_STOP=1 -v reader_password_file=/run/secrets/grafana-db-password -f grafana-reader.sql
-- A dashboard reading another table needs it added here (tests/deploy/test_compose.py checks).

-- The password from its file (psql runs the command in backquotes), never on a command line.
\set reader_password `cat :'reader_password_file'`

SELECT 'CREATE ROLE grafana_reader'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'grafana_reader') \gexec

ALTER ROLE grafana_reader WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
    PASSWORD :'reader_password';
-- A second guard: even a table granted by mistake cannot be written through this role.
ALTER ROLE grafana_reader SET default_transaction_read_only = on;

GRANT USAGE ON SCHEMA public TO grafana_reader;
GRANT SELECT ON mcp_requests, mcp_responses, mcp_tasks, mcp_task_attempts, grid_task_replicas,
    grid_ledger_entries, grid_account_balances, grid_nodes TO grafana_reader;
