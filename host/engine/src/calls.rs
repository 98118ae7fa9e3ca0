//! Call control that needs no SIP yet: ending calls on request, with the status callbacks that
//! a final status triggers.

use std::sync::Arc;
use std::time::Duration;

use callflow_store::{Call, CallStatus, NewDelivery, StatusCause, Store, StoreError, Transition};

use crate::control::{EndRequest, EngineError, Redirect};
use crate::node::Share;
use tokio::sync::{Notify, oneshot};

use crate::clock::rfc2822;
use crate::events;
use crate::live::{LegInput, LiveLegs};
use crate::outbox::Outbox;

#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) store: Store,
    outbox: Outbox,
    /// Calls a SIP leg is working on: requests to end them go to that leg.
    pub(crate) live: LiveLegs,
    /// Wakes the outbound dispatcher when calls are queued.
    pub(crate) dispatch: Arc<Notify>,
    /// Wakes the callout scheduler's claims when a callout starts, resumes or gains
    /// participants, or an attempt ends (a slot frees up).
    pub(crate) callouts: Arc<Notify>,
    /// Wakes the callout scheduler's retry decisions when an attempt ends.
    pub(crate) settle: Arc<Notify>,
    /// The node this engine runs as: the calls it receives or sends are its own.
    pub(crate) node: Arc<str>,
    /// Its part of the cluster's limits (the whole of them alone).
    share: Arc<std::sync::Mutex<Share>>,
}

impl Engine {
    /// The engine of node `outbox.node()` (the outbox claims deliveries for the same node).
    pub fn new(store: Store, outbox: Outbox) -> Self {
        Engine {
            store,
            outbox: outbox.clone(),
            live: LiveLegs::default(),
            dispatch: Arc::new(Notify::new()),
            callouts: Arc::new(Notify::new()),
            settle: Arc::new(Notify::new()),
            node: outbox.node(),
            share: Arc::new(std::sync::Mutex::new(Share::ALONE)),
        }
    }

    /// The name of the node this engine runs as.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// This node's part of the cluster's limits now.
    pub fn share(&self) -> Share {
        *self.share.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets this node's part of the limits; true if it changed.
    pub(crate) fn set_share(&self, share: Share) -> bool {
        let mut s = self.share.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *s, share) != share
    }

    /// Tells the callout scheduler that a callout started or resumed, or gained participants.
    pub fn callouts_changed(&self) {
        self.callouts.notify_one();
        self.settle.notify_one();
        // a resumed callout's held attempts can go out
        self.dispatch.notify_one();
    }

    /// Tells the outbound dispatcher that calls were queued.
    pub fn calls_queued(&self) {
        self.dispatch.notify_one();
    }

    /// Calls with a SIP leg in progress.
    pub fn live_calls(&self) -> usize {
        self.live.len()
    }

    /// Hands new instructions to a live call's flow; false when no leg is driving the call
    /// here (a queued call simply uses its updated Url or Twiml when it is answered).
    pub fn redirect_call(&self, sid: &str, redirect: Redirect) -> bool {
        self.live.send(sid, LegInput::Redirect(redirect))
    }

    /// Ends a call as asked. A call that was never answered ends `canceled` either way (Twilio's
    /// rule: unanswered calls never complete); an answered one completes on `Completed` and is left
    /// alone on `Canceled`.
    pub async fn end_call(
        &self,
        account: &str,
        sid: &str,
        req: EndRequest,
        now: i64,
    ) -> Result<Call, EngineError> {
        let call = self
            .store
            .call(account, sid)
            .await?
            .ok_or(EngineError::NotFound)?;
        let status = call.status();
        if status.is_final() {
            return Err(EngineError::NotLive(status));
        }
        // A call with a SIP leg is ended by its leg (CANCEL or BYE), which records the outcome.
        if self.live.contains(sid) {
            let (tx, rx) = oneshot::channel();
            if self.live.send(sid, LegInput::End(req, tx))
                && let Ok(Ok(r)) = tokio::time::timeout(END_WAIT, rx).await
            {
                return r;
            }
            // The leg ended meanwhile or did not answer in time: report what is stored.
            return self
                .store
                .call(account, sid)
                .await?
                .ok_or(EngineError::NotFound);
        }
        let to = match (status, req) {
            (CallStatus::InProgress, EndRequest::Canceled) => return Ok(call),
            (CallStatus::InProgress, EndRequest::Completed) => CallStatus::Completed,
            _ => CallStatus::Canceled,
        };
        let cause = StatusCause::Api {
            requested: format!("{req:?}"),
        };
        self.transition(
            &call,
            Transition {
                to,
                at: now,
                sip_response_code: None,
                answered_by: None,
                cause,
            },
        )
        .await
    }

    /// Wakes the outbox after rows were stored with some other change.
    pub(crate) fn wake_outbox(&self) {
        self.outbox.wake();
    }

    /// Stores `rows` in the outbox (a row whose idempotency key was used is skipped) and wakes
    /// it.
    pub(crate) async fn enqueue(&self, rows: &[NewDelivery], now: i64) -> Result<(), StoreError> {
        for row in rows {
            self.store.enqueue_delivery(row, now).await?;
        }
        self.outbox.wake();
        Ok(())
    }

    /// Applies a status change with its status callback, atomically, and wakes the outbox.
    pub(crate) async fn transition(&self, call: &Call, t: Transition) -> Result<Call, EngineError> {
        // Twilio's SequenceNumber counts this call's earlier callbacks; no callback, no count.
        let wanted = call.instructions.wants_callback(t.to);
        let sequence = if wanted {
            self.store
                .call_deliveries(&call.sid)
                .await?
                .iter()
                .filter(|d| d.webhook.kind == STATUS_CALLBACK)
                .count()
        } else {
            0
        };
        let enqueues = wanted || events::has_plugin(call);
        let at = t.at;
        let stored = if enqueues {
            self.store
                .transition_call(&call.account_sid, &call.sid, &t, move |stored| {
                    status_callback(stored, sequence, at)
                        .into_iter()
                        .chain(events::call_event(stored, at))
                        .collect()
                })
                .await
        } else {
            self.store
                .transition_call_quietly(&call.account_sid, &call.sid, &t)
                .await
        };
        let updated = match stored {
            Ok(c) => c,
            // lost a race with another change: report the status it has now
            Err(StoreError::Conflict(_)) => {
                let now = self
                    .store
                    .call(&call.account_sid, &call.sid)
                    .await?
                    .ok_or(EngineError::NotFound)?;
                return Err(EngineError::NotLive(now.status()));
            }
            Err(e) => return Err(e.into()),
        };
        // a callback or an event may have been enqueued: the outbox need not wait for its poll
        // (a wake-up costs it a claim and a look at the queue, so only then)
        if enqueues {
            self.outbox.wake();
        }
        if updated.participant_sid.is_some() && updated.status().is_final() {
            // the attempt's participant now awaits its retry policy
            self.callouts_changed();
        }
        Ok(updated)
    }
}

/// How long `end_call` waits for a SIP leg to confirm the end (CANCEL and BYE are answered
/// in milliseconds; a peer that never answers is given up on by the transaction layer).
const END_WAIT: Duration = Duration::from_secs(5);

const STATUS_CALLBACK: &str = "status-callback";

/// The status callback for `call` in its current status, if the call asked for that event.
/// `sequence` counts the callbacks already sent for this call (Twilio's `SequenceNumber`).
pub(crate) fn status_callback(call: &Call, sequence: usize, now: i64) -> Option<NewDelivery> {
    let url = call.instructions.status_callback.as_ref()?;
    if !call.instructions.wants_callback(call.status()) {
        return None;
    }
    let mut params: Vec<(String, String)> = vec![
        ("AccountSid".into(), call.account_sid.clone()),
        ("ApiVersion".into(), "2010-04-01".into()),
        ("CallSid".into(), call.sid.clone()),
        ("CallStatus".into(), call.status().as_str().into()),
        ("Called".into(), call.to_number.clone()),
        ("Caller".into(), call.from_number.clone()),
        ("Direction".into(), call.direction.as_str().into()),
        ("From".into(), call.from_number.clone()),
        ("To".into(), call.to_number.clone()),
        ("CallbackSource".into(), "call-progress-events".into()),
        ("SequenceNumber".into(), sequence.to_string()),
        ("Timestamp".into(), rfc2822(now)),
    ];
    if let Some(parent) = &call.parent_call_sid {
        params.push(("ParentCallSid".into(), parent.clone()));
    }
    if call.status().is_final() {
        params.push((
            "CallDuration".into(),
            call.duration.unwrap_or(0).to_string(),
        ));
    }
    if let Some(code) = call.sip_response_code {
        params.push(("SipResponseCode".into(), code.to_string()));
    }
    if let Some(answered_by) = &call.answered_by {
        params.push(("AnsweredBy".into(), answered_by.clone()));
    }
    Some(NewDelivery {
        account_sid: call.account_sid.clone(),
        call_sid: Some(call.sid.clone()),
        kind: STATUS_CALLBACK.into(),
        url: url.clone(),
        method: call.instructions.status_callback_method.as_str().into(),
        params,
        ..NewDelivery::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::call;

    #[test]
    fn only_requested_events_produce_callbacks() {
        assert!(status_callback(&call(CallStatus::Ringing, "completed"), 0, 0).is_none());
        assert!(status_callback(&call(CallStatus::Ringing, "initiated ringing"), 0, 0).is_some());
        assert!(status_callback(&call(CallStatus::Busy, "completed"), 0, 0).is_some());
        let mut no_url = call(CallStatus::Busy, "completed");
        no_url.instructions.status_callback = None;
        assert!(status_callback(&no_url, 0, 0).is_none());
    }

    #[test]
    fn final_callback_carries_twilios_parameters() {
        let d =
            status_callback(&call(CallStatus::Busy, "completed"), 2, 1_283_286_988_000).unwrap();
        assert_eq!(
            (d.url.as_str(), d.method.as_str()),
            ("http://example.com/cb?x=1", "GET")
        );
        let get = |k: &str| {
            d.params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("CallStatus"), Some("busy"));
        assert_eq!(get("SequenceNumber"), Some("2"));
        assert_eq!(get("CallDuration"), Some("61"));
        assert_eq!(get("SipResponseCode"), Some("486"));
        assert_eq!(get("Timestamp"), Some("Tue, 31 Aug 2010 20:36:28 +0000"));
        assert_eq!(get("CallbackSource"), Some("call-progress-events"));
    }
}
