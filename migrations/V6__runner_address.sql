-- Where the service itself reaches a runner's port 3000 (its container's
-- address on its network), for the gateway: straight to the container
-- rather than through the engine's port proxy. NULL: through the published
-- port (Swarm nodes, isolated runners, rows from before this column).
ALTER TABLE runners ADD COLUMN address TEXT;
