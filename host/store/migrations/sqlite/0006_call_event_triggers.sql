-- A call's creation and status changes are logged by the database, in the statement that makes
-- them: the log cannot miss a change or record one that did not happen, and a status change
-- without webhooks is one statement (one round trip) instead of a transaction of four.
-- `event_detail` carries the JSON detail of the latest change for the trigger to copy.
ALTER TABLE calls ADD COLUMN event_detail TEXT NOT NULL DEFAULT '{}';

CREATE TRIGGER calls_log_created AFTER INSERT ON calls
BEGIN
    INSERT INTO call_events (call_sid, at, kind, detail)
    VALUES (NEW.sid, NEW.date_created, 'created', NEW.event_detail);
END;

CREATE TRIGGER calls_log_status AFTER UPDATE OF status ON calls
WHEN NEW.status <> OLD.status
BEGIN
    INSERT INTO call_events (call_sid, at, kind, detail)
    VALUES (NEW.sid, NEW.date_updated, NEW.status, NEW.event_detail);
END;
