-- Uploaded plugin versions (immutable; the bytes live in the data directory, named by sha256)
-- and the bindings that choose, per account and optionally per number or callout, which plugin
-- serves each world.

CREATE TABLE plugins (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    sid           TEXT    NOT NULL UNIQUE,
    account_sid   TEXT    NOT NULL REFERENCES accounts (sid),
    name          TEXT    NOT NULL,
    world         TEXT    NOT NULL,
    sha256        TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    date_created  INTEGER NOT NULL
);
-- the same bytes uploaded again by the same account are the same version
CREATE UNIQUE INDEX plugins_account_sha ON plugins (account_sid, sha256);
CREATE INDEX plugins_account ON plugins (account_sid, seq);

CREATE TABLE plugin_bindings (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    sid           TEXT    NOT NULL UNIQUE,
    account_sid   TEXT    NOT NULL REFERENCES accounts (sid),
    world         TEXT    NOT NULL,
    -- a plugin version's sid, or `builtin:<name>`
    plugin        TEXT    NOT NULL,
    -- 'account', 'number' or 'callout'; scope_sid is '' for the account scope
    scope         TEXT    NOT NULL,
    scope_sid     TEXT    NOT NULL DEFAULT '',
    config        TEXT    NOT NULL DEFAULT '{}',
    date_created  INTEGER NOT NULL,
    date_updated  INTEGER NOT NULL
);
CREATE UNIQUE INDEX plugin_bindings_slot ON plugin_bindings (account_sid, world, scope, scope_sid);
CREATE INDEX plugin_bindings_account ON plugin_bindings (account_sid, seq);
