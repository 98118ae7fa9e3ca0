-- A binding's secrets (issue 19): configuration values the plugin gets at every invocation but
-- that are kept here only, never copied into the calls the binding pins, never returned by the
-- API (its names are). A JSON object, merged over the configuration when the plugin runs.
ALTER TABLE plugin_bindings ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}';
