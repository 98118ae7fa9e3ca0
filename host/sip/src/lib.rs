//! callflow's SIP layer, the pure part: message parsing on rsip with stateless error responses,
//! digest authentication, SDP offer/answer, the mapping of call outcomes to Twilio statuses and
//! RFC 3261 transactions as a sans-IO state machine ([`transaction::Transactions`]).
//! No sockets, no clock, no randomness: the dialog core and the tokio driver build on these.
//!
//! rsip (0.4.0, the last release) provides the message types. What it gets wrong is handled
//! here before it sees a message: compact header names, folded lines, bare LF line ends,
//! whitespace around `:` and inside Via/From/To parameters, a status line without reason
//! phrase, Content-Length (which it ignores), and the `SHA-256` digest token. What cannot be
//! worked around from outside: IPv6 addresses in URIs (rsip refuses them) and `tel:` URIs
//! (misread), and rsip renders bodies through `String::from_utf8_lossy`.

pub mod digest;
pub mod driver;
mod message;
mod reject;
#[cfg(test)]
mod robustness;
mod scan;
pub mod sdp;
mod status;
mod tcp;
pub mod transaction;
pub mod trunk;
pub mod ua;

pub use message::{Frame, MAX_MESSAGE_BYTES, ParseError, frame, parse};
pub use reject::{bad_request, error_response};
pub use rsip;
pub use status::{CallEnd, EndStatus, end_status};
