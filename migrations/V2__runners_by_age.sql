-- The reaper's MAX_RUNNER_AGE_SECONDS query: running rows created before a cutoff.
CREATE INDEX runners_by_state_and_creation ON runners (state, created_at);
