-- One row per runner the orchestrator is responsible for. Timestamps are UTC
-- text of fixed width (YYYY-MM-DDTHH:MM:SS.mmmZ) so that they sort and compare
-- as strings and read well in the sqlite3 shell.
CREATE TABLE runners (
    session_id        TEXT PRIMARY KEY NOT NULL,
    -- 'singleton' is the one shared runner of REUSE_RUNNER_MODE.
    kind              TEXT NOT NULL DEFAULT 'session' CHECK (kind IN ('session', 'singleton')),
    -- provisioning: row claimed, container being created and started;
    -- running: container started and its port known;
    -- removing: container being stopped and removed.
    state             TEXT NOT NULL CHECK (state IN ('provisioning', 'running', 'removing')),
    container_name    TEXT NOT NULL UNIQUE,
    container_id      TEXT UNIQUE,
    host_port         INTEGER CHECK (host_port BETWEEN 1 AND 65535),
    network_mode      TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    last_heartbeat_at TEXT NOT NULL
) STRICT;

-- The reaper's query: stale running rows and unfinished removals.
CREATE INDEX runners_by_state_and_heartbeat ON runners (state, last_heartbeat_at);

-- At most one shared runner, enforced by the database itself.
CREATE UNIQUE INDEX runners_one_singleton ON runners (kind) WHERE kind = 'singleton';

-- What happened to each runner and why: what an operator reads when debugging.
CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    container_id TEXT,
    actor        TEXT NOT NULL CHECK (actor IN ('api', 'reconciler', 'reaper')),
    action       TEXT NOT NULL,
    reason       TEXT NOT NULL
) STRICT;

CREATE INDEX audit_log_by_session ON audit_log (session_id, id);
