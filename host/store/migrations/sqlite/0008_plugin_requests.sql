-- The outbox also carries what call-events plugins need: a `call-event` row holds a lifecycle
-- event (JSON in `body`) for the call's pinned plugin, written in the transaction of the status
-- change, so a crash cannot lose it; running the plugin turns it into `plugin-request` rows (any
-- method, the plugin's headers and body) in the transaction that marks the event handled.
-- A request with an idempotency key is made at most once per account: the unique index below
-- refuses a second row with the same key.
ALTER TABLE webhook_deliveries ADD COLUMN headers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE webhook_deliveries ADD COLUMN body BLOB;
ALTER TABLE webhook_deliveries ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX webhook_deliveries_idempotency
    ON webhook_deliveries (account_sid, idempotency_key) WHERE idempotency_key IS NOT NULL;
