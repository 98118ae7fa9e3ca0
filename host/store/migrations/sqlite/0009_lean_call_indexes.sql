-- Every index on `calls` is rewritten on each status change (an index entry is deleted and
-- inserted again when a column it holds or tests changes) and committed page by page into the
-- WAL: what a call costs the store is mostly index pages. Indexes now hold only the calls their
-- readers look for:
-- - the dispatcher's queue holds queued calls only (its query tests `status = 'queued'`);
-- - calls a run may have left unfinished (read once at start) have their own small index,
--   left as soon as a call ends;
-- - a callout's calls and a participant's attempts are indexed only for calls of a callout;
-- - `calls_status (status, seq)` is gone: its two readers use the indexes above.
DROP INDEX calls_status;
DROP INDEX calls_queue;
CREATE INDEX calls_queue ON calls (priority DESC, seq) WHERE status = 'queued';
CREATE INDEX calls_live ON calls (seq) WHERE status IN ('queued', 'ringing', 'in-progress');
DROP INDEX calls_participant;
CREATE INDEX calls_participant ON calls (participant_sid) WHERE participant_sid IS NOT NULL;
DROP INDEX calls_callout;
CREATE INDEX calls_callout ON calls (callout_sid, status) WHERE callout_sid IS NOT NULL;
