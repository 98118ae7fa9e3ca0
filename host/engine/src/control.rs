//! What the API may ask of a call, and what the engine answers when it cannot: the words the
//! engine's modules and its callers share (a leaf: it knows only the store's types).

use callflow_store::{CallStatus, HttpMethod, StoreError};

/// What `POST Calls/{Sid}.json` with `Status=…` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndRequest {
    /// Stop a call that has not been answered; an answered call goes on.
    Canceled,
    /// Stop the call whatever its state.
    Completed,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("call not found")]
    NotFound,
    #[error("call is not live (it is {0})")]
    NotLive(CallStatus),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => EngineError::NotFound,
            e => EngineError::Store(e),
        }
    }
}

/// New instructions for a live call: a document, or a URL to fetch it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub url: Option<String>,
    pub method: HttpMethod,
    pub twiml: Option<String>,
}
