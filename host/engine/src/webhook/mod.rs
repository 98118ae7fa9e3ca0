//! The webhook client shared by everything that calls out over HTTP: signing, egress policy,
//! timeouts and bounded responses.

mod client;
mod egress;
mod signature;

pub use client::{
    DEFAULT_MAX_MEDIA_BYTES, FetchError, Fetched, Method, WebhookClient, WebhookConfig,
    WebhookError, WebhookRequest, WebhookResponse,
};
pub use egress::EgressPolicy;
pub use signature::{sign, signed_url};
