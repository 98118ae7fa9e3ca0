//! Plugin invocation cost, measured on the menu example (`plugins/examples/menu`), a realistic
//! call-flow step: parse the binding's JSON config, answer a key, build the next gather.
//!
//! `cargo bench -p callflow-runtime --bench plugin` prints, besides criterion's report:
//! - p50/p99 of one event in a fresh instance, and the same logic called natively (the ratio);
//! - events per second with 2 threads invoking at once;
//! - p99 of well-behaved events while another thread keeps running a plugin that loops until its
//!   deadline, next to the p99 without it;
//! - the TwiML interpreter (`builtin::TWIML`): one `fetched` event (parse a document, start its
//!   first verb) in Wasm and natively, for RapidPro's gather document and a 50-verb document, with
//!   the ratio as is and net of a fresh instance's fixed cost (the interpreter handling an event
//!   it only notes, in Wasm and natively).
//!
//! Every loop is bounded in count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callflow_runtime::flow::{
    CallContext, FetchResponse, FetchResult, FlowEvent, GatherResult, HttpMethod,
};
use callflow_runtime::{Limits, Runtime, RuntimeConfig};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

const MENU_WASM: &str = env!("CALLFLOW_EXAMPLE_MENU");
const CONFIG: &str = r#"{
  "greeting": "Welcome to the river authority.",
  "options": {
    "1": {"label": "river levels", "say": "The river is at its normal level."},
    "2": {"label": "opening hours", "say": "We are open from eight to six, Monday to Friday."},
    "3": {"label": "flood warnings", "say": "There are no flood warnings in your area today."}
  },
  "max_repeats": 2
}"#;

fn host_ctx() -> CallContext {
    CallContext {
        account_sid: "AC00000000000000000000000000000001".into(),
        call_sid: "CA00000000000000000000000000000001".into(),
        parent_call_sid: None,
        direction: "outbound-api".into(),
        from: "+15005550006".into(),
        to: "+15558675310".into(),
        status: "in-progress".into(),
        answered_by: None,
        now_ms: 1_800_000_000_000,
        seed: 7,
        config: CONFIG.into(),
        url: None,
        method: HttpMethod::Post,
        fallback_url: None,
        fallback_method: HttpMethod::Post,
        document: None,
    }
}

fn host_event() -> FlowEvent {
    FlowEvent::Gathered(GatherResult {
        digits: "2".into(),
        timed_out: false,
    })
}

/// A deadline no measurement trips by accident on a loaded machine.
fn limits() -> Limits {
    Limits {
        deadline: Duration::from_secs(1),
        ..Limits::default()
    }
}

struct Setup {
    rt: Arc<Runtime>,
    menu: Arc<callflow_runtime::Plugin>,
    ctx: CallContext,
    state: Vec<u8>,
    event: FlowEvent,
    native_ctx: callflow_sdk::flow::CallContext,
}

fn setup() -> Setup {
    let rt = Arc::new(Runtime::new(RuntimeConfig::default()).expect("runtime"));
    let menu = rt
        .load(&std::fs::read(MENU_WASM).expect("menu example built"))
        .expect("menu loads");
    let ctx = host_ctx();
    let first = rt
        .call_flow_blocking(&menu, &ctx, &[], &FlowEvent::Start, limits())
        .expect("start");
    let mut native_ctx = callflow_sdk::flow::test_context(CONFIG);
    native_ctx.seed = 7;
    Setup {
        rt,
        menu,
        ctx,
        state: first.state,
        event: host_event(),
        native_ctx,
    }
}

fn native_step(s: &Setup) -> usize {
    let event = callflow_sdk::flow::FlowEvent::Gathered(callflow_sdk::flow::GatherResult {
        digits: "2".into(),
        timed_out: false,
    });
    let step =
        callflow_sdk::flow::run::<callflow_example_menu::Menu>(&s.native_ctx, &s.state, event)
            .expect("native step");
    step.commands.len()
}

fn wasm_step(s: &Setup) -> usize {
    let step =
        s.rt.call_flow_blocking(&s.menu, &s.ctx, &s.state, &s.event, limits())
            .expect("wasm step");
    step.commands.len()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn latencies(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The figures BENCHMARKS.md quotes, printed once before criterion runs.
fn figures(s: &Setup) {
    const N: usize = 20_000;
    for _ in 0..1_000 {
        black_box(wasm_step(s));
        black_box(native_step(s));
    }
    let wasm = latencies(N, || {
        black_box(wasm_step(s));
    });
    let native = latencies(N, || {
        black_box(native_step(s));
    });
    println!("plugin event (menu example, fresh instance per event), {N} events:");
    println!(
        "  wasm    p50 {:>8.1} us  p99 {:>8.1} us",
        micros(percentile(&wasm, 0.5)),
        micros(percentile(&wasm, 0.99))
    );
    println!(
        "  native  p50 {:>8.1} us  p99 {:>8.1} us",
        micros(percentile(&native, 0.5)),
        micros(percentile(&native, 0.99))
    );
    println!(
        "  wasm / native at p50: {:.1}x",
        percentile(&wasm, 0.5).as_secs_f64() / percentile(&native, 0.5).as_secs_f64()
    );

    // throughput: 2 threads invoking at once
    const PER_THREAD: usize = 20_000;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..PER_THREAD {
                    black_box(wasm_step(s));
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  throughput, 2 threads: {:.0} events/s",
        (2 * PER_THREAD) as f64 / secs
    );

    // isolation: p99 of good events with and without a looping plugin on the other thread
    let abuse =
        s.rt.load(&std::fs::read(callflow_runtime::test_guests::ABUSE).expect("abuse guest built"))
            .expect("abuse guest loads");
    let mut looping_ctx = host_ctx();
    looping_ctx.config = r#"{"abuse":"loop"}"#.into();
    let tight = Limits::default(); // 10 ms, the production default
    const M: usize = 5_000;
    let quiet = latencies(M, || {
        black_box(wasm_step(s));
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (noisy, timeouts) = std::thread::scope(|scope| {
        let looper = scope.spawn(|| {
            let mut timeouts = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r =
                    s.rt.call_flow_blocking(&abuse, &looping_ctx, &[], &FlowEvent::Start, tight);
                if matches!(r, Err(callflow_runtime::InvokeError::Timeout { .. })) {
                    timeouts += 1;
                }
            }
            timeouts
        });
        let noisy = latencies(M, || {
            black_box(wasm_step(s));
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (noisy, looper.join().expect("looper"))
    });
    println!("isolation, {M} good events on one thread:");
    println!(
        "  alone                        p50 {:>8.1} us  p99 {:>8.1} us",
        micros(percentile(&quiet, 0.5)),
        micros(percentile(&quiet, 0.99))
    );
    println!(
        "  beside a looping plugin      p50 {:>8.1} us  p99 {:>8.1} us  ({timeouts} loops stopped at 10 ms)",
        micros(percentile(&noisy, 0.5)),
        micros(percentile(&noisy, 0.99))
    );
}

/// RapidPro's gather document, as mailroom writes it.
const RAPIDPRO_GATHER: &str = r##"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather finishOnKey="#" timeout="30" action="https://rp.example/mr/ivr/c/8e1e/handle?action=resume&amp;call=6e0e&amp;wait_type=gather">
    <Say language="en-US">Thanks for calling the river authority. Enter the number of your district, then press the hash key.</Say>
  </Gather>
  <Redirect>https://rp.example/mr/ivr/c/8e1e/handle?action=resume&amp;call=6e0e&amp;wait_type=gather&amp;timeout=true</Redirect>
</Response>
"##;

const TWIML_URL: &str = "https://rp.example/mr/ivr/c/8e1e/handle?action=start&call=6e0e";

fn fifty_verbs() -> String {
    let mut doc = String::from("<Response>\n");
    for i in 1..=50 {
        doc.push_str(&match i % 5 {
            0 => format!("  <Pause length=\"{}\"/>\n", i / 5),
            1 => format!("  <Say language=\"en-GB\">Line {i} of the long announcement.</Say>\n"),
            2 => format!("  <Play>https://cdn.example.com/clips/clip{i}.wav</Play>\n"),
            3 => format!(
                "  <Gather numDigits=\"1\" action=\"/g{i}\"><Say>Press a key for {i}.</Say></Gather>\n"
            ),
            _ => format!("  <Play digits=\"w{i}\"/>\n"),
        });
    }
    doc.push_str("</Response>\n");
    doc
}

/// One `fetched` workload of the interpreter, in both worlds' types.
struct TwimlCase {
    name: &'static str,
    state: Vec<u8>,
    event: FlowEvent,
    native_event: callflow_sdk::flow::FlowEvent,
}

struct TwimlSetup {
    rt: Arc<Runtime>,
    twiml: Arc<callflow_runtime::Plugin>,
    hello: Arc<callflow_runtime::Plugin>,
    ctx: CallContext,
    native_ctx: callflow_sdk::flow::CallContext,
    cases: Vec<TwimlCase>,
}

fn twiml_setup(rt: &Arc<Runtime>) -> TwimlSetup {
    let twiml = rt
        .load(callflow_runtime::builtin::TWIML)
        .expect("twiml loads");
    let hello = rt
        .load(callflow_runtime::builtin::HELLO)
        .expect("hello loads");
    let mut ctx = host_ctx();
    ctx.config = "{}".into();
    ctx.url = Some(TWIML_URL.into());
    let mut native_ctx = callflow_sdk::flow::test_context("{}");
    native_ctx.seed = 7;
    native_ctx.account_sid = ctx.account_sid.clone();
    native_ctx.call_sid = ctx.call_sid.clone();
    native_ctx.url = ctx.url.clone();
    // the state after `start`: waiting for the first document
    let started = rt
        .call_flow_blocking(&twiml, &ctx, &[], &FlowEvent::Start, limits())
        .expect("start");
    let cases = [
        ("rapidpro-gather", RAPIDPRO_GATHER.to_owned()),
        ("fifty-verbs", fifty_verbs()),
    ]
    .into_iter()
    .map(|(name, body)| TwimlCase {
        name,
        state: started.state.clone(),
        event: FlowEvent::Fetched(FetchResult::Response(FetchResponse {
            status: 200,
            content_type: Some("text/xml; charset=utf-8".into()),
            body: body.clone(),
            url: TWIML_URL.into(),
        })),
        native_event: callflow_sdk::flow::FlowEvent::Fetched(
            callflow_sdk::flow::FetchResult::Response(callflow_sdk::flow::FetchResponse {
                status: 200,
                content_type: Some("text/xml; charset=utf-8".into()),
                body,
                url: TWIML_URL.into(),
            }),
        ),
    })
    .collect();
    TwimlSetup {
        rt: rt.clone(),
        twiml,
        hello,
        ctx,
        native_ctx,
        cases,
    }
}

fn twiml_wasm(s: &TwimlSetup, case: &TwimlCase) -> usize {
    let step =
        s.rt.call_flow_blocking(&s.twiml, &s.ctx, &case.state, &case.event, limits())
            .expect("wasm twiml step");
    assert_eq!(step.commands.len(), 1);
    step.commands.len()
}

fn twiml_native(s: &TwimlSetup, case: &TwimlCase) -> usize {
    let step = callflow_sdk::flow::run::<callflow_plugin_twiml::Twiml>(
        &s.native_ctx,
        &case.state,
        case.native_event.clone(),
    )
    .expect("native twiml step");
    step.commands.len()
}

/// A fresh instance's fixed cost, for this component: the interpreter told that the call ended
/// before it started (it only notes it).
fn fixed_wasm(s: &TwimlSetup) -> usize {
    let step =
        s.rt.call_flow_blocking(&s.twiml, &s.ctx, &[], &FlowEvent::Hangup, limits())
            .expect("wasm hangup step");
    step.commands.len()
}

fn fixed_native(s: &TwimlSetup) -> usize {
    let step = callflow_sdk::flow::run::<callflow_plugin_twiml::Twiml>(
        &s.native_ctx,
        &[],
        callflow_sdk::flow::FlowEvent::Hangup,
    )
    .expect("native hangup step");
    step.commands.len()
}

/// The same for the smallest call flow there is (hello ignores `prompt-done`).
fn hello_wasm(s: &TwimlSetup) -> usize {
    let step =
        s.rt.call_flow_blocking(&s.hello, &s.ctx, &[], &FlowEvent::PromptDone, limits())
            .expect("wasm hello step");
    step.commands.len()
}

/// The interpreter's figures, printed once before criterion runs.
fn twiml_figures(s: &TwimlSetup) {
    const N: usize = 5_000;
    let p50 = |v: &[Duration]| percentile(v, 0.5).as_secs_f64();
    for _ in 0..500 {
        black_box(hello_wasm(s));
        black_box(fixed_wasm(s));
        black_box(fixed_native(s));
    }
    let hello = latencies(N, || {
        black_box(hello_wasm(s));
    });
    let base_wasm = latencies(N, || {
        black_box(fixed_wasm(s));
    });
    let base_native = latencies(N, || {
        black_box(fixed_native(s));
    });
    println!("TwiML interpreter, one `fetched` event (fresh instance per event), {N} events each:");
    println!(
        "  fixed cost (an event it only notes): wasm p50 {:>6.1} us, native p50 {:>6.2} us \
         (hello's, wasm: {:.1} us)",
        micros(percentile(&base_wasm, 0.5)),
        micros(percentile(&base_native, 0.5)),
        micros(percentile(&hello, 0.5)),
    );
    for case in &s.cases {
        for _ in 0..500 {
            black_box(twiml_wasm(s, case));
            black_box(twiml_native(s, case));
        }
        let wasm = latencies(N, || {
            black_box(twiml_wasm(s, case));
        });
        let native = latencies(N, || {
            black_box(twiml_native(s, case));
        });
        let net = (p50(&wasm) - p50(&base_wasm)) / (p50(&native) - p50(&base_native));
        println!(
            "  {:<16} wasm p50 {:>8.1} us p99 {:>8.1} us | native p50 {:>8.1} us p99 {:>8.1} us | \
             wasm / native {:.1}x, net of the fixed cost {:.1}x",
            case.name,
            micros(percentile(&wasm, 0.5)),
            micros(percentile(&wasm, 0.99)),
            micros(percentile(&native, 0.5)),
            micros(percentile(&native, 0.99)),
            p50(&wasm) / p50(&native),
            net
        );
    }
}

fn bench(c: &mut Criterion) {
    let s = setup();
    figures(&s);
    let mut g = c.benchmark_group("menu-event");
    g.bench_function("wasm-fresh-instance", |b| {
        b.iter(|| black_box(wasm_step(&s)))
    });
    g.bench_function("native", |b| b.iter(|| black_box(native_step(&s))));
    g.finish();

    let t = twiml_setup(&s.rt);
    twiml_figures(&t);
    let mut g = c.benchmark_group("twiml-fetched");
    for case in &t.cases {
        g.bench_function(format!("{}/wasm-fresh-instance", case.name), |b| {
            b.iter(|| black_box(twiml_wasm(&t, case)))
        });
        g.bench_function(format!("{}/native", case.name), |b| {
            b.iter(|| black_box(twiml_native(&t, case)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
