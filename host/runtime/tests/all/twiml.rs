//! The built-in TwiML interpreter (`builtin::TWIML`) in the real runtime: a RapidPro exchange
//! event by event with the state carried between them, and the largest documents it accepts
//! within the runtime's output limits.

use callflow_runtime::flow::{
    Command, FetchResponse, FetchResult, FlowEvent, FlowStep, GatherResult, HttpMethod,
};
use callflow_runtime::{Runtime, World, builtin};

use super::{ctx, roomy, runtime};

const URL: &str = "https://rp.example/mr/ivr/c/1/handle?action=start&call=2";

fn fetched(body: String) -> FlowEvent {
    FlowEvent::Fetched(FetchResult::Response(FetchResponse {
        status: 200,
        content_type: Some("text/xml; charset=utf-8".into()),
        body,
        url: URL.into(),
    }))
}

fn step(
    rt: &Runtime,
    plugin: &callflow_runtime::Plugin,
    state: &mut Vec<u8>,
    e: FlowEvent,
) -> FlowStep {
    let mut c = ctx("{}");
    c.url = Some(URL.into());
    let step = rt
        .call_flow_blocking(plugin, &c, state, &e, roomy())
        .unwrap();
    *state = step.state.clone();
    step
}

/// A fresh call that started and was answered `body`: the interpreter's step for it.
fn first_document(rt: &Runtime, plugin: &callflow_runtime::Plugin, body: String) -> FlowStep {
    let mut state = Vec::new();
    step(rt, plugin, &mut state, FlowEvent::Start);
    step(rt, plugin, &mut state, fetched(body))
}

#[test]
fn the_builtin_interpreter_runs_a_rapidpro_exchange() {
    let rt = runtime();
    assert!(builtin::ALL.iter().any(|(name, _)| *name == "twiml"));
    let plugin = rt.load(builtin::TWIML).unwrap();
    assert_eq!(plugin.world, World::CallFlow);
    let mut state = Vec::new();

    let s = step(&rt, &plugin, &mut state, FlowEvent::Start);
    let [Command::Fetch(f)] = &s.commands[..] else {
        panic!("{s:?}")
    };
    assert_eq!((f.url.as_str(), f.method), (URL, HttpMethod::Post));
    let names: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CallSid",
            "AccountSid",
            "From",
            "To",
            "Caller",
            "Called",
            "CallStatus",
            "Direction",
            "ApiVersion"
        ]
    );

    let doc = r##"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather finishOnKey="#" timeout="30" action="https://rp.example/mr/ivr/c/1/handle?action=resume&amp;call=2&amp;wait_type=gather">
    <Say language="en-US">enter a number, then press #</Say>
  </Gather>
  <Redirect>https://rp.example/mr/ivr/c/1/handle?action=resume&amp;call=2&amp;wait_type=gather&amp;timeout=true</Redirect>
</Response>"##;
    let s = step(&rt, &plugin, &mut state, fetched(doc.into()));
    let [Command::Gather(g)] = &s.commands[..] else {
        panic!("{s:?}")
    };
    assert_eq!((g.timeout_ms, g.finish_on_key.as_str()), (30_000, "#"));

    let s = step(
        &rt,
        &plugin,
        &mut state,
        FlowEvent::Gathered(GatherResult {
            digits: "42".into(),
            timed_out: false,
        }),
    );
    let [Command::Fetch(f)] = &s.commands[..] else {
        panic!("{s:?}")
    };
    assert!(f.url.ends_with("wait_type=gather"), "{}", f.url);
    let last = f.params.last().unwrap();
    assert_eq!((last.name.as_str(), last.value.as_str()), ("Digits", "42"));

    let s = step(
        &rt,
        &plugin,
        &mut state,
        fetched("<Response><Hangup/></Response>".into()),
    );
    assert!(matches!(&s.commands[..], [Command::Hangup]), "{s:?}");
}

#[test]
fn the_largest_documents_stay_within_the_runtimes_limits() {
    let rt = runtime();
    let plugin = rt.load(builtin::TWIML).unwrap();
    // the largest text the state can keep (56 KiB, under the 64 KiB document limit): runs, and
    // its state fits the host's 64 KiB
    let words = "word ".repeat(56_000 / 5);
    let s = first_document(
        &rt,
        &plugin,
        format!("<Response><Say>{words}</Say></Response>"),
    );
    assert!(matches!(&s.commands[..], [Command::Say(_)]), "{:?}", s.logs);
    assert!(s.state.len() < 64 << 10);
    // a larger one is Twilio's application error, not a failed invocation
    let s = first_document(
        &rt,
        &plugin,
        format!("<Response><Say>{words}{words}</Say></Response>"),
    );
    assert!(
        matches!(&s.commands[..], [Command::Say(say), Command::Hangup] if say.text.contains("application error"))
    );
    // a document nested deeper than anyone writes runs within the sandbox's stack (8,000 levels
    // keep it under the document limit, so it is the depth that is tested, not the size)
    let deep = format!(
        "<Response><Say>{}x{}</Say></Response>",
        "<b>".repeat(8_000),
        "</b>".repeat(8_000)
    );
    let s = first_document(&rt, &plugin, deep);
    assert!(
        matches!(&s.commands[..], [Command::Say(say)] if say.text == "x"),
        "{s:?}"
    );
}
