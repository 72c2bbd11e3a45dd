-- Warm runners: started ahead of demand under a generated session id and
-- handed to the next provision that brings no session id of its own.
ALTER TABLE runners ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0 CHECK (pooled IN (0, 1));

-- Claiming the oldest waiting runner, and counting the pool.
CREATE INDEX runners_warm_by_age ON runners (state, created_at) WHERE pooled = 1;
