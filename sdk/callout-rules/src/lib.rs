//! The rules of callouts that guests and the host share, pure (no I/O, no clock: time is an
//! argument) and building for `wasm32-wasip2` as well as natively. The built-in retry plugin
//! (`plugins/retry`) decides with them; the engine's scheduler applies a callout's calling hours
//! with them before every attempt, and the API checks a callout's `CallingHours`, `TimeZone`,
//! participants' time zones and built-in `RetryConfig` with the same parsers. It does not depend
//! on `callflow-sdk` (the SDK re-exports [`config_text`] from here), so the host links no guest
//! export shim.
//!
//! - [`hours`]: calling hours across time zones and daylight-saving changes, their JSON form, and
//!   IANA time zone names (`chrono-tz`, the database compiled in).
//! - [`config`]: the built-in retry policy's configuration, parsed and checked.
//! - [`delay`]: its fixed and exponential delays, jitter drawn from a seed.

#![warn(missing_docs)]

pub mod config;
pub mod delay;
pub mod hours;

/// A binding's configuration text, checked before it is parsed: at most `max_bytes`, and
/// blank text reads as `{}` (a binding without configuration). The error says why.
pub fn config_text(text: &str, max_bytes: usize) -> Result<&str, String> {
    if text.len() > max_bytes {
        return Err(format!(
            "the configuration is {} bytes, over the limit of {max_bytes}",
            text.len()
        ));
    }
    Ok(if text.trim().is_empty() { "{}" } else { text })
}
