-- The digest of the token a runner's labels carry (taylored-runner-token-sha256),
-- by which the gateway also reaches it. The service writes the digest of the
-- row's own token; a rebuild from the engine that could not derive the token
-- again (the token key was lost too) gives the row a new token and keeps the
-- labels' digest here, so that the host a browser holds keeps working. NULL:
-- rows from before this column, whose runners carry no digest label.
ALTER TABLE runners ADD COLUMN token_sha256 TEXT;
