-- Callouts: mass outbound calling. A callout holds the call every attempt makes (a template of
-- the Calls.json parameters, JSON), its limits and calling hours; participants are the numbers
-- to call; each attempt is an ordinary call linked to its participant.
CREATE TABLE callouts (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    sid             TEXT    NOT NULL UNIQUE,
    account_sid     TEXT    NOT NULL REFERENCES accounts (sid),
    name            TEXT    NOT NULL,
    -- draft | running | paused | stopped | completed
    status          TEXT    NOT NULL,
    call_template   TEXT    NOT NULL,
    calls_per_second REAL,
    max_concurrent  INTEGER,
    -- "HH:MM-HH:MM" in the participant's (or the callout's) time zone; NULL = any time
    calling_hours   TEXT,
    time_zone       TEXT    NOT NULL,
    start_at        INTEGER,
    priority        INTEGER NOT NULL DEFAULT 0,
    retry_config    TEXT    NOT NULL DEFAULT '{}',
    metadata        TEXT    NOT NULL DEFAULT '{}',
    date_created    INTEGER NOT NULL,
    date_updated    INTEGER NOT NULL,
    date_started    INTEGER,
    date_finished   INTEGER
);
CREATE INDEX callouts_account ON callouts (account_sid, seq);
CREATE INDEX callouts_status ON callouts (status);

CREATE TABLE participants (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    sid             TEXT    NOT NULL UNIQUE,
    callout_sid     TEXT    NOT NULL REFERENCES callouts (sid),
    account_sid     TEXT    NOT NULL,
    phone           TEXT    NOT NULL,
    time_zone       TEXT,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    -- pending (waiting for next_at) | calling (an attempt is live) |
    -- settling (the attempt ended; the retry policy has not decided yet) | done
    state           TEXT    NOT NULL,
    -- once done: the last attempt's status, or canceled (callout stopped), or errored (the
    -- retry policy failed)
    outcome         TEXT,
    reason          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at         INTEGER NOT NULL DEFAULT 0,
    call_sid        TEXT,
    date_created    INTEGER NOT NULL,
    date_updated    INTEGER NOT NULL,
    UNIQUE (callout_sid, phone)
);
-- the scheduler's claims: due participants of one callout, without scanning the others
CREATE INDEX participants_due ON participants (callout_sid, state, next_at);
CREATE INDEX participants_state ON participants (state, seq);
-- lists and exports of one callout, in load order
CREATE INDEX participants_callout ON participants (callout_sid, seq);

ALTER TABLE calls ADD COLUMN callout_sid TEXT;
ALTER TABLE calls ADD COLUMN participant_sid TEXT;
ALTER TABLE calls ADD COLUMN attempt INTEGER;
ALTER TABLE calls ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- set (once) when the dispatcher sends the call's INVITE: a queued call with it set was already
-- sent, so after a crash it is ended, never sent twice
ALTER TABLE calls ADD COLUMN dispatched_at INTEGER;
CREATE INDEX calls_participant ON calls (participant_sid);
CREATE INDEX calls_callout ON calls (callout_sid, status);
-- the dispatcher's queue: highest priority first, then oldest
CREATE INDEX calls_queue ON calls (status, priority DESC, seq);

-- An attempt's final status hands its participant to the retry policy, in the statement that
-- ends the call: a crash between the two cannot forget the participant.
CREATE TRIGGER calls_settle_participant AFTER UPDATE OF status ON calls
WHEN NEW.participant_sid IS NOT NULL
 AND NEW.status IN ('completed', 'busy', 'no-answer', 'failed', 'canceled')
BEGIN
    UPDATE participants SET state = 'settling', date_updated = NEW.date_updated
     WHERE sid = NEW.participant_sid AND state = 'calling' AND call_sid = NEW.sid;
END;
