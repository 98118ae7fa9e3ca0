//! A recording plugin written against the raw bindings (not the SDK's checked `run`), answering
//! with a keep range past the end of the audio: the host must refuse it.

use callflow_sdk::PluginError;
use callflow_sdk::recording::{Action, Keep, RecordingContext, RecordingPlan};

/// Keeps samples that do not exist.
pub struct BadKeep;

impl callflow_sdk::recording::wit::Guest for BadKeep {
    fn process(_ctx: RecordingContext, audio: Vec<i16>) -> Result<RecordingPlan, PluginError> {
        let end = u32::try_from(audio.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1_000);
        Ok(RecordingPlan {
            action: Action::Keep(Keep { start: 0, end }),
            notify: Vec::new(),
            logs: Vec::new(),
        })
    }
}

callflow_sdk::recording::wit::__export_recording!(BadKeep with_types_in callflow_sdk::recording::wit);
