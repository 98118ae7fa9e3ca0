-- Each binding's per-event deadline for its plugin, in milliseconds (the runtime's default is 10).
ALTER TABLE plugin_bindings ADD COLUMN deadline_ms INTEGER NOT NULL DEFAULT 10;
