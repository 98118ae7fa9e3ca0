//! The legs this node drives, by call sid, and what each leg's driver can be told: its SIP
//! dialog's events, the API's requests (end, redirect) and its flow's signals, all on the one
//! channel the driver reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use callflow_sip::ua::UaEvent;
use callflow_store::Call;
use tokio::sync::{mpsc, oneshot};

use crate::control::{EndRequest, EngineError, Redirect};
use crate::leg::FlowSignal;

/// An input for a leg's driver.
#[derive(Debug)]
pub(crate) enum LegInput {
    Sip(UaEvent),
    /// End the call as asked; the answer is the call once it has ended (or as it stands).
    End(EndRequest, oneshot::Sender<Result<Call, EngineError>>),
    /// New instructions for the call's flow (`POST Calls/{Sid}.json` with `Url` or `Twiml`).
    Redirect(Redirect),
    Flow(FlowSignal),
}

/// Live legs by call sid: the channel to each one's driver.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveLegs {
    legs: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<LegInput>>>>,
}

impl LiveLegs {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<LegInput>>> {
        self.legs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the leg of `sid`; what is sent to it waits until the driver reads.
    pub(crate) fn register(&self, sid: &str, to_leg: mpsc::UnboundedSender<LegInput>) {
        self.lock().insert(sid.to_owned(), to_leg);
    }

    pub(crate) fn unregister(&self, sid: &str) {
        self.lock().remove(sid);
    }

    pub(crate) fn contains(&self, sid: &str) -> bool {
        self.lock().contains_key(sid)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Hands `input` to the leg of `sid`; false when no leg drives that call here.
    pub(crate) fn send(&self, sid: &str, input: LegInput) -> bool {
        let to_leg = self.lock().get(sid).cloned();
        to_leg.is_some_and(|l| l.send(input).is_ok())
    }
}
