//! Plugin fairness: how long a well-behaved account's invocations take, through the scheduler
//! and its threads (the path calls use), alone and while another account keeps 1, 4 or 32
//! abusive invocations going at once: plugins that loop until their 10 ms deadline, or that
//! try to sleep (an hour each; they fail at once as a wait).
//!
//! `cargo bench -p callflow-runtime --bench fairness` prints p50/p99 of the good account's
//! invocations of an uploaded plugin (the menu example) and of a built-in (`hello`), and their
//! p99 as a ratio of the p99 alone, measured in the same run. Every loop is bounded in count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callflow_runtime::flow::{CallContext, FlowEvent, GatherResult, HttpMethod};
use callflow_runtime::{InvokeError, Limits, Plugin, Runtime, RuntimeConfig};

const MENU_WASM: &str = env!("CALLFLOW_EXAMPLE_MENU");
/// Invocations of the good account per measurement.
const N: usize = 20_000;

fn ctx(account: &str, config: &str) -> CallContext {
    CallContext {
        account_sid: account.into(),
        call_sid: "CA00000000000000000000000000000001".into(),
        parent_call_sid: None,
        direction: "outbound-api".into(),
        from: "+15005550006".into(),
        to: "+15558675310".into(),
        status: "in-progress".into(),
        answered_by: None,
        now_ms: 1_800_000_000_000,
        seed: 7,
        config: config.into(),
        url: None,
        method: HttpMethod::Post,
        fallback_url: None,
        fallback_method: HttpMethod::Post,
        document: None,
    }
}

const GOOD: &str = "AC00000000000000000000000000000001";
const EVIL: &str = "AC00000000000000000000000000000002";
const MENU_CONFIG: &str =
    r#"{"greeting": "Welcome.", "options": {"1": {"label": "levels", "say": "Normal."}}}"#;

struct Setup {
    rt: Arc<Runtime>,
    menu: Arc<Plugin>,
    hello: Arc<Plugin>,
    abuse: Arc<Plugin>,
}

/// The good account's invocation latencies, sorted: `plugin` `N` times, one after another.
async fn good(s: &Setup, plugin: &Arc<Plugin>) -> Vec<Duration> {
    let event = FlowEvent::Gathered(GatherResult {
        digits: "1".into(),
        timed_out: false,
    });
    let mut v = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        s.rt.call_flow(
            Arc::clone(plugin),
            ctx(GOOD, MENU_CONFIG),
            Vec::new(),
            event.clone(),
            Limits::default(),
        )
        .await
        .expect("the good account's invocation");
        v.push(t.elapsed());
    }
    v.sort();
    v
}

/// `good` while the evil account keeps `concurrency` invocations of `abuse` going; also how
/// many abusive invocations ran, and how they ended.
async fn beside(
    s: &Setup,
    plugin: &Arc<Plugin>,
    abuse: &str,
    concurrency: usize,
) -> (Vec<Duration>, String) {
    let stop = Arc::new(AtomicBool::new(false));
    let (timeouts, blocked, refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let config = format!(r#"{{"abuse":"{abuse}","secs":3600}}"#);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (rt, plugin, stop) = (Arc::clone(&s.rt), Arc::clone(&s.abuse), Arc::clone(&stop));
        let (t, b, r, config) = (
            Arc::clone(&timeouts),
            Arc::clone(&blocked),
            Arc::clone(&refused),
            config.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // bounded: it ends when the measurement does, or after a million tries
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r_ = rt
                    .call_flow(
                        Arc::clone(&plugin),
                        ctx(EVIL, &config),
                        Vec::new(),
                        FlowEvent::Start,
                        Limits::default(),
                    )
                    .await;
                match r_ {
                    Err(InvokeError::Timeout { .. }) => t.fetch_add(1, Ordering::Relaxed),
                    Err(InvokeError::Blocked(_)) => b.fetch_add(1, Ordering::Relaxed),
                    Err(InvokeError::Overloaded(_)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        r.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => 0,
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let v = good(s, plugin).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let what = format!(
        "{} deadline hits, {} waits refused",
        timeouts.load(Ordering::Relaxed),
        blocked.load(Ordering::Relaxed)
    );
    (v, what)
}

fn at(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let rt = Arc::new(Runtime::new(RuntimeConfig::default()).expect("runtime"));
    let s = Setup {
        menu: rt
            .load(&std::fs::read(MENU_WASM).expect("menu example built"))
            .expect("menu"),
        hello: rt.load(callflow_runtime::builtin::HELLO).expect("hello"),
        abuse: rt
            .load(&std::fs::read(callflow_runtime::test_guests::ABUSE).expect("abuse guest"))
            .expect("abuse"),
        rt,
    };
    let threads = s.rt.config().scheduling;
    println!(
        "plugin fairness: {} plugin threads ({} kept for built-ins, an account's uploads on {} at most), {N} good invocations per row",
        threads.threads, threads.reserved, threads.account_running
    );
    tokio.block_on(async {
        for (name, plugin) in [
            ("uploaded (menu)", &s.menu),
            ("built-in (hello)", &s.hello),
        ] {
            let _ = good(&s, plugin).await; // warm up
            let alone = good(&s, plugin).await;
            let p99_alone = at(&alone, 0.99);
            println!("good account, {name}:");
            println!(
                "  alone                          p50 {:>8.1} us  p99 {:>8.1} us",
                us(at(&alone, 0.5)),
                us(p99_alone)
            );
            for abuse in ["loop", "sleep"] {
                for concurrency in [1, 4, 32] {
                    let (v, what) = beside(&s, plugin, abuse, concurrency).await;
                    println!(
                        "  beside {concurrency:>2} x {abuse:<5}             p50 {:>8.1} us  p99 {:>8.1} us  p99 {:>5.2}x alone  ({what})",
                        us(at(&v, 0.5)),
                        us(at(&v, 0.99)),
                        at(&v, 0.99).as_secs_f64() / p99_alone.as_secs_f64()
                    );
                }
            }
        }
    });
}
