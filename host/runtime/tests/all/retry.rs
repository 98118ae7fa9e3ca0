//! The built-in retry policy (`builtin::RETRY`, `plugins/retry`) in the real runtime: its
//! defaults, calling hours in the participant's time zone (the compiled-in time-zone database
//! works inside the sandbox), terminal SIP codes and a bad configuration.

use std::sync::Arc;

use callflow_runtime::retry::{Attempt, Decision, RetryContext, RetryDecision};
use callflow_runtime::{Runtime, World, builtin};

use super::{roomy, runtime};

/// 2027-03-10, a Wednesday, 10:00 UTC (05:00 in New York).
const WED_10: i64 = 1_804_672_800_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// Every attempt rang for 30 s; the last ended at `now`.
fn ctx(config: &str, statuses: &[(&str, Option<u16>)], now: i64) -> RetryContext {
    let attempts = statuses
        .iter()
        .enumerate()
        .map(|(i, (status, sip_code))| {
            let ended_ms = now - (statuses.len() - 1 - i) as i64 * HOUR;
            Attempt {
                status: (*status).into(),
                sip_code: *sip_code,
                started_ms: ended_ms - 30_000,
                ended_ms,
                duration_s: 0,
            }
        })
        .collect();
    RetryContext {
        account_sid: "AC00000000000000000000000000000001".into(),
        callout_id: Some("CO00000000000000000000000000000001".into()),
        participant_id: Some("PA00000000000000000000000000000001".into()),
        to: "+15558675310".into(),
        time_zone: None,
        now_ms: now,
        seed: 7,
        config: config.into(),
        attempts,
        metadata: "{}".into(),
    }
}

async fn decide(rt: &Arc<Runtime>, ctx: RetryContext) -> RetryDecision {
    let plugin = rt.load(builtin::RETRY).unwrap();
    assert_eq!(plugin.world, World::RetryPolicy);
    rt.decide_retry(plugin, ctx, roomy()).await.unwrap()
}

#[tokio::test]
async fn the_builtin_retry_policy_decides_in_the_sandbox() {
    let rt = runtime();
    assert_eq!(builtin::get("retry"), Some(builtin::RETRY));
    assert!(builtin::sha256("retry").is_some());

    // the defaults: busy is called again 15 minutes later
    let d = decide(&rt, ctx("{}", &[("busy", Some(486))], WED_10)).await;
    assert!(
        matches!(d.decision, Decision::RetryAt(t) if t == WED_10 + 15 * MIN),
        "{d:?}"
    );
    assert_eq!(d.logs.len(), 1);
    assert_eq!(
        d.logs[0].message,
        "attempt 1 of 3 ended busy (SIP 486): retry after the fixed delay of 15 min, \
         at 2027-03-10T10:15:00Z"
    );

    // in the participant's time zone, 05:15 is before the window: 08:00 EST, 13:00 UTC
    let config = r#"{"calling_hours": {"start": "08:00", "end": "20:00",
        "time_zone": "Africa/Nairobi"}}"#;
    let mut c = ctx(config, &[("no-answer", None)], WED_10);
    c.time_zone = Some("America/New_York".into());
    let d = decide(&rt, c).await;
    assert!(
        matches!(d.decision, Decision::RetryAt(t) if t == WED_10 + 3 * HOUR),
        "{d:?}"
    );
    assert_eq!(
        d.logs[1].message,
        "calling hours 08:00-20:00 every day in America/New_York (the participant's time zone): \
         closed at Wed 2027-03-10 05:15 EST, moved to Wed 2027-03-10 08:00 EST \
         (2027-03-10T13:00:00Z)"
    );

    let d = decide(&rt, ctx("{}", &[("failed", Some(404))], WED_10)).await;
    assert!(
        matches!(&d.decision, Decision::GiveUp(r) if r == "SIP 404 is terminal"),
        "{d:?}"
    );

    let three = [("busy", None), ("no-answer", None), ("busy", None)];
    let d = decide(&rt, ctx("{}", &three, WED_10)).await;
    assert!(
        matches!(&d.decision, Decision::GiveUp(r) if r == "max attempts (3) reached"),
        "{d:?}"
    );

    let d = decide(
        &rt,
        ctx(r#"{"max_attempts": 0}"#, &[("busy", None)], WED_10),
    )
    .await;
    assert!(
        matches!(&d.decision, Decision::GiveUp(r)
            if r == "invalid retry configuration: max_attempts is between 1 and 50, not 0"),
        "{d:?}"
    );
}
