-- Runners on Docker Swarm run on one node of several: the node's hostname
-- (for operators) and the host clients reach its published ports on (the
-- endpoint's host). Both NULL for runners on the one engine's host.
ALTER TABLE runners ADD COLUMN node TEXT;
ALTER TABLE runners ADD COLUMN node_host TEXT;
