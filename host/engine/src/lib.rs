//! callflow's call engine: calls' status changes and their callbacks (`calls`), SIP legs,
//! media and the dispatcher (`telephony`), each call's flow plugin (`flow`), callouts and their
//! retry policies (`callouts`), call-events plugins (`events`), the webhook client every
//! outgoing HTTP request goes through and the persisted delivery outbox that never loses one,
//! the token buckets rate limits are built on (`rate`), and `prompts` (`<Play>` audio and
//! `<Say>` speech in the shared audio cache).

pub mod blobs;
pub mod callouts;
mod calls;
pub mod clock;
pub mod cluster;
mod control;
mod events;
pub mod flow;
mod leg;
mod live;
pub mod node;
mod outbox;
pub mod plugins;
pub mod prompts;
pub mod rate;
mod start;
pub mod telephony;
#[cfg(test)]
mod test_support;
pub mod webhook;

pub use calls::Engine;
pub use control::{EndRequest, EngineError, Redirect};
pub use outbox::{Backoff, Outbox, OutboxConfig};
pub use prompts::{Prompts, PromptsError};
pub use start::{EngineParts, Running, SipParts};
