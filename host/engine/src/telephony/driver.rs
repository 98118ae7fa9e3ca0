//! The task that drives one call leg: it reads the leg's one channel (SIP events, the API's
//! requests, its flow's signals) and its timer, feeds the pure [`CallLeg`], and performs what
//! the leg asks, in order: SIP commands, opening media, status changes (awaited, so they are
//! stored in the order they happened), starting and feeding the flow, answering the API. It
//! owns the leg's I/O: the dialog key, the media and its events, the flow's task.

use std::collections::HashMap;
use std::time::Instant;

use callflow_media::worker::{CallMedia, MediaEvent};
use callflow_sip::ua::UaEvent;
use callflow_store::CallLogEntry;
use tokio::sync::{mpsc, oneshot};

use super::{FLOW_GRACE, FlowStart, LegLink, LegSetup, Telephony, ToFlow};
use crate::control::EngineError;
use crate::leg::{Action, CallLeg, FlowSignal, SipCommand, Stored};
use crate::live::LegInput;

impl Telephony {
    /// Drives `leg` until it is over, then frees what it held.
    pub(crate) async fn drive(&self, mut leg: CallLeg, setup: LegSetup) {
        let LegSetup {
            key,
            trunk,
            reservation,
            near,
            flow,
            mut inbox,
            to_leg,
        } = setup;
        let mut reservation = Some(reservation);
        let mut media: Option<CallMedia> = None;
        let mut media_events: Option<mpsc::UnboundedReceiver<MediaEvent>> = None;
        let (to_flow, from_leg) = mpsc::unbounded_channel();
        // created now, so what the leg hands the flow before it starts waits for it
        let mut from_leg = Some(from_leg);
        let mut flow_task = None;
        let mut replies: HashMap<u64, oneshot::Sender<Result<_, EngineError>>> = HashMap::new();
        let mut next_reply = 0u64;
        let sid = leg.call().sid.clone();
        'life: loop {
            while let Some(action) = leg.poll_action() {
                match action {
                    Action::Sip(cmd) => {
                        let sip = &self.inner.sip;
                        let done = match &cmd {
                            SipCommand::Ring => sip.ring(key).await,
                            SipCommand::Answer(local) => sip.answer(key, *local).await,
                            SipCommand::Reject(code) => sip.reject(key, *code).await,
                            SipCommand::Hangup => sip.hangup(key).await,
                        };
                        if let Err(e) = done {
                            tracing::debug!(call = %sid, error = %e, ?cmd, "SIP command refused");
                            leg.handle_sip_refused(Instant::now(), &cmd);
                        }
                    }
                    Action::OpenMedia(params) => {
                        if let Some(r) = reservation.take() {
                            let (m, events) =
                                self.inner.media.media.open_near(r, params, near.as_ref());
                            media = Some(m);
                            media_events = Some(events);
                        }
                    }
                    Action::UpdateMedia(params) => {
                        if let Some(m) = &media {
                            m.update(params);
                        }
                    }
                    Action::Store(change) => {
                        let call = leg.call().clone();
                        let stored = match self
                            .set_status(&call, change.to, change.sip_code, change.cause)
                            .await
                        {
                            Some(c) => Stored::Applied(c),
                            None => Stored::Refused(
                                self.store()
                                    .call(&call.account_sid, &call.sid)
                                    .await
                                    .ok()
                                    .flatten(),
                            ),
                        };
                        leg.handle_stored(Instant::now(), stored);
                    }
                    Action::StartFlow { ringing } => {
                        let (m, events) = if ringing {
                            (CallMedia::detached(), mpsc::unbounded_channel().1)
                        } else {
                            match (media.clone(), media_events.take()) {
                                (Some(m), Some(e)) => (m, e),
                                _ => continue,
                            }
                        };
                        let Some(from_leg) = from_leg.take() else {
                            continue;
                        };
                        let start = FlowStart {
                            call: leg.call().clone(),
                            media: m,
                            events,
                            leg: LegLink {
                                to_leg: to_leg.clone(),
                                from_leg,
                                held: Default::default(),
                                ringing,
                            },
                            dialer: self.dialer(),
                        };
                        let run = (flow.as_ref().unwrap_or(&self.inner.media.flow))(start);
                        let done = to_leg.clone();
                        flow_task = Some(tokio::spawn(async move {
                            run.await;
                            let _ = done.send(LegInput::Flow(FlowSignal::Done));
                        }));
                    }
                    Action::HandMedia => {
                        if let (Some(m), Some(e)) = (media.clone(), media_events.take()) {
                            let _ = to_flow.send(ToFlow::Answered(m, e));
                        }
                    }
                    Action::Redirect(r) => {
                        let _ = to_flow.send(ToFlow::Redirect(r));
                    }
                    Action::Reply { id, call } => {
                        if let Some(tx) = replies.remove(&id) {
                            let _ = tx.send(call.ok_or(EngineError::NotFound));
                        }
                    }
                    Action::Finish => {
                        debug_assert!(leg.is_over());
                        break 'life;
                    }
                }
            }
            let timer = leg.poll_timeout();
            let input = tokio::select! {
                input = inbox.recv() => input,
                () = sleep_until(timer) => {
                    leg.handle_timeout(Instant::now());
                    continue;
                }
            };
            let now = Instant::now();
            match input {
                // the leg's own handle is kept here: the channel never closes under it
                None => break,
                Some(LegInput::Sip(ev)) => match ev {
                    UaEvent::Progress { status, .. } => leg.handle_progress(now, status),
                    UaEvent::Media { media: agreed, .. } => leg.handle_media(now, &agreed),
                    UaEvent::Answered { .. } => leg.handle_answered(now),
                    UaEvent::Dialog { dialog, .. } => match serde_json::to_value(&*dialog) {
                        Ok(d) => self.inner.engine.store.log_call_event(
                            &sid,
                            crate::clock::now_ms(),
                            &CallLogEntry::SipDialog(d),
                        ),
                        Err(e) => tracing::warn!(call = %sid, error = %e, "a dialog not kept"),
                    },
                    UaEvent::Ended {
                        end, code, by_peer, ..
                    } => leg.handle_ended(now, end, code, by_peer),
                    UaEvent::Incoming(_) => {}
                },
                Some(LegInput::End(request, reply)) => {
                    next_reply += 1;
                    replies.insert(next_reply, reply);
                    leg.handle_end(now, request, next_reply);
                }
                Some(LegInput::Redirect(r)) => leg.handle_redirect(now, r),
                Some(LegInput::Flow(signal)) => leg.handle_flow(now, signal),
            }
        }
        // The flow hears that the call is over (its link closes) and has a moment to tell its
        // plugin; one busy elsewhere (a slow fetch) is dropped.
        drop(to_flow);
        if let Some(f) = flow_task {
            let abort = f.abort_handle();
            if tokio::time::timeout(FLOW_GRACE, f).await.is_err() {
                abort.abort();
            }
        }
        drop(media);
        self.inner.engine.live.unregister(&sid);
        self.unregister_route(key);
        self.release_channel(trunk.as_deref());
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
