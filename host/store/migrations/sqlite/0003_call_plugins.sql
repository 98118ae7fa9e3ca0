-- The plugin versions a call runs with, pinned when it is created: a JSON object from world to
-- {"plugin": "<ZP sid or builtin:name>", "sha256": "<hex>", "config": {...}}. Later binding
-- changes do not affect calls already created.
ALTER TABLE calls ADD COLUMN plugins TEXT NOT NULL DEFAULT '{}';
