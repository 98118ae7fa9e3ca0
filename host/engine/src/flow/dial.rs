//! `<Dial>`: a child call to every number and SIP URI at once through the flow's dialer; the
//! first to answer is bridged with the call, the others are ended, and what came of it (with
//! the bridged conversation's recording, when asked) is the flow's next event.

use std::sync::Arc;

use callflow_media::worker::MediaEvent;
use callflow_runtime::flow::FlowEvent;
use callflow_store::{CallLogEntry, CallStatus, Dialled, FlowFailure, LogLevel, LogSource};

use super::record::Take;
use super::{Outcome, Session};
use crate::telephony::{DialLeg, Dialer};

impl Session {
    /// `<Dial>`: a child call to every number at once; the first to answer is bridged with
    /// this call until either side hangs up, the others are ended; its outcome is the flow's
    /// next event.
    pub(super) async fn dial(&mut self, d: callflow_runtime::flow::Dial) -> Outcome {
        use callflow_runtime::flow::{DialResult, DialTarget};
        let failed = || {
            Outcome::Event(FlowEvent::DialDone(DialResult {
                status: "failed".into(),
                call_sid: None,
                duration_s: 0,
                recording: None,
            }))
        };
        // numbers go through the trunk, SIP URIs straight to their host (telephony decides)
        let numbers: Vec<String> = d
            .targets
            .iter()
            .map(|t| match t {
                DialTarget::Number(n) | DialTarget::Sip(n) => n.clone(),
            })
            .take(MAX_DIAL_NUMBERS)
            .collect();
        if numbers.is_empty() {
            self.log(CallLogEntry::FlowError(FlowFailure::Dial {
                error: "a <Dial> with nothing to call".into(),
                to: None,
            }))
            .await;
            return failed();
        }
        if numbers.len() < d.targets.len() {
            self.log(CallLogEntry::log(
                LogSource::Flow,
                LogLevel::Warn,
                format!("only the first {MAX_DIAL_NUMBERS} targets of a <Dial> are called"),
            ))
            .await;
        }
        let tel = self.dialer.clone();
        // Every number rings at once; the first to answer is bridged, the others are ended.
        let (race, mut decided) = tokio::sync::watch::channel(None::<String>);
        let race = Arc::new(race);
        let mut children = Vec::new();
        let mut legs = Vec::new();
        for number in &numbers {
            let placed = tel
                .dial(
                    &self.call,
                    self.media.clone(),
                    DialLeg {
                        to: number,
                        caller_id: d.caller_id.clone(),
                        timeout_s: i64::from(d.timeout_ms.div_ceil(1000).max(1)),
                        time_limit_s: i64::from(d.time_limit_ms.div_ceil(1000).max(1)),
                        race: race.clone(),
                    },
                )
                .await;
            match placed {
                Ok((child, leg)) => {
                    children.push(child);
                    legs.push(leg);
                }
                Err(why) => {
                    self.log(CallLogEntry::FlowError(FlowFailure::Dial {
                        error: why,
                        to: Some(number.clone()),
                    }))
                    .await
                }
            }
        }
        if children.is_empty() {
            return failed();
        }
        self.log(CallLogEntry::FlowDial(Dialled {
            children: children.iter().map(|c| c.sid.clone()).collect(),
            to: numbers.clone(),
        }))
        .await;
        // Whatever happens to this call, the children do not outlive it.
        let guards: Vec<EndLeg> = children
            .iter()
            .map(|c| EndLeg {
                dialer: tel.clone(),
                sid: Some(c.sid.clone()),
            })
            .collect();
        let (all_done, mut ended) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            for leg in legs {
                let _ = leg.await;
            }
            let _ = all_done.send(());
        });
        if d.record && self.call.instructions.record {
            self.log(CallLogEntry::log(
                LogSource::Flow,
                LogLevel::Info,
                "the whole call is being recorded (Record=true): <Dial record> adds no second recording",
            ))
            .await;
        }
        let mut race = DialRace::new(children.iter().map(|c| c.sid.clone()).collect());
        let mut recording = None;
        loop {
            tokio::select! {
                _ = &mut ended => break,
                Ok(()) = decided.changed(), if race.winner().is_none() => {
                    let Some(won) = decided.borrow().clone() else { continue };
                    for sid in race.handle_answered(&won) {
                        tel.end_leg(&sid);
                    }
                    if d.record && recording.is_none() && !self.call.instructions.record {
                        // record-from-answer: both sides, from the bridge to the end
                        let take = Take::new("DialVerb");
                        let tape = take.tape_name(&self.call);
                        let done = self
                            .media
                            .record_conversation(u64::from(d.time_limit_ms), tape, false);
                        recording = Some((done, take));
                    }
                }
                e = self.events.recv() => match e {
                    None | Some(MediaEvent::Closed { .. }) => {
                        // the caller hung up: what was recorded is kept all the same
                        self.keep_recording_in_background(recording.take());
                        return Outcome::Gone;
                    }
                    Some(MediaEvent::Digit { digit: '*', .. }) if d.hangup_on_star => {
                        for sid in race.end_all() {
                            tel.end_leg(&sid);
                        }
                    }
                    Some(_) => {}
                },
                Some(r) = self.leg.redirect() => {
                    for sid in race.end_all() {
                        tel.end_leg(&sid);
                    }
                    let _ = (&mut ended).await;
                    drop(guards);
                    self.keep_recording_in_background(recording.take());
                    return Outcome::Redirected(r);
                }
            }
        }
        for g in guards {
            g.disarm();
        }
        for c in &children {
            let fresh = self
                .inner()
                .store
                .call(&c.account_sid, &c.sid)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| c.clone());
            race.handle_ended(&fresh.sid, fresh.status(), fresh.duration.unwrap_or(0));
        }
        debug_assert!(race.is_over());
        let outcome = race.outcome();
        let recording = match recording {
            Some((done, take)) => {
                self.media.end_conversation();
                self.runner.store_conversation(&self.call, done, take).await
            }
            None => None,
        };
        Outcome::Event(FlowEvent::DialDone(DialResult {
            status: outcome.status.as_str().to_owned(),
            call_sid: outcome.call_sid,
            duration_s: u32::try_from(outcome.duration_s).unwrap_or(0),
            recording,
        }))
    }

    /// A `<Dial record>` the call left early (hung up, redirected): ended and stored by a
    /// task of its own.
    fn keep_recording_in_background(
        &self,
        recording: Option<(
            tokio::sync::oneshot::Receiver<Box<callflow_media::record::Conversation>>,
            Take,
        )>,
    ) {
        let Some((done, take)) = recording else {
            return;
        };
        self.media.end_conversation();
        let (runner, call) = (self.runner.clone(), self.call.clone());
        tokio::spawn(async move { runner.store_conversation(&call, done, take).await });
    }
}

/// The numbers one `<Dial>` rings at once (Twilio's limit).
const MAX_DIAL_NUMBERS: usize = 10;

/// One `<Dial>`'s children racing to answer, as a pure state: the first to answer wins (the
/// others are to be ended), and once every child has ended, what the action hears. The race
/// itself is decided where the children's media are bridged (the first to claim it); this is
/// what the dialling flow makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialRace {
    /// The children in the order they were placed, and how each ended (status, seconds).
    children: Vec<(String, Option<(CallStatus, i64)>)>,
    winner: Option<String>,
}

/// What a `<Dial>` came to: `DialCallStatus`, `DialCallSid`, `DialCallDuration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialOutcome {
    pub status: CallStatus,
    pub call_sid: Option<String>,
    pub duration_s: i64,
}

impl DialRace {
    pub(crate) fn new(children: Vec<String>) -> DialRace {
        DialRace {
            children: children.into_iter().map(|sid| (sid, None)).collect(),
            winner: None,
        }
    }

    pub(crate) fn winner(&self) -> Option<&str> {
        self.winner.as_deref()
    }

    /// `sid` answered first: the children to end (every other one still up).
    pub(crate) fn handle_answered(&mut self, sid: &str) -> Vec<String> {
        if self.winner.is_some() {
            return Vec::new();
        }
        self.winner = Some(sid.to_owned());
        self.live()
            .filter(|s| *s != sid)
            .map(str::to_owned)
            .collect()
    }

    /// The caller pressed `*` (`hangupOnStar`) or the call moved on: every child still up.
    pub(crate) fn end_all(&self) -> Vec<String> {
        self.live().map(str::to_owned).collect()
    }

    fn live(&self) -> impl Iterator<Item = &str> {
        self.children
            .iter()
            .filter(|(_, ended)| ended.is_none())
            .map(|(sid, _)| sid.as_str())
    }

    /// A child ended with `status` after `duration_s` seconds answered.
    pub(crate) fn handle_ended(&mut self, sid: &str, status: CallStatus, duration_s: i64) {
        if let Some((_, ended)) = self.children.iter_mut().find(|(s, _)| s == sid) {
            *ended = Some((status, duration_s));
        }
    }

    /// Every child has ended.
    pub(crate) fn is_over(&self) -> bool {
        self.live().next().is_none()
    }

    /// What the action hears: the winner's status and duration; when nobody answered, the
    /// children's common status, else `no-answer` if any rang out, else `busy` if any was busy,
    /// else `failed` (and the first child's sid).
    pub(crate) fn outcome(&self) -> DialOutcome {
        let of = |sid: &str| {
            self.children
                .iter()
                .find(|(s, _)| s == sid)
                .and_then(|(_, e)| *e)
        };
        if let Some(w) = &self.winner {
            let (status, duration_s) = of(w).unwrap_or((CallStatus::Completed, 0));
            return DialOutcome {
                status,
                call_sid: Some(w.clone()),
                duration_s,
            };
        }
        let all: Vec<CallStatus> = self
            .children
            .iter()
            .map(|(_, e)| e.map_or(CallStatus::Failed, |(s, _)| s))
            .collect();
        let status = if all.windows(2).all(|w| w[0] == w[1]) {
            all.first().copied().unwrap_or(CallStatus::Failed)
        } else if all.contains(&CallStatus::NoAnswer) {
            CallStatus::NoAnswer
        } else if all.contains(&CallStatus::Busy) {
            CallStatus::Busy
        } else {
            CallStatus::Failed
        };
        let first = self.children.first();
        DialOutcome {
            status,
            call_sid: first.map(|(sid, _)| sid.clone()),
            duration_s: first.and_then(|(_, e)| e.map(|(_, d)| d)).unwrap_or(0),
        }
    }
}

/// Ends a `<Dial>`'s child call when dropped, unless disarmed.
struct EndLeg {
    dialer: Dialer,
    sid: Option<String>,
}

impl EndLeg {
    fn disarm(mut self) {
        self.sid = None;
    }
}

impl Drop for EndLeg {
    fn drop(&mut self) {
        if let Some(sid) = self.sid.take() {
            self.dialer.end_leg(&sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use callflow_sip::CallEnd;
    use callflow_sip::sdp::{Codec, Direction, Negotiated};

    use super::*;
    use crate::EndRequest;
    use crate::leg::{Action, CallLeg, Origin, SipCommand, Stored};

    /// A `<Dial>`'s children as pure legs on one simulated clock, with a model of the store,
    /// and the dialling flow's race over them: what the driver, the bridge and the flow do.
    struct Children {
        legs: Vec<CallLeg>,
        race: DialRace,
        start: Instant,
        now: Instant,
        answered_at: Vec<Option<Instant>>,
        log: Vec<String>,
        next_reply: u64,
    }

    impl Children {
        fn new(n: usize) -> Children {
            let sids: Vec<String> = (1..=n).map(|i| format!("CA{i}")).collect();
            let legs = sids
                .iter()
                .map(|sid| {
                    let mut call = crate::test_support::call(CallStatus::Queued, "completed");
                    call.sid = sid.clone();
                    CallLeg::new(call, Origin::Outbound)
                })
                .collect();
            let now = Instant::now();
            Children {
                legs,
                race: DialRace::new(sids),
                start: now,
                now,
                answered_at: vec![None; n],
                log: Vec::new(),
                next_reply: 0,
            }
        }

        fn at(&mut self, ms: u64) -> &mut Self {
            self.now = self.start + Duration::from_millis(ms);
            self
        }

        fn note(&mut self, line: String) {
            let ms = self.now.duration_since(self.start).as_millis();
            self.log.push(format!("[{ms:>6}] {line}"));
        }

        /// Performs what leg `i` asked for, as its driver, its bridge and the flow would.
        fn drain(&mut self, i: usize) {
            while let Some(a) = self.legs[i].poll_action() {
                let sid = self.legs[i].call().sid.clone();
                match a {
                    Action::Store(change) => {
                        let mut call = self.legs[i].call().clone();
                        let stored = if call.status().can_become(change.to) {
                            call.status = change.to;
                            if change.to == CallStatus::InProgress {
                                self.answered_at[i] = Some(self.now);
                            }
                            if change.to.is_final() {
                                call.duration =
                                    Some(self.answered_at[i].map_or(0, |t| {
                                        self.now.duration_since(t).as_secs() as i64
                                    }));
                            }
                            Stored::Applied(call)
                        } else {
                            Stored::Refused(Some(call))
                        };
                        self.note(format!("{sid} {}", change.to));
                        self.legs[i].handle_stored(self.now, stored);
                    }
                    // the child's bridge claims the race when its flow starts (it answered)
                    Action::StartFlow { ringing: false } => {
                        let losers = self.race.handle_answered(&sid);
                        let won = self.race.winner() == Some(sid.as_str());
                        self.note(format!("{sid} bridged: {won}; ending {losers:?}"));
                        for loser in losers {
                            let j = self.index(&loser);
                            self.next_reply += 1;
                            self.legs[j].handle_end(
                                self.now,
                                EndRequest::Completed,
                                self.next_reply,
                            );
                            self.drain(j);
                        }
                    }
                    Action::Sip(SipCommand::Hangup) => self.note(format!("{sid} hangs up")),
                    Action::Finish => {
                        let call = self.legs[i].call().clone();
                        self.race
                            .handle_ended(&sid, call.status(), call.duration.unwrap_or(0));
                    }
                    _ => {}
                }
            }
        }

        fn index(&self, sid: &str) -> usize {
            self.legs.iter().position(|l| l.call().sid == sid).unwrap()
        }

        fn progress(&mut self, i: usize) -> &mut Self {
            self.legs[i].handle_progress(self.now, 180);
            self.drain(i);
            self
        }

        fn answer(&mut self, i: usize) -> &mut Self {
            let agreed = Negotiated {
                media_index: 0,
                codec: Codec::Pcmu,
                payload_type: 0,
                telephone_event: None,
                ptime: 20,
                remote: "198.51.100.9:7000".parse().unwrap(),
                remote_direction: Direction::SendRecv,
                direction: Direction::SendRecv,
            };
            self.legs[i].handle_media(self.now, &agreed);
            self.legs[i].handle_answered(self.now);
            self.drain(i);
            self
        }

        fn ended(&mut self, i: usize, end: CallEnd, code: Option<u16>) -> &mut Self {
            self.legs[i].handle_ended(self.now, end, code, true);
            self.drain(i);
            self
        }
    }

    #[test]
    fn a_dial_rings_every_leg_bridges_the_first_to_answer_and_ends_the_rest() {
        let mut d = Children::new(3);
        d.at(0).progress(0).progress(1).progress(2);
        d.at(1_500).ended(1, CallEnd::Rejected(486), Some(486));
        d.at(4_000).answer(2);
        assert!(!d.race.is_over(), "the loser's CANCEL is still on its way");
        d.at(4_040).ended(0, CallEnd::Canceled, Some(487));
        // a late answer on a loser changes nothing
        assert!(d.race.handle_answered("CA1").is_empty());
        d.at(64_000).ended(2, CallEnd::Answered, None);
        assert!(d.race.is_over());
        assert_eq!(
            d.race.outcome(),
            DialOutcome {
                status: CallStatus::Completed,
                call_sid: Some("CA3".into()),
                duration_s: 60,
            }
        );
        assert_eq!(
            d.log,
            [
                "[     0] CA1 ringing",
                "[     0] CA2 ringing",
                "[     0] CA3 ringing",
                "[  1500] CA2 busy",
                "[  4000] CA3 in-progress",
                "[  4000] CA3 bridged: true; ending [\"CA1\"]",
                "[  4000] CA1 hangs up",
                "[  4040] CA1 canceled",
                "[ 64000] CA3 completed",
            ]
        );
    }

    #[test]
    fn a_dial_nobody_answers_ends_with_the_most_telling_status() {
        let mut d = Children::new(2);
        d.at(0).progress(0).progress(1);
        d.at(2_000).ended(1, CallEnd::Rejected(486), Some(486));
        d.at(30_000).ended(0, CallEnd::RingTimeout, None);
        assert!(d.race.is_over());
        assert_eq!(
            d.race.outcome(),
            DialOutcome {
                status: CallStatus::NoAnswer,
                call_sid: Some("CA1".into()),
                duration_s: 0,
            }
        );
    }

    #[test]
    fn hangup_on_star_or_a_redirect_ends_every_leg_still_up() {
        let mut d = Children::new(3);
        d.at(0).progress(0).progress(1).progress(2);
        d.at(1_000).ended(0, CallEnd::Rejected(480), Some(480));
        assert_eq!(d.race.end_all(), ["CA2", "CA3"]);
        d.at(2_000).answer(1);
        // the winner and the loser whose CANCEL is on its way are both still up (ending a leg
        // twice is harmless: the second request is answered at once)
        assert_eq!(d.race.end_all(), ["CA2", "CA3"]);
        d.at(2_030).ended(2, CallEnd::Canceled, Some(487));
        assert_eq!(d.race.end_all(), ["CA2"]);
    }

    #[test]
    fn a_dial_nobody_answered_reports_the_most_telling_status() {
        use CallStatus::*;
        let of = |v: &[CallStatus]| {
            let mut race = DialRace::new((0..v.len()).map(|i| format!("CA{i}")).collect());
            for (i, s) in v.iter().enumerate() {
                race.handle_ended(&format!("CA{i}"), *s, 0);
            }
            assert!(race.is_over());
            race.outcome().status
        };
        assert_eq!(of(&[Busy, Busy]), Busy);
        assert_eq!(of(&[Failed]), Failed);
        assert_eq!(of(&[Busy, NoAnswer, Failed]), NoAnswer);
        assert_eq!(of(&[Busy, Failed]), Busy);
        assert_eq!(of(&[Canceled, Failed]), Failed);
    }
}
