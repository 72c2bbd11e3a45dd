-- The secret host name label of a runner behind the gateway
-- (RUNNER_ACCESS=gateway): clients reach it at <token>.<GATEWAY_DOMAIN>.
-- Random, 128 bits as 32 hex digits, distinct from the session id; kept for
-- the runner's life, so its endpoint survives restarts. The service writes
-- one into every row it inserts; rows from before this migration, and rows
-- inserted without one (by hand), get one here (SQLite's randomblob draws
-- from its ChaCha20 generator, seeded by the OS), so no row is without.
ALTER TABLE runners ADD COLUMN token TEXT;
UPDATE runners SET token = lower(hex(randomblob(16))) WHERE token IS NULL;
CREATE UNIQUE INDEX runners_by_token ON runners (token);
CREATE TRIGGER runners_token_given AFTER INSERT ON runners WHEN NEW.token IS NULL
BEGIN
    UPDATE runners SET token = lower(hex(randomblob(16))) WHERE session_id = NEW.session_id;
END;
