//! The webhook client shared by everything that calls out over HTTP: signing, egress policy,
//! timeouts and bounded responses.

mod client;
mod egress;
mod signature;

pub use client::{
    Method, WebhookClient, WebhookConfig, WebhookError, WebhookRequest, WebhookResponse,
};
pub use egress::EgressPolicy;
pub use signature::{sign, signed_url};
