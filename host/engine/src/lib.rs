//! callflow's call engine.
//!
//! Today it owns the parts of a call's life that need no SIP or media: ending queued calls, status
//! callbacks, the webhook client every outgoing HTTP request goes through, the persisted delivery
//! outbox, the token bucket rate limits are built on (`rate`), and `prompts`: `<Play>` audio
//! fetched through the webhook client and `<Say>` speech, both kept in the shared audio cache.
//! The call state machine, the dispatcher and plugin execution join it as the SIP, media and
//! plugin layers land.

pub mod callouts;
mod calls;
pub mod clock;
pub mod flow;
mod outbox;
pub mod prompts;
pub mod rate;
pub mod telephony;
pub mod webhook;

pub use calls::{EndRequest, Engine, EngineError, Redirect};
pub use outbox::{Backoff, Outbox, OutboxConfig};
pub use prompts::{Prompts, PromptsError};
