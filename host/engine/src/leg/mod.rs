//! One call leg's life as a pure state machine, in the style of the SIP core: what happens to
//! the leg comes in through `handle_*(now, …)` (the SIP dialog's events, the API's requests,
//! the flow's signals, timeouts, and what the store made of a status change), and what the leg
//! wants done comes out of [`CallLeg::poll_action`]; [`CallLeg::poll_timeout`] says when to
//! call [`CallLeg::handle_timeout`]. No I/O, no clock: the driver (`telephony::driver`) performs
//! each action and owns the dialog's key, the media and the flow's task.
//!
//! Drain order: after each input, drain `poll_action` until it returns `None`, performing the
//! actions in order. An [`Action::Store`] must be answered with [`CallLeg::handle_stored`]
//! before anything else is handed in (the driver awaits the store, so a call's status changes
//! are applied in the order they happened). After [`Action::Finish`] the leg is over.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use callflow_media::g711::Law;
use callflow_media::rtp::StreamParams;
use callflow_sip::CallEnd;
use callflow_sip::sdp::{Codec, LocalMedia, Negotiated};
use callflow_store::{Call, CallStatus, StatusCause};

use crate::control::{EndRequest, Redirect};

#[cfg(test)]
mod tests;

/// A command for the leg's SIP dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SipCommand {
    /// 180 Ringing to an inbound caller.
    Ring,
    /// 200 OK to an inbound caller, with our media.
    Answer(LocalMedia),
    /// A final refusal of an inbound call not answered (486 busy, 603 declined).
    Reject(u16),
    /// BYE once answered, CANCEL before.
    Hangup,
}

/// A status change for the store to apply to the call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusChange {
    pub to: CallStatus,
    pub sip_code: Option<u16>,
    /// Why, for the call's event log.
    pub cause: StatusCause,
}

/// What the store made of a [`StatusChange`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stored {
    /// Applied: the call as it is now.
    Applied(Call),
    /// Refused (the call moved on meanwhile, e.g. the API ended it): the call as stored, if
    /// it could be read.
    Refused(Option<Call>),
}

/// What the flow tells its leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowSignal {
    /// Answer the ringing call (the flow's first command needs the line).
    Answer,
    /// Refuse the ringing call unanswered with this SIP status (`<Reject>` first).
    Refuse(u16),
    /// The flow is over: the call is hung up (unless it was refused).
    Done,
}

/// What the leg wants done, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Sip(SipCommand),
    /// Open the call's media on its reserved port, with what SDP agreed.
    OpenMedia(StreamParams),
    /// SDP changed (hold, resume, a new address).
    UpdateMedia(StreamParams),
    /// Apply a status change; answer with [`CallLeg::handle_stored`].
    Store(StatusChange),
    /// Start the call's flow: while the call still rings (`ringing`: the flow answers or
    /// refuses it with a [`FlowSignal`], on detached media), or on the answered call's media.
    StartFlow {
        ringing: bool,
    },
    /// The flow that answered gets the call's media, now that the caller has confirmed.
    HandMedia,
    /// New instructions for the flow from the API.
    Redirect(Redirect),
    /// Answer the end request `id` with the call as it stands (`None`: it could not be read).
    Reply {
        id: u64,
        call: Option<Call>,
    },
    /// The leg is over: the flow hears it, the media closes, what the leg held is freed.
    Finish,
}

/// How the leg came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An inbound INVITE, not answered yet: answered with `answer_with`, at once or by the
    /// flow (`flow_answers`: Twilio's order, the first document is fetched while it rings).
    Inbound {
        answer_with: LocalMedia,
        flow_answers: bool,
    },
    /// Our INVITE, sent.
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaState {
    /// A port is reserved; nothing agreed yet.
    Reserved,
    /// Open; its events are still with the driver.
    Open,
    /// Open, and its events are the flow's.
    Given,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    NotStarted,
    /// Running on a ringing call, not decided yet.
    Deciding,
    /// Running on a ringing call it asked to answer; it waits for the media.
    Answering,
    /// Running on the answered call.
    Running,
    Done,
}

/// What a pending [`Action::Store`] was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Nothing more (ringing).
    Nothing,
    /// In progress: the flow starts (or gets its media).
    Answered,
    /// The final status: replies go out and the leg finishes.
    Ended,
}

/// One call leg. See the module's documentation.
#[derive(Debug)]
pub(crate) struct CallLeg {
    call: Call,
    origin: Origin,
    /// The SIP dialog was answered (ACK seen or sent), whatever the store recorded.
    answered: bool,
    media: MediaState,
    flow: FlowState,
    /// How a call its flow refused ends (Twilio's `<Reject>`: busy, or no-answer).
    refused: Option<CallStatus>,
    /// When the call's `TimeLimit` runs out, once answered.
    deadline: Option<Instant>,
    time_limit: Duration,
    /// The end request waiting for the final status (later ones are answered at once).
    ending: Option<u64>,
    /// What the store action in flight was for.
    storing: Option<Then>,
    over: bool,
    actions: VecDeque<Action>,
}

impl CallLeg {
    /// A leg for `call` with a reserved media port. An inbound leg rings or answers at once.
    pub(crate) fn new(call: Call, origin: Origin) -> CallLeg {
        let time_limit =
            Duration::from_secs(u64::try_from(call.instructions.time_limit.max(1)).unwrap_or(1));
        let mut leg = CallLeg {
            call,
            origin,
            answered: false,
            media: MediaState::Reserved,
            flow: FlowState::NotStarted,
            refused: None,
            deadline: None,
            time_limit,
            ending: None,
            storing: None,
            over: false,
            actions: VecDeque::new(),
        };
        if let Origin::Inbound {
            answer_with,
            flow_answers,
        } = origin
        {
            if flow_answers {
                leg.push(Action::Sip(SipCommand::Ring));
                leg.flow = FlowState::Deciding;
                leg.push(Action::StartFlow { ringing: true });
            } else {
                leg.push(Action::Sip(SipCommand::Answer(answer_with)));
            }
        }
        leg
    }

    /// The call as the leg last stored it.
    pub(crate) fn call(&self) -> &Call {
        &self.call
    }

    /// The leg has finished: nothing more will come out of it.
    pub(crate) fn is_over(&self) -> bool {
        self.over
    }

    fn push(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn store(&mut self, change: StatusChange, then: Then) {
        debug_assert!(self.storing.is_none(), "one store action at a time");
        self.storing = Some(then);
        self.push(Action::Store(change));
    }

    /// The next thing to do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`CallLeg::handle_timeout`] is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.filter(|_| !self.over)
    }

    /// A provisional response to our INVITE.
    pub(crate) fn handle_progress(&mut self, _now: Instant, status: u16) {
        if self.over || self.call.status() != CallStatus::Queued {
            return;
        }
        let change = StatusChange {
            to: CallStatus::Ringing,
            sip_code: None,
            cause: StatusCause::Sip { code: status },
        };
        self.store(change, Then::Nothing);
    }

    /// SDP agreed, or changed by a re-INVITE.
    pub(crate) fn handle_media(&mut self, _now: Instant, agreed: &Negotiated) {
        if self.over {
            return;
        }
        let params = stream_params(agreed);
        match self.media {
            MediaState::Reserved => {
                self.media = MediaState::Open;
                self.push(Action::OpenMedia(params));
            }
            MediaState::Open | MediaState::Given => self.push(Action::UpdateMedia(params)),
        }
    }

    /// The call is answered: the caller ACKed our 200, or the callee's 200 was ACKed.
    pub(crate) fn handle_answered(&mut self, now: Instant) {
        if self.over {
            return;
        }
        self.answered = true;
        self.deadline = Some(now + self.time_limit);
        let change = StatusChange {
            to: CallStatus::InProgress,
            sip_code: Some(200),
            cause: StatusCause::Sip { code: 200 },
        };
        self.store(change, Then::Answered);
    }

    /// The dialog is over (exactly once per call): its final status is stored, then the leg
    /// finishes.
    pub(crate) fn handle_ended(
        &mut self,
        _now: Instant,
        end: CallEnd,
        code: Option<u16>,
        by_peer: bool,
    ) {
        if self.over {
            return;
        }
        let mut status = self.refused.unwrap_or_else(|| status_of(end));
        if status == CallStatus::Completed && !self.answered {
            // answered but never confirmed (no ACK): it never got going
            status = CallStatus::Failed;
        }
        let code = code.or(match end {
            CallEnd::Answered => Some(200),
            CallEnd::Canceled | CallEnd::RingTimeout => Some(487),
            CallEnd::TransportFailure => Some(408),
            CallEnd::Rejected(c) => Some(c),
        });
        let change = StatusChange {
            to: status,
            sip_code: code,
            cause: StatusCause::Ended {
                code,
                end: format!("{end:?}"),
                by_peer,
            },
        };
        self.deadline = None;
        self.store(change, Then::Ended);
    }

    /// What the store made of the last [`Action::Store`].
    pub(crate) fn handle_stored(&mut self, _now: Instant, stored: Stored) {
        let Some(then) = self.storing.take() else {
            return;
        };
        let applied = match stored {
            Stored::Applied(call) => {
                self.call = call;
                true
            }
            Stored::Refused(current) => {
                if then == Then::Ended {
                    self.finish(current);
                    return;
                }
                // the call ended meanwhile (the API ended it while the INVITE was on its
                // way): end the leg too rather than leave it up
                if let Some(c) = current {
                    let over = c.status().is_final();
                    self.call = c;
                    if over {
                        self.push(Action::Sip(SipCommand::Hangup));
                    }
                }
                false
            }
        };
        match then {
            Then::Nothing => {}
            Then::Answered => {
                if applied
                    && self.call.status() == CallStatus::InProgress
                    && self.media == MediaState::Open
                {
                    match self.flow {
                        FlowState::Answering => {
                            self.media = MediaState::Given;
                            self.flow = FlowState::Running;
                            self.push(Action::HandMedia);
                        }
                        FlowState::NotStarted => {
                            self.media = MediaState::Given;
                            self.flow = FlowState::Running;
                            self.push(Action::StartFlow { ringing: false });
                        }
                        FlowState::Deciding | FlowState::Running | FlowState::Done => {}
                    }
                }
            }
            Then::Ended => {
                let call = self.call.clone();
                self.finish(Some(call));
            }
        }
    }

    fn finish(&mut self, call: Option<Call>) {
        if let Some(id) = self.ending.take() {
            self.push(Action::Reply { id, call });
        }
        self.over = true;
        self.push(Action::Finish);
    }

    /// The API asks to end the call (`Status=canceled` or `completed`); `id` is answered with
    /// an [`Action::Reply`] once the call has ended, or at once when there is nothing to do.
    pub(crate) fn handle_end(&mut self, _now: Instant, request: EndRequest, id: u64) {
        let answered = self.call.status() == CallStatus::InProgress;
        if self.over || (answered && request == EndRequest::Canceled) || self.ending.is_some() {
            // an answered call goes on after a cancel; a second request gets the call as it
            // stands
            let call = Some(self.call.clone());
            self.push(Action::Reply { id, call });
            return;
        }
        self.ending = Some(id);
        self.push(Action::Sip(SipCommand::Hangup));
    }

    /// The API gave the call new instructions (`Url` or `Twiml`): they go to its flow (one that
    /// has not started yet starts from the stored, already updated, call).
    pub(crate) fn handle_redirect(&mut self, _now: Instant, redirect: Redirect) {
        if !self.over {
            self.push(Action::Redirect(redirect));
        }
    }

    /// The flow's signal.
    pub(crate) fn handle_flow(&mut self, _now: Instant, signal: FlowSignal) {
        if self.over {
            return;
        }
        match signal {
            FlowSignal::Answer => {
                if let (FlowState::Deciding, Origin::Inbound { answer_with, .. }) =
                    (self.flow, self.origin)
                {
                    self.flow = FlowState::Answering;
                    self.push(Action::Sip(SipCommand::Answer(answer_with)));
                }
            }
            FlowSignal::Refuse(code) => {
                if self.flow == FlowState::Deciding {
                    self.flow = FlowState::Done;
                    self.refused = Some(refused_status(code));
                    self.push(Action::Sip(SipCommand::Reject(code)));
                }
            }
            FlowSignal::Done => {
                let refused = self.refused.is_some();
                self.flow = FlowState::Done;
                // a refusal is the flow's last word, not a hang-up
                if !refused {
                    self.push(Action::Sip(SipCommand::Hangup));
                }
            }
        }
    }

    /// A SIP command the dialog refused (the call is gone, or in a state that does not allow
    /// it). A refusal that was not sent decides nothing.
    pub(crate) fn handle_sip_refused(&mut self, _now: Instant, command: &SipCommand) {
        if let SipCommand::Reject(_) = command {
            self.refused = None;
        }
    }

    /// Time passed: the call's `TimeLimit` may be reached.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline
            && now >= d
            && !self.over
        {
            self.deadline = None;
            self.push(Action::Sip(SipCommand::Hangup));
        }
    }
}

/// What SDP agreed, as the media layer takes it.
pub(crate) fn stream_params(n: &Negotiated) -> StreamParams {
    StreamParams {
        law: match n.codec {
            Codec::Pcmu => Law::Mu,
            Codec::Pcma => Law::A,
        },
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        ptime_ms: n.ptime,
        remote: Some(n.remote).filter(|r| !r.ip().is_unspecified()),
        send: n.direction.sends() && !n.on_hold(),
    }
}

/// How a call its flow refused with SIP `code` ends (Twilio's `<Reject>`: `busy` for the
/// busy reason, `no-answer` otherwise).
fn refused_status(code: u16) -> CallStatus {
    if code == 486 {
        CallStatus::Busy
    } else {
        CallStatus::NoAnswer
    }
}

/// The status a dialog's end gives the call.
pub(crate) fn status_of(end: CallEnd) -> CallStatus {
    match callflow_sip::end_status(end) {
        callflow_sip::EndStatus::Completed => CallStatus::Completed,
        callflow_sip::EndStatus::Busy => CallStatus::Busy,
        callflow_sip::EndStatus::NoAnswer => CallStatus::NoAnswer,
        callflow_sip::EndStatus::Failed => CallStatus::Failed,
        callflow_sip::EndStatus::Canceled => CallStatus::Canceled,
    }
}
