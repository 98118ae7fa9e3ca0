-- SIP trunks, as configured (`[[trunks]]`), upserted by name at every start. `spec` is the
-- trunk's settings as JSON: the store keeps the text and does not read it. It holds the trunk's
-- digest password too (as `accounts.auth_token` holds tokens), so whatever shows it must redact it.

CREATE TABLE trunks (
    sid           TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    spec          TEXT    NOT NULL,
    date_created  INTEGER NOT NULL,
    date_updated  INTEGER NOT NULL
);
