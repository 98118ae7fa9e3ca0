//! The host side of the `callflow:plugin` worlds: the project's one place that runs `bindgen!`.
//! One module per world; each has its own copy of the shared `types` interface.

/// The `call-flow` world.
pub mod flow {
    wasmtime::component::bindgen!({ world: "call-flow", path: "../../wit", additional_derives: [serde::Serialize, serde::Deserialize] });
    pub use callflow::plugin::flow_types::*;
    pub use callflow::plugin::types::{HttpMethod, LogLevel, LogLine, Param};
}

/// The `retry-policy` world.
pub mod retry {
    wasmtime::component::bindgen!({
        world: "retry-policy",
        path: "../../wit",
        additional_derives: [serde::Serialize],
        // one set of shared types for every world
        with: { "callflow:plugin/types": super::flow::callflow::plugin::types },
    });
    pub use callflow::plugin::retry_types::*;
    pub use callflow::plugin::types::{LogLevel, LogLine};
}

/// The `recording` world.
pub mod recording {
    wasmtime::component::bindgen!({
        world: "recording",
        path: "../../wit",
        additional_derives: [serde::Serialize],
        // one set of shared types for every world
        with: { "callflow:plugin/types": super::flow::callflow::plugin::types },
    });
    pub use callflow::plugin::recording_types::*;
    pub use callflow::plugin::types::{HttpMethod, HttpRequest, LogLevel, LogLine, Param};
}

/// The `call-events` world.
pub mod events {
    wasmtime::component::bindgen!({
        world: "call-events",
        path: "../../wit",
        additional_derives: [serde::Serialize],
        // one set of shared types for every world
        with: { "callflow:plugin/types": super::flow::callflow::plugin::types },
    });
    pub use callflow::plugin::event_types::*;
    pub use callflow::plugin::types::{HttpMethod, HttpRequest, LogLevel, LogLine, Param};
}

/// The interfaces of the package that plugins import for their types only (they hold no functions).
pub const TYPE_INTERFACES: &[&str] = &[
    "callflow:plugin/types@0.1.0",
    "callflow:plugin/flow-types@0.1.0",
    "callflow:plugin/retry-types@0.1.0",
    "callflow:plugin/recording-types@0.1.0",
    "callflow:plugin/event-types@0.1.0",
];
