//! Call legs driven on a simulated clock against a model of the store (it applies a status
//! change when `CallStatus::can_become` allows it, as the store does, unless the test has moved
//! the call on behind the leg's back). Each test reads as a transcript: `>` what came in, `<`
//! what the leg asked for, `=` what the store answered.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callflow_sip::sdp::{Direction, Negotiated};
use expect_test::{Expect, expect};

use super::*;
use crate::test_support::call as stored_call;

fn local() -> LocalMedia {
    LocalMedia {
        ip: "10.0.0.9".parse().unwrap(),
        port: 40_000,
        session_id: 1,
        session_version: 1,
    }
}

fn agreed(remote: &str, direction: Direction) -> Negotiated {
    Negotiated {
        media_index: 0,
        codec: Codec::Pcmu,
        payload_type: 0,
        telephone_event: Some(101),
        ptime: 20,
        remote: remote.parse::<SocketAddr>().unwrap(),
        remote_direction: direction,
        direction,
    }
}

/// A leg, its store and its clock; every input and output is written to `log`.
struct Sim {
    leg: CallLeg,
    stored: Call,
    start: Instant,
    now: Instant,
    log: String,
    /// The next status change the store refuses, as the API's own change got there first.
    moved_on: Option<CallStatus>,
    /// Refused SIP commands.
    refuse_sip: Vec<SipCommand>,
}

impl Sim {
    fn inbound(flow_answers: bool) -> Sim {
        Self::new(
            CallStatus::Ringing,
            Origin::Inbound {
                answer_with: local(),
                flow_answers,
            },
        )
    }

    fn outbound() -> Sim {
        Self::new(CallStatus::Queued, Origin::Outbound)
    }

    fn new(status: CallStatus, origin: Origin) -> Sim {
        let mut call = stored_call(status, "completed");
        call.instructions.time_limit = 60;
        let now = Instant::now();
        let mut sim = Sim {
            leg: CallLeg::new(call.clone(), origin),
            stored: call,
            start: now,
            now,
            log: String::new(),
            moved_on: None,
            refuse_sip: Vec::new(),
        };
        sim.drain();
        sim
    }

    fn at(&self) -> u64 {
        self.now.duration_since(self.start).as_millis() as u64
    }

    fn note(&mut self, line: String) {
        let at = self.at();
        let _ = writeln!(self.log, "[{at:>6}] {line}");
    }

    /// Performs what the leg asked, as the driver does.
    fn drain(&mut self) {
        while let Some(a) = self.leg.poll_action() {
            match a {
                Action::Store(change) => {
                    self.note(format!(
                        "< store {} sip={:?} {}",
                        change.to, change.sip_code, change.cause
                    ));
                    let stored = self.apply(&change);
                    let line = match &stored {
                        Stored::Applied(c) => format!("= applied: {}", c.status()),
                        Stored::Refused(c) => format!(
                            "= refused: the call is {}",
                            c.as_ref().map_or("gone".into(), |c| c.status().to_string())
                        ),
                    };
                    self.note(line);
                    self.leg.handle_stored(self.now, stored);
                }
                Action::Sip(cmd) => {
                    let refused = self.refuse_sip.contains(&cmd);
                    let what = match &cmd {
                        SipCommand::Answer(m) => format!("answer port {}", m.port),
                        other => format!("{other:?}").to_lowercase(),
                    };
                    self.note(format!(
                        "< sip {what}{}",
                        if refused { " (refused)" } else { "" }
                    ));
                    if refused {
                        self.leg.handle_sip_refused(self.now, &cmd);
                    }
                }
                Action::OpenMedia(p) => self.note(format!(
                    "< open media to {:?} send={}",
                    p.remote.map(|r| r.to_string()),
                    p.send
                )),
                Action::UpdateMedia(p) => self.note(format!(
                    "< update media to {:?} send={}",
                    p.remote.map(|r| r.to_string()),
                    p.send
                )),
                Action::StartFlow { ringing } => {
                    self.note(format!("< start flow (ringing: {ringing})"))
                }
                Action::HandMedia => self.note("< hand media to the flow".into()),
                Action::Redirect(r) => self.note(format!("< redirect the flow to {:?}", r.url)),
                Action::Reply { id, call } => self.note(format!(
                    "< reply #{id}: {}",
                    call.map_or("not found".into(), |c| c.status().to_string())
                )),
                Action::Finish => self.note("< finish".into()),
            }
        }
    }

    fn apply(&mut self, change: &StatusChange) -> Stored {
        if let Some(s) = self.moved_on.take() {
            self.stored.status = s;
            return Stored::Refused(Some(self.stored.clone()));
        }
        if !self.stored.status().can_become(change.to) {
            return Stored::Refused(Some(self.stored.clone()));
        }
        self.stored.status = change.to;
        self.stored.sip_response_code = change.sip_code.map(i64::from);
        Stored::Applied(self.stored.clone())
    }

    fn wait(&mut self, ms: u64) -> &mut Self {
        let until = self.now + Duration::from_millis(ms);
        // the driver sleeps until the leg's timeout, or the next input
        while let Some(t) = self.leg.poll_timeout().filter(|t| *t <= until) {
            self.now = t.max(self.now);
            self.note("> timeout".into());
            self.leg.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
        self
    }

    fn input(&mut self, what: &str, f: impl FnOnce(&mut CallLeg, Instant)) -> &mut Self {
        self.note(format!("> {what}"));
        f(&mut self.leg, self.now);
        self.drain();
        self
    }

    fn progress(&mut self, status: u16) -> &mut Self {
        self.input(&format!("sip {status}"), |l, now| {
            l.handle_progress(now, status)
        })
    }

    fn media(&mut self, remote: &str) -> &mut Self {
        let n = agreed(remote, Direction::SendRecv);
        self.input(&format!("sip media {remote}"), |l, now| {
            l.handle_media(now, &n)
        })
    }

    fn answered(&mut self) -> &mut Self {
        self.input("sip answered", |l, now| l.handle_answered(now))
    }

    fn ended(&mut self, end: CallEnd, code: Option<u16>, by_peer: bool) -> &mut Self {
        self.input(&format!("sip ended {end:?}"), |l, now| {
            l.handle_ended(now, end, code, by_peer)
        })
    }

    fn flow(&mut self, signal: FlowSignal) -> &mut Self {
        self.input(&format!("flow {signal:?}"), |l, now| {
            l.handle_flow(now, signal)
        })
    }

    fn end(&mut self, request: EndRequest, id: u64) -> &mut Self {
        self.input(&format!("api end {request:?} #{id}"), |l, now| {
            l.handle_end(now, request, id)
        })
    }

    fn check(&self, expected: Expect) {
        expected.assert_eq(&self.log);
    }
}

#[test]
fn an_inbound_call_rings_while_its_flow_decides_then_is_answered() {
    let mut s = Sim::inbound(true);
    s.wait(120)
        .flow(FlowSignal::Answer)
        .media("192.0.2.7:4000")
        .wait(20)
        .answered()
        .wait(5_000)
        .ended(CallEnd::Answered, None, true);
    assert!(s.leg.is_over());
    s.check(expect![[r#"
        [     0] < sip ring
        [     0] < start flow (ringing: true)
        [   120] > flow Answer
        [   120] < sip answer port 40000
        [   120] > sip media 192.0.2.7:4000
        [   120] < open media to Some("192.0.2.7:4000") send=true
        [   140] > sip answered
        [   140] < store in-progress sip=Some(200) {"sip":200}
        [   140] = applied: in-progress
        [   140] < hand media to the flow
        [  5140] > sip ended Answered
        [  5140] < store completed sip=Some(200) {"by_peer":true,"end":"Answered","sip":200}
        [  5140] = applied: completed
        [  5140] < finish
    "#]]);
}

#[test]
fn an_inbound_call_is_answered_at_once_when_its_flow_does_not_answer_it() {
    let mut s = Sim::inbound(false);
    s.media("192.0.2.7:4000")
        .answered()
        .wait(1_000)
        .flow(FlowSignal::Done)
        .ended(CallEnd::Answered, None, false);
    s.check(expect![[r#"
        [     0] < sip answer port 40000
        [     0] > sip media 192.0.2.7:4000
        [     0] < open media to Some("192.0.2.7:4000") send=true
        [     0] > sip answered
        [     0] < store in-progress sip=Some(200) {"sip":200}
        [     0] = applied: in-progress
        [     0] < start flow (ringing: false)
        [  1000] > flow Done
        [  1000] < sip hangup
        [  1000] > sip ended Answered
        [  1000] < store completed sip=Some(200) {"by_peer":false,"end":"Answered","sip":200}
        [  1000] = applied: completed
        [  1000] < finish
    "#]]);
}

#[test]
fn a_reject_busy_refuses_the_call_unanswered_and_ends_it_busy() {
    let mut s = Sim::inbound(true);
    s.wait(80)
        .flow(FlowSignal::Refuse(486))
        .flow(FlowSignal::Done)
        .ended(CallEnd::Rejected(486), Some(486), false);
    s.check(expect![[r#"
        [     0] < sip ring
        [     0] < start flow (ringing: true)
        [    80] > flow Refuse(486)
        [    80] < sip reject(486)
        [    80] > flow Done
        [    80] > sip ended Rejected(486)
        [    80] < store busy sip=Some(486) {"by_peer":false,"end":"Rejected(486)","sip":486}
        [    80] = applied: busy
        [    80] < finish
    "#]]);
}

#[test]
fn a_reject_for_another_reason_ends_the_call_no_answer() {
    let mut s = Sim::inbound(true);
    s.flow(FlowSignal::Refuse(603))
        .ended(CallEnd::Rejected(603), Some(603), false);
    assert_eq!(s.leg.call().status(), CallStatus::NoAnswer);
}

#[test]
fn a_refusal_the_dialog_could_not_send_decides_nothing() {
    // the caller gave up just as the flow refused: the call ends as the caller ended it
    let mut s = Sim::inbound(true);
    s.refuse_sip.push(SipCommand::Reject(486));
    s.flow(FlowSignal::Refuse(486))
        .ended(CallEnd::Canceled, Some(487), true);
    s.check(expect![[r#"
        [     0] < sip ring
        [     0] < start flow (ringing: true)
        [     0] > flow Refuse(486)
        [     0] < sip reject(486) (refused)
        [     0] > sip ended Canceled
        [     0] < store canceled sip=Some(487) {"by_peer":true,"end":"Canceled","sip":487}
        [     0] = applied: canceled
        [     0] < finish
    "#]]);
}

#[test]
fn the_caller_hanging_up_while_the_flow_decides_cancels_the_call() {
    let mut s = Sim::inbound(true);
    s.wait(3_000).ended(CallEnd::Canceled, Some(487), true);
    assert_eq!(s.leg.call().status(), CallStatus::Canceled);
    assert!(s.leg.is_over());
    // the flow's late signals change nothing
    s.flow(FlowSignal::Answer).flow(FlowSignal::Done);
    assert!(s.log.ends_with("> flow Done\n"), "{}", s.log);
}

#[test]
fn a_flow_that_ends_without_deciding_hangs_the_ringing_call_up() {
    let mut s = Sim::inbound(true);
    s.flow(FlowSignal::Done)
        .ended(CallEnd::Rejected(480), Some(480), false);
    s.check(expect![[r#"
        [     0] < sip ring
        [     0] < start flow (ringing: true)
        [     0] > flow Done
        [     0] < sip hangup
        [     0] > sip ended Rejected(480)
        [     0] < store no-answer sip=Some(480) {"by_peer":false,"end":"Rejected(480)","sip":480}
        [     0] = applied: no-answer
        [     0] < finish
    "#]]);
}

#[test]
fn a_flow_that_never_answers_leaves_the_call_ringing_until_the_caller_gives_up() {
    let mut s = Sim::inbound(true);
    assert_eq!(
        s.leg.poll_timeout(),
        None,
        "no timer of ours while it rings"
    );
    s.wait(60_000).ended(CallEnd::Canceled, Some(487), true);
    assert_eq!(s.leg.call().status(), CallStatus::Canceled);
}

#[test]
fn an_answered_call_is_hung_up_at_its_time_limit() {
    let mut s = Sim::inbound(false);
    s.media("192.0.2.7:4000").answered();
    assert_eq!(s.leg.poll_timeout(), Some(s.now + Duration::from_secs(60)));
    s.wait(59_999);
    assert!(!s.log.contains("timeout"));
    s.wait(1).ended(CallEnd::Answered, None, false);
    s.check(expect![[r#"
        [     0] < sip answer port 40000
        [     0] > sip media 192.0.2.7:4000
        [     0] < open media to Some("192.0.2.7:4000") send=true
        [     0] > sip answered
        [     0] < store in-progress sip=Some(200) {"sip":200}
        [     0] = applied: in-progress
        [     0] < start flow (ringing: false)
        [ 60000] > timeout
        [ 60000] < sip hangup
        [ 60000] > sip ended Answered
        [ 60000] < store completed sip=Some(200) {"by_peer":false,"end":"Answered","sip":200}
        [ 60000] = applied: completed
        [ 60000] < finish
    "#]]);
    assert_eq!(s.leg.poll_timeout(), None);
}

#[test]
fn an_answer_never_confirmed_fails_the_call() {
    // our 200 went out, the ACK never came: the dialog ends without being answered
    let mut s = Sim::inbound(false);
    s.media("192.0.2.7:4000")
        .wait(32_000)
        .ended(CallEnd::Answered, None, false);
    assert_eq!(s.leg.call().status(), CallStatus::Failed);
}

#[test]
fn the_api_ends_an_answered_call_and_hears_its_final_status() {
    let mut s = Sim::inbound(false);
    s.media("192.0.2.7:4000")
        .answered()
        .end(EndRequest::Completed, 7)
        .end(EndRequest::Completed, 8)
        .ended(CallEnd::Answered, None, false);
    s.check(expect![[r#"
        [     0] < sip answer port 40000
        [     0] > sip media 192.0.2.7:4000
        [     0] < open media to Some("192.0.2.7:4000") send=true
        [     0] > sip answered
        [     0] < store in-progress sip=Some(200) {"sip":200}
        [     0] = applied: in-progress
        [     0] < start flow (ringing: false)
        [     0] > api end Completed #7
        [     0] < sip hangup
        [     0] > api end Completed #8
        [     0] < reply #8: in-progress
        [     0] > sip ended Answered
        [     0] < store completed sip=Some(200) {"by_peer":false,"end":"Answered","sip":200}
        [     0] = applied: completed
        [     0] < reply #7: completed
        [     0] < finish
    "#]]);
}

#[test]
fn a_cancel_leaves_an_answered_call_alone() {
    let mut s = Sim::inbound(false);
    s.media("192.0.2.7:4000")
        .answered()
        .end(EndRequest::Canceled, 1);
    assert!(s.log.ends_with("< reply #1: in-progress\n"), "{}", s.log);
    assert!(!s.log.contains("hangup"));
}

#[test]
fn api_redirects_go_to_the_flow() {
    let mut s = Sim::inbound(false);
    let r = Redirect {
        url: Some("https://example.com/next".into()),
        method: callflow_store::HttpMethod::Post,
        twiml: None,
    };
    s.input("api redirect", |l, now| l.handle_redirect(now, r));
    s.check(expect![[r#"
        [     0] < sip answer port 40000
        [     0] > api redirect
        [     0] < redirect the flow to Some("https://example.com/next")
    "#]]);
}

#[test]
fn a_call_the_api_ended_meanwhile_is_hung_up_when_it_answers_and_runs_no_flow() {
    let mut s = Sim::outbound();
    s.moved_on = Some(CallStatus::Canceled);
    s.media("192.0.2.7:4000")
        .answered()
        .ended(CallEnd::Answered, None, false);
    s.check(expect![[r#"
        [     0] > sip media 192.0.2.7:4000
        [     0] < open media to Some("192.0.2.7:4000") send=true
        [     0] > sip answered
        [     0] < store in-progress sip=Some(200) {"sip":200}
        [     0] = refused: the call is canceled
        [     0] < sip hangup
        [     0] > sip ended Answered
        [     0] < store completed sip=Some(200) {"by_peer":false,"end":"Answered","sip":200}
        [     0] = refused: the call is canceled
        [     0] < finish
    "#]]);
}

#[test]
fn a_reinvite_updates_the_media_and_hold_stops_sending() {
    let mut s = Sim::inbound(false);
    s.media("192.0.2.7:4000").answered();
    let hold = agreed("192.0.2.7:4000", Direction::SendOnly);
    s.input("sip media (hold)", |l, now| l.handle_media(now, &hold));
    assert!(
        s.log
            .ends_with("< update media to Some(\"192.0.2.7:4000\") send=false\n"),
        "{}",
        s.log
    );
}

#[test]
fn an_outbound_call_rings_is_answered_runs_its_flow_and_completes() {
    let mut s = Sim::outbound();
    s.wait(100)
        .progress(100)
        .progress(180)
        .wait(2_000)
        .progress(183)
        .media("198.51.100.2:7000")
        .answered()
        .wait(30_000)
        .ended(CallEnd::Answered, None, true);
    s.check(expect![[r#"
        [   100] > sip 100
        [   100] < store ringing sip=None {"sip":100}
        [   100] = applied: ringing
        [   100] > sip 180
        [  2100] > sip 183
        [  2100] > sip media 198.51.100.2:7000
        [  2100] < open media to Some("198.51.100.2:7000") send=true
        [  2100] > sip answered
        [  2100] < store in-progress sip=Some(200) {"sip":200}
        [  2100] = applied: in-progress
        [  2100] < start flow (ringing: false)
        [ 32100] > sip ended Answered
        [ 32100] < store completed sip=Some(200) {"by_peer":true,"end":"Answered","sip":200}
        [ 32100] = applied: completed
        [ 32100] < finish
    "#]]);
}

#[test]
fn unanswered_outbound_calls_end_as_twilio_says() {
    for (end, code, status) in [
        (CallEnd::Rejected(486), Some(486), CallStatus::Busy),
        (CallEnd::Rejected(600), Some(600), CallStatus::Busy),
        (CallEnd::Rejected(480), Some(480), CallStatus::NoAnswer),
        (CallEnd::RingTimeout, None, CallStatus::NoAnswer),
        (CallEnd::Rejected(404), Some(404), CallStatus::Failed),
        (CallEnd::Rejected(302), Some(302), CallStatus::Failed),
        (CallEnd::TransportFailure, None, CallStatus::Failed),
    ] {
        let mut s = Sim::outbound();
        s.progress(180).ended(end, code, false);
        assert_eq!(s.leg.call().status(), status, "{end:?}");
        let expected_code = match end {
            CallEnd::RingTimeout => 487,
            CallEnd::TransportFailure => 408,
            _ => code.unwrap(),
        };
        assert_eq!(
            s.leg.call().sip_response_code,
            Some(i64::from(expected_code)),
            "{end:?}"
        );
        assert!(!s.log.contains("start flow"), "{end:?}");
    }
}

#[test]
fn the_api_cancels_a_ringing_outbound_call() {
    let mut s = Sim::outbound();
    s.progress(180)
        .wait(1_000)
        .end(EndRequest::Canceled, 3)
        .wait(40)
        .ended(CallEnd::Canceled, Some(487), false);
    s.check(expect![[r#"
        [     0] > sip 180
        [     0] < store ringing sip=None {"sip":180}
        [     0] = applied: ringing
        [  1000] > api end Canceled #3
        [  1000] < sip hangup
        [  1040] > sip ended Canceled
        [  1040] < store canceled sip=Some(487) {"by_peer":false,"end":"Canceled","sip":487}
        [  1040] = applied: canceled
        [  1040] < reply #3: canceled
        [  1040] < finish
    "#]]);
}

#[test]
fn a_cancel_that_crosses_the_callees_answer_ends_the_call_completed() {
    // our CANCEL and their 200 crossed: the dialog ACKs and BYEs (the SIP core's job); the leg
    // sees the answer, then the end
    let mut s = Sim::outbound();
    s.progress(180)
        .end(EndRequest::Canceled, 1)
        .media("198.51.100.2:7000")
        .answered()
        .ended(CallEnd::Answered, None, false);
    assert_eq!(s.leg.call().status(), CallStatus::Completed);
    assert!(s.log.contains("< reply #1: completed"), "{}", s.log);
}

#[test]
fn a_ringing_status_the_api_overtook_hangs_the_leg_up() {
    // the API canceled the call while the INVITE was on its way
    let mut s = Sim::outbound();
    s.moved_on = Some(CallStatus::Canceled);
    s.progress(180);
    s.check(expect![[r#"
        [     0] > sip 180
        [     0] < store ringing sip=None {"sip":180}
        [     0] = refused: the call is canceled
        [     0] < sip hangup
    "#]]);
}

#[test]
fn a_final_status_the_store_cannot_read_back_still_answers_the_api() {
    // a store that lost the row answers the final change with nothing
    let mut leg = CallLeg::new(
        stored_call(CallStatus::Queued, "completed"),
        Origin::Outbound,
    );
    let now = Instant::now();
    leg.handle_end(now, EndRequest::Completed, 9);
    assert_eq!(leg.poll_action(), Some(Action::Sip(SipCommand::Hangup)));
    leg.handle_ended(now, CallEnd::Canceled, Some(487), false);
    assert!(matches!(leg.poll_action(), Some(Action::Store(_))));
    leg.handle_stored(now, Stored::Refused(None));
    assert_eq!(leg.poll_action(), Some(Action::Reply { id: 9, call: None }));
    assert_eq!(leg.poll_action(), Some(Action::Finish));
    assert_eq!(leg.poll_action(), None);
}

#[test]
fn a_dial_leg_runs_like_any_outbound_leg() {
    // a <Dial>'s child: its own statuses; what it runs once answered is the driver's choice
    let mut call = stored_call(CallStatus::Queued, "completed");
    call.direction = callflow_store::Direction::OutboundDial;
    call.parent_call_sid = Some("CA0".into());
    let now = Instant::now();
    let mut leg = CallLeg::new(call, Origin::Outbound);
    assert_eq!(leg.poll_action(), None);
    leg.handle_media(now, &agreed("198.51.100.2:7000", Direction::SendRecv));
    assert!(matches!(leg.poll_action(), Some(Action::OpenMedia(_))));
    leg.handle_answered(now);
    let Some(Action::Store(change)) = leg.poll_action() else {
        panic!("a store action")
    };
    assert_eq!(change.to, CallStatus::InProgress);
    let mut answered = leg.call().clone();
    answered.status = CallStatus::InProgress;
    leg.handle_stored(now, Stored::Applied(answered));
    assert_eq!(
        leg.poll_action(),
        Some(Action::StartFlow { ringing: false })
    );
}

#[test]
fn nothing_comes_out_of_a_leg_that_is_over() {
    let mut s = Sim::outbound();
    s.ended(CallEnd::Rejected(486), Some(486), false);
    let before = s.log.clone();
    s.progress(180)
        .media("198.51.100.2:7000")
        .answered()
        .flow(FlowSignal::Done)
        .wait(120_000);
    s.input("api redirect", |l, now| {
        l.handle_redirect(
            now,
            Redirect {
                url: None,
                method: callflow_store::HttpMethod::Post,
                twiml: Some("<Response/>".into()),
            },
        )
    });
    let after: Vec<&str> = s.log[before.len()..]
        .lines()
        .filter(|l| l.contains(" < "))
        .collect();
    assert!(after.is_empty(), "{after:?}");
    // an end request still gets its answer
    s.end(EndRequest::Completed, 4);
    assert!(s.log.ends_with("< reply #4: busy\n"), "{}", s.log);
}

#[test]
fn media_opens_once_and_later_offers_update_it() {
    let mut s = Sim::outbound();
    s.media("198.51.100.2:7000").media("198.51.100.3:7002");
    assert_eq!(s.log.matches("< open media").count(), 1);
    assert!(
        s.log
            .contains("< update media to Some(\"198.51.100.3:7002\")")
    );
    // a peer that gives no address is not sent to
    let hold = agreed("0.0.0.0:7000", Direction::SendRecv);
    assert_eq!(stream_params(&hold).remote, None);
}
