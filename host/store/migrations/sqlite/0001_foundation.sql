-- callflow foundation schema (SQLite). Times are integer milliseconds since the Unix epoch, UTC.
-- `seq` columns give a stable insertion order for paging (newest first) without relying on clocks.

CREATE TABLE accounts (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    sid               TEXT    NOT NULL UNIQUE,
    parent_sid        TEXT    REFERENCES accounts (sid),
    is_root           INTEGER NOT NULL DEFAULT 0,
    friendly_name     TEXT    NOT NULL,
    auth_token        TEXT    NOT NULL,
    status            TEXT    NOT NULL DEFAULT 'active',
    date_created      INTEGER NOT NULL,
    date_updated      INTEGER NOT NULL
);
CREATE UNIQUE INDEX accounts_one_root ON accounts (is_root) WHERE is_root = 1;
CREATE INDEX accounts_parent ON accounts (parent_sid, seq);

CREATE TABLE incoming_phone_numbers (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    sid                    TEXT    NOT NULL UNIQUE,
    account_sid            TEXT    NOT NULL REFERENCES accounts (sid),
    phone_number           TEXT    NOT NULL UNIQUE,
    friendly_name          TEXT    NOT NULL,
    voice_url              TEXT,
    voice_method           TEXT    NOT NULL DEFAULT 'POST',
    voice_fallback_url     TEXT,
    voice_fallback_method  TEXT    NOT NULL DEFAULT 'POST',
    status_callback        TEXT,
    status_callback_method TEXT    NOT NULL DEFAULT 'POST',
    date_created           INTEGER NOT NULL,
    date_updated           INTEGER NOT NULL
);
CREATE INDEX incoming_phone_numbers_account ON incoming_phone_numbers (account_sid, seq);

CREATE TABLE calls (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    sid                    TEXT    NOT NULL UNIQUE,
    account_sid            TEXT    NOT NULL REFERENCES accounts (sid),
    parent_call_sid        TEXT,
    direction              TEXT    NOT NULL,
    to_number              TEXT    NOT NULL,
    from_number            TEXT    NOT NULL,
    phone_number_sid       TEXT,
    status                 TEXT    NOT NULL,
    answered_by            TEXT,
    start_time             INTEGER,
    end_time               INTEGER,
    duration               INTEGER,
    sip_response_code      INTEGER,
    url                    TEXT,
    method                 TEXT    NOT NULL,
    twiml                  TEXT,
    fallback_url           TEXT,
    fallback_method        TEXT    NOT NULL,
    status_callback        TEXT,
    status_callback_method TEXT    NOT NULL,
    status_callback_event  TEXT    NOT NULL,
    timeout                INTEGER NOT NULL,
    time_limit             INTEGER NOT NULL,
    send_digits            TEXT,
    record                 INTEGER NOT NULL DEFAULT 0,
    machine_detection      TEXT,
    -- every parameter of the create request as received, so nothing is silently dropped
    request_params         TEXT    NOT NULL DEFAULT '[]',
    date_created           INTEGER NOT NULL,
    date_updated           INTEGER NOT NULL
);
CREATE INDEX calls_account ON calls (account_sid, seq);
CREATE INDEX calls_status ON calls (status, seq);

-- append-only log of everything that happened to a call
CREATE TABLE call_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid  TEXT    NOT NULL,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    detail    TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX call_events_call ON call_events (call_sid, id);

CREATE TABLE recordings (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    sid            TEXT    NOT NULL UNIQUE,
    account_sid    TEXT    NOT NULL REFERENCES accounts (sid),
    call_sid       TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    source         TEXT    NOT NULL,
    channels       INTEGER NOT NULL DEFAULT 1,
    duration       INTEGER NOT NULL DEFAULT 0,
    start_time     INTEGER NOT NULL,
    error_code     INTEGER,
    -- media file names relative to the data directory; NULL until written
    wav_path       TEXT,
    mp3_path       TEXT,
    date_created   INTEGER NOT NULL,
    date_updated   INTEGER NOT NULL
);
CREATE INDEX recordings_account ON recordings (account_sid, seq);
CREATE INDEX recordings_call ON recordings (call_sid, seq);

-- the webhook delivery outbox: one row per callback to send, retried until delivered or given up
CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    account_sid      TEXT    NOT NULL,
    call_sid         TEXT,
    kind             TEXT    NOT NULL,
    url              TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);

CREATE TABLE webhook_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  INTEGER NOT NULL REFERENCES webhook_deliveries (id),
    at           INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    duration_ms  INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
