//! `<Dial>`: a child call to every number and SIP URI at once through the flow's dialer; the
//! first to answer is bridged with the call, the others are ended, and what came of it (with
//! the bridged conversation's recording, when asked) is the flow's next event.

use std::sync::Arc;

use callflow_media::worker::MediaEvent;
use callflow_runtime::flow::FlowEvent;
use callflow_store::{CallLogEntry, Dialled, FlowFailure, LogLevel, LogSource};

use super::{Outcome, Session};
use crate::clock::now_ms;
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
        let mut winner: Option<String> = None;
        let mut recording = None;
        loop {
            tokio::select! {
                _ = &mut ended => break,
                Ok(()) = decided.changed(), if winner.is_none() => {
                    winner = decided.borrow().clone();
                    for c in children.iter().filter(|c| Some(&c.sid) != winner.as_ref()) {
                        tel.end_leg(&c.sid);
                    }
                    if d.record && recording.is_none() && !self.call.instructions.record {
                        // record-from-answer: both sides, from the bridge to the end
                        let done = self.media.record_conversation(u64::from(d.time_limit_ms));
                        recording = Some((done, now_ms()));
                    }
                }
                e = self.events.recv() => match e {
                    None | Some(MediaEvent::Closed { .. }) => {
                        // the caller hung up: what was recorded is kept all the same
                        self.keep_recording_in_background(recording.take());
                        return Outcome::Gone;
                    }
                    Some(MediaEvent::Digit { digit: '*', .. }) if d.hangup_on_star => {
                        for c in &children {
                            tel.end_leg(&c.sid);
                        }
                    }
                    Some(_) => {}
                },
                Some(r) = self.leg.redirect() => {
                    for c in &children {
                        tel.end_leg(&c.sid);
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
        let mut stored = Vec::new();
        for c in &children {
            let fresh = self
                .inner()
                .store
                .call(&c.account_sid, &c.sid)
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| c.clone());
            stored.push(fresh);
        }
        let pick = winner
            .as_ref()
            .and_then(|w| stored.iter().find(|c| &c.sid == w))
            .unwrap_or(&stored[0]);
        let status = match &winner {
            Some(_) => pick.status().as_str().to_owned(),
            None => unanswered_status(stored.iter().map(|c| c.status().as_str())),
        };
        let recording = match recording {
            Some((done, started)) => {
                self.media.end_conversation();
                self.runner
                    .store_conversation(&self.call, done, started, "DialVerb")
                    .await
            }
            None => None,
        };
        Outcome::Event(FlowEvent::DialDone(DialResult {
            status,
            call_sid: Some(pick.sid.clone()),
            duration_s: u32::try_from(pick.duration.unwrap_or(0)).unwrap_or(0),
            recording,
        }))
    }

    /// A `<Dial record>` the call left early (hung up, redirected): ended and stored by a
    /// task of its own.
    fn keep_recording_in_background(
        &self,
        recording: Option<(
            tokio::sync::oneshot::Receiver<Box<callflow_media::record::Conversation>>,
            i64,
        )>,
    ) {
        let Some((done, started)) = recording else {
            return;
        };
        self.media.end_conversation();
        let (runner, call) = (self.runner.clone(), self.call.clone());
        tokio::spawn(async move {
            runner
                .store_conversation(&call, done, started, "DialVerb")
                .await
        });
    }
}

/// The numbers one `<Dial>` rings at once (Twilio's limit).
const MAX_DIAL_NUMBERS: usize = 10;

/// `DialCallStatus` when no leg answered: the legs' common status, else `no-answer` if any leg
/// rang out, else `busy` if any was busy, else `failed`.
fn unanswered_status<'a>(statuses: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = statuses.collect();
    let pick = if all.windows(2).all(|w| w[0] == w[1]) {
        all.first().copied().unwrap_or("failed")
    } else if all.contains(&"no-answer") {
        "no-answer"
    } else if all.contains(&"busy") {
        "busy"
    } else {
        "failed"
    };
    pick.to_owned()
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
    use super::*;

    #[test]
    fn a_dial_nobody_answered_reports_the_most_telling_status() {
        let of = |v: &[&str]| unanswered_status(v.iter().copied());
        assert_eq!(of(&["busy", "busy"]), "busy");
        assert_eq!(of(&["failed"]), "failed");
        assert_eq!(of(&["busy", "no-answer", "failed"]), "no-answer");
        assert_eq!(of(&["busy", "failed"]), "busy");
        assert_eq!(of(&["canceled", "failed"]), "failed");
    }
}
