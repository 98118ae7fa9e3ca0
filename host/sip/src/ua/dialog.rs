//! A call's dialog as data, so that another run of the process (after a crash or restart) or
//! another node can end the call at the far end: the peer of an answered call gets a BYE, the
//! callee of an outbound call still ringing gets a CANCEL. The user agent reports a call's
//! [`Dialog`] ([`UaEvent::Dialog`](super::UaEvent::Dialog)) when its INVITE is sent and again
//! when it is answered; the engine keeps the latest, and [`UserAgent::end_left`] ends it.

use std::net::SocketAddr;
use std::time::Instant;

use rsip::SipMessage;
use rsip::common::Transport;
use serde::{Deserialize, Serialize};

use super::{Call, CallKey, Phase, UaError, UserAgent, msg, transport_name};
use crate::status::CallEnd;

/// What ending a call needs, once its process is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    /// The peer's tag; `None` while our INVITE has no final response.
    pub remote_tag: Option<String>,
    /// Our name-addr and the peer's, without tags.
    pub local_uri: String,
    pub remote_uri: String,
    /// Where in-dialog requests go (the peer's Contact), and the route set.
    pub remote_target: String,
    pub route_set: Vec<String>,
    /// Where the dialog's messages came from (or our INVITE went).
    pub peer: SocketAddr,
    /// `UDP`, `TCP` or `TLS`.
    pub transport: String,
    /// The last CSeq we used in the dialog.
    pub local_cseq: u32,
    /// Our INVITE as sent, while it has no final response: what a CANCEL copies (RFC 3261
    /// §9.1). `None` once the call is answered (a BYE ends it then).
    pub invite: Option<String>,
}

impl Call {
    /// This call's dialog as it stands.
    pub(super) fn dialog(&self) -> Dialog {
        Dialog {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone(),
            local_uri: self.local_uri.clone(),
            remote_uri: self.remote_uri.clone(),
            remote_target: self.remote_target.clone(),
            route_set: self.route_set.clone(),
            peer: self.peer,
            transport: transport_name(self.transport).to_owned(),
            local_cseq: self.local_cseq,
            invite: match self.phase {
                Phase::Inviting => self.invite.as_ref().map(|r| r.to_string()),
                _ => None,
            },
        }
    }
}

/// In-dialog requests of a dialog left by an earlier run start this far above the CSeq it
/// recorded: requests it sent after recording (a re-INVITE) must not be outnumbered.
const CSEQ_MARGIN: u32 = 100;

impl UserAgent {
    /// Ends a call an earlier run (or another node) left: a BYE for an answered dialog, a
    /// CANCEL for an INVITE still without a final response. The call gets a key of this user
    /// agent and ends like any other (one [`UaEvent::Ended`](super::UaEvent::Ended));
    /// responses to the BYE or CANCEL, and the INVITE's final response (ACKed), are absorbed.
    pub fn end_left(&mut self, now: Instant, d: Dialog) -> Result<CallKey, UaError> {
        let transport = match d.transport.as_str() {
            "TCP" => Transport::Tcp,
            "TLS" => Transport::Tls,
            "UDP" => Transport::Udp,
            other => return Err(UaError::Uri(format!("transport {other}"))),
        };
        let invite = match (&d.invite, &d.remote_tag) {
            (Some(text), None) => match crate::parse(text.as_bytes()) {
                Ok(SipMessage::Request(r)) => Some(r),
                _ => return Err(UaError::Uri("the INVITE left does not parse".into())),
            },
            (None, Some(_)) => None,
            _ => {
                return Err(UaError::Uri(
                    "neither an INVITE nor an answered dialog".into(),
                ));
            }
        };
        if !msg::usable_target(&d.remote_target) {
            return Err(UaError::Uri(d.remote_target));
        }
        let key = self.new_call_key();
        let ringing = invite.is_some();
        let phase = if ringing {
            Phase::Inviting
        } else {
            Phase::Confirmed
        };
        let call = Call {
            call_id: d.call_id,
            local_tag: d.local_tag,
            remote_tag: d.remote_tag,
            local_uri: d.local_uri,
            remote_uri: d.remote_uri,
            remote_target: d.remote_target,
            route_set: d.route_set,
            local_cseq: d.local_cseq.saturating_add(CSEQ_MARGIN),
            invite,
            // the INVITE was sent by the earlier run: whether it saw a provisional response is
            // not known, and a CANCEL before one is merely early (§9.1), never wrong
            provisional: true,
            ..Call::fresh(true, phase, d.peer, transport)
        };
        self.dialogs
            .insert((call.call_id.clone(), call.local_tag.clone()), key);
        self.calls.insert(key, call);
        self.live += 1;
        if ringing {
            self.cancel(now, key, CallEnd::Canceled)?;
        } else {
            self.hangup(now, key)?;
        }
        Ok(key)
    }
}
