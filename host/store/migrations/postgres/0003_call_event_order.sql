-- A call's deliveries by call (issue 19): the outbox runs a call's events for a call-events
-- plugin one at a time, in the order they happened, so a claim looks for an older pending event
-- of the same call; status callbacks count the call's earlier ones. Both read by call.
CREATE INDEX webhook_deliveries_call ON webhook_deliveries (call_sid, id) WHERE call_sid IS NOT NULL;
