-- Several nodes on one database (issue 17). Each running callflow process is a node: a row
-- here, its heartbeat refreshed every second. A node that stops beating (or, on PostgreSQL,
-- whose session lock is free) is dead; the leader ends its calls and frees what it held.
CREATE TABLE nodes (
    name          TEXT    PRIMARY KEY,
    -- this run of the node: a fresh id at every start, so a restarted node is told apart from
    -- the run it replaces
    incarnation   TEXT    NOT NULL,
    -- where other nodes reach its API (requests for calls it owns are forwarded there)
    http_url      TEXT    NOT NULL DEFAULT '',
    started_at    BIGINT  NOT NULL,
    heartbeat_at  BIGINT  NOT NULL,
    -- running | dead (declared by the leader, or by the node's own next start)
    state         TEXT    NOT NULL
);

-- the node that drives a call: the one that received it, or that sent its INVITE
ALTER TABLE calls ADD COLUMN node TEXT;
CREATE INDEX calls_node_live ON calls (node) WHERE status IN ('queued', 'ringing', 'in-progress');

-- the node that claimed a delivery (NULL when none holds it): a dead node's claims are freed
ALTER TABLE webhook_deliveries ADD COLUMN leased_by TEXT;
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (leased_by) WHERE leased_by IS NOT NULL;
