//! Transcripts of the interpreter: a call (its URL or inline document), a script of events, and
//! what the interpreter did at each one, run through the SDK's tester (state encoded between
//! events as the host keeps it).
//!
//! Transcript lines: `> event` for what the host reported, then indented the commands in order,
//! then `[level] message` for the logs. A fetch shows its method and URL and only the parameters
//! after the base set (CallSid … ApiVersion), which every test checks is there, in order, and
//! right for the call; `CallStatus` is shown when it is not `in-progress`.

use callflow_sdk::flow::{
    CallContext, Command, DialResult, FetchResponse, FetchResult, FlowEvent, FlowTester,
    GatherResult, HttpMethod, Prompt, RecordResult, Redirect,
};
use expect_test::{Expect, expect};

use crate::Twiml;
use crate::interp::State;
use crate::level_name;

const URL: &str = "https://example.com/voice?call=1";
const FALLBACK: &str = "https://backup.example.net/fallback";
const RECORDING_URL: &str = "https://api.example/2010-04-01/Accounts/AC00000000000000000000000000000000/Recordings/RE00000000000000000000000000000001";

/// One step of a script.
enum Ev {
    Event(FlowEvent),
    /// The answer to the last fetch: status, content type, body.
    Reply(u16, Option<&'static str>, String),
}

impl Ev {
    /// The event itself; a reply comes from `url`.
    fn into_event(self, url: &str) -> FlowEvent {
        match self {
            Ev::Event(e) => e,
            Ev::Reply(status, content_type, body) => {
                FlowEvent::Fetched(FetchResult::Response(FetchResponse {
                    status,
                    content_type: content_type.map(Into::into),
                    body,
                    url: url.into(),
                }))
            }
        }
    }
}

fn start() -> Ev {
    Ev::Event(FlowEvent::Start)
}
fn reply(body: &str) -> Ev {
    Ev::Reply(200, Some("text/xml; charset=utf-8"), body.into())
}
fn reply_with(status: u16, content_type: Option<&'static str>, body: &str) -> Ev {
    Ev::Reply(status, content_type, body.into())
}
fn failed(why: &str) -> Ev {
    Ev::Event(FlowEvent::Fetched(FetchResult::Failed(why.into())))
}
fn done() -> Ev {
    Ev::Event(FlowEvent::PromptDone)
}
fn digits(d: &str) -> Ev {
    Ev::Event(FlowEvent::Gathered(GatherResult {
        digits: d.into(),
        timed_out: false,
    }))
}
fn timeout() -> Ev {
    Ev::Event(FlowEvent::Gathered(GatherResult {
        digits: String::new(),
        timed_out: true,
    }))
}
fn recorded(ms: u32, key: &str) -> Ev {
    Ev::Event(FlowEvent::Recorded(RecordResult {
        recording_sid: Some("RE00000000000000000000000000000001".into()),
        recording_url: Some(RECORDING_URL.into()),
        duration_ms: ms,
        digits: key.into(),
        empty: false,
    }))
}
fn empty_recording() -> Ev {
    Ev::Event(FlowEvent::Recorded(RecordResult {
        recording_sid: None,
        recording_url: None,
        duration_ms: 0,
        digits: String::new(),
        empty: true,
    }))
}
fn dial_done(status: &str, secs: u32) -> Ev {
    Ev::Event(FlowEvent::DialDone(DialResult {
        status: status.into(),
        call_sid: (secs > 0).then(|| "CA00000000000000000000000000000002".into()),
        duration_s: secs,
        recording: None,
    }))
}
fn redirect_to(url: &str, method: HttpMethod) -> Ev {
    Ev::Event(FlowEvent::Redirected(Redirect {
        url: Some(url.into()),
        method,
        document: None,
    }))
}
fn redirect_doc(doc: &str) -> Ev {
    Ev::Event(FlowEvent::Redirected(Redirect {
        url: None,
        method: HttpMethod::Post,
        document: Some(doc.into()),
    }))
}
fn hangup() -> Ev {
    Ev::Event(FlowEvent::Hangup)
}

/// A call whose instructions are at [`URL`] (POST).
fn with_url(_: &mut CallContext) {}

/// A call whose instructions are `doc`, inline.
fn inline(doc: &str) -> impl FnOnce(&mut CallContext) {
    let doc = doc.to_owned();
    move |ctx| {
        ctx.url = None;
        ctx.document = Some(doc);
    }
}

fn with_fallback(ctx: &mut CallContext) {
    ctx.fallback_url = Some(FALLBACK.into());
    ctx.fallback_method = HttpMethod::Get;
}

/// Runs `script` on a call set up by `setup` and checks the transcript.
fn check(setup: impl FnOnce(&mut CallContext), script: Vec<Ev>, expected: Expect) {
    expected.assert_eq(&transcript(setup, script, false));
}

/// [`check`] for a call fetched from [`URL`]: `start`, then `body` as the answer, then `script`.
fn check_doc(body: &str, script: Vec<Ev>, expected: Expect) {
    let mut all = vec![start(), reply(body)];
    all.extend(script);
    check(with_url, all, expected);
}

fn transcript(setup: impl FnOnce(&mut CallContext), script: Vec<Ev>, show_state: bool) -> String {
    let mut t = FlowTester::<Twiml>::new("{}");
    t.ctx.url = Some(URL.into());
    setup(&mut t.ctx);
    let mut out = String::new();
    let mut last_url = String::new();
    for ev in script {
        let event = ev.into_event(&last_url);
        out.push_str(&format!("> {}\n", describe_event(&event)));
        let step = t.send(event).expect("the interpreter never fails");
        for c in &step.commands {
            if let Command::Fetch(f) = c {
                last_url = f.url.clone();
            }
            out.push_str(&format!("  {}\n", describe_command(&t.ctx, c)));
        }
        for l in &step.logs {
            out.push_str(&format!("  [{}] {}\n", level_name(l.level), l.message));
        }
        assert!(step.commands.len() <= 100, "the host's command limit");
        let state = serde_json::to_vec(&t.state()).unwrap();
        assert!(state.len() < 64 << 10, "the host's state limit");
        if show_state {
            out.push_str(&format!("  state {}\n", String::from_utf8_lossy(&state)));
        }
    }
    out
}

fn describe_event(e: &FlowEvent) -> String {
    match e {
        FlowEvent::Start => "start".into(),
        FlowEvent::Fetched(FetchResult::Response(r)) => format!(
            "fetched {} {} ({} bytes)",
            r.status,
            r.content_type.as_deref().unwrap_or("(no content type)"),
            r.body.len()
        ),
        FlowEvent::Fetched(FetchResult::Failed(why)) => format!("fetch failed: {why}"),
        FlowEvent::PromptDone => "prompt-done".into(),
        FlowEvent::Gathered(g) if g.timed_out => "gathered nothing (timed out)".into(),
        FlowEvent::Gathered(g) => format!("gathered {:?}", g.digits),
        FlowEvent::Recorded(r) if r.empty => "recorded nothing".into(),
        FlowEvent::Recorded(r) => format!("recorded {} ms, key {:?}", r.duration_ms, r.digits),
        FlowEvent::DialDone(d) => format!("dial-done {}, {} s", d.status, d.duration_s),
        FlowEvent::Redirected(Redirect {
            document: Some(_), ..
        }) => "redirected to a document".into(),
        FlowEvent::Redirected(r) => format!(
            "redirected to {} {}",
            method_name(r.method),
            r.url.as_deref().unwrap_or("nowhere")
        ),
        FlowEvent::Hangup => "hangup".into(),
    }
}

fn method_name(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
    }
}

fn describe_say(s: &callflow_sdk::flow::Say) -> String {
    let mut d = format!("say {:?}", s.text);
    if let Some(v) = &s.voice {
        d.push_str(&format!(" voice={v}"));
    }
    if let Some(l) = &s.language {
        d.push_str(&format!(" language={l}"));
    }
    if s.loops != 1 {
        d.push_str(&format!(" loop={}", s.loops));
    }
    d
}

fn describe_play(p: &callflow_sdk::flow::Play) -> String {
    let mut d = format!("play {}", p.url);
    if p.loops != 1 {
        d.push_str(&format!(" loop={}", p.loops));
    }
    d
}

/// The base parameters the call's fetches must start with, for `status`.
fn base_params(ctx: &CallContext, status: &str) -> Vec<(String, String)> {
    [
        ("CallSid", ctx.call_sid.as_str()),
        ("AccountSid", &ctx.account_sid),
        ("From", &ctx.from),
        ("To", &ctx.to),
        ("Caller", &ctx.from),
        ("Called", &ctx.to),
        ("CallStatus", status),
        ("Direction", &ctx.direction),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .collect()
}

fn describe_command(ctx: &CallContext, c: &Command) -> String {
    match c {
        Command::Fetch(f) => {
            let params: Vec<(String, String)> = f
                .params
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect();
            let status = params.get(6).map(|(_, v)| v.clone()).unwrap_or_default();
            assert_eq!(
                params[..9.min(params.len())],
                base_params(ctx, &status)[..],
                "the base parameters, in order"
            );
            let mut d = format!("fetch {} {}", method_name(f.method), f.url);
            if status != "in-progress" {
                d.push_str(&format!(" CallStatus={status}"));
            }
            for (n, v) in &params[9..] {
                d.push_str(&format!(" {n}={v}"));
            }
            d
        }
        Command::Say(s) => describe_say(s),
        Command::Play(p) => describe_play(p),
        Command::Pause(ms) => format!("pause {ms} ms"),
        Command::SendDigits(d) => format!("send-digits {d:?}"),
        Command::Gather(g) => {
            let prompts: Vec<String> = g
                .prompts
                .iter()
                .map(|p| match p {
                    Prompt::Say(s) => describe_say(s),
                    Prompt::Play(p) => describe_play(p),
                    Prompt::Pause(ms) => format!("pause {ms} ms"),
                })
                .collect();
            format!(
                "gather timeout {} ms, finish {:?}, digits {}: [{}]",
                g.timeout_ms,
                g.finish_on_key,
                g.num_digits.map_or("any".into(), |n| n.to_string()),
                prompts.join(", ")
            )
        }
        Command::Record(r) => format!(
            "record timeout {} ms, finish {:?}, max {} ms{}{}",
            r.timeout_ms,
            r.finish_on_key,
            r.max_length_ms,
            if r.play_beep { ", beep" } else { "" },
            if r.trim_silence { ", trim" } else { "" },
        ),
        Command::Dial(d) => {
            let targets: Vec<String> = d
                .targets
                .iter()
                .map(|t| match t {
                    callflow_sdk::flow::DialTarget::Number(n) => n.clone(),
                    callflow_sdk::flow::DialTarget::Sip(s) => s.clone(),
                })
                .collect();
            format!(
                "dial [{}] timeout {} ms, limit {} ms{}{}{}",
                targets.join(", "),
                d.timeout_ms,
                d.time_limit_ms,
                d.caller_id
                    .as_ref()
                    .map_or(String::new(), |c| format!(", caller-id {c}")),
                if d.hangup_on_star {
                    ", hangup-on-star"
                } else {
                    ""
                },
                if d.record { ", record" } else { "" },
            )
        }
        Command::Hangup => "hangup".into(),
        Command::Reject(callflow_sdk::flow::RejectReason::Busy) => "reject busy".into(),
        Command::Reject(callflow_sdk::flow::RejectReason::Rejected) => "reject rejected".into(),
    }
}

#[test]
fn the_first_fetch_carries_the_calls_parameters() {
    let full = |setup: fn(&mut CallContext)| {
        let mut t = FlowTester::<Twiml>::new("{}");
        t.ctx.url = Some(URL.into());
        setup(&mut t.ctx);
        let step = t.send(FlowEvent::Start).unwrap();
        let [Command::Fetch(f)] = &step.commands[..] else {
            panic!("{step:?}")
        };
        let mut d = format!("{} {}\n", method_name(f.method), f.url);
        for p in &f.params {
            d.push_str(&format!("  {}={}\n", p.name, p.value));
        }
        d
    };
    expect![[r#"
        POST https://example.com/voice?call=1
          CallSid=CA00000000000000000000000000000000
          AccountSid=AC00000000000000000000000000000000
          From=+15005550006
          To=+15558675310
          Caller=+15005550006
          Called=+15558675310
          CallStatus=in-progress
          Direction=outbound-api
          ApiVersion=2010-04-01
    "#]]
    .assert_eq(&full(|_| {}));
    // an inbound call, fetched with GET, ringing; a child call with machine detection
    expect![[r#"
        GET https://example.com/voice?call=1
          CallSid=CA00000000000000000000000000000000
          AccountSid=AC00000000000000000000000000000000
          From=+15005550006
          To=+15558675310
          Caller=+15005550006
          Called=+15558675310
          CallStatus=ringing
          Direction=inbound
          ApiVersion=2010-04-01
          ParentCallSid=CA00000000000000000000000000000009
          AnsweredBy=machine_start
    "#]]
    .assert_eq(&full(|ctx| {
        ctx.method = HttpMethod::Get;
        ctx.status = "ringing".into();
        ctx.direction = "inbound".into();
        ctx.parent_call_sid = Some("CA00000000000000000000000000000009".into());
        ctx.answered_by = Some("machine_start".into());
    }));
}

#[test]
fn say_play_pause_and_digits_one_at_a_time_then_hang_up() {
    check_doc(
        r#"<?xml version="1.0" encoding="UTF-8"?>
        <Response>
          <Say>Hello there.</Say>
          <Say voice="Polly.Joanna" language="en-GB" loop="2">Twice, British.</Say>
          <Say loop="0">Until interrupted.</Say>
          <Play>https://cdn.example.com/a.mp3</Play>
          <Play loop="3">/audio/b.wav</Play>
          <Play digits="ww1234#"/>
          <Pause/>
          <Pause length="4"/>
          <Pause length="0"/>
        </Response>"#,
        vec![
            done(),
            done(),
            done(),
            done(),
            done(),
            done(),
            done(),
            done(),
            done(),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (456 bytes)
              say "Hello there."
            > prompt-done
              say "Twice, British." voice=Polly.Joanna language=en-GB loop=2
            > prompt-done
              say "Until interrupted." loop=0
            > prompt-done
              play https://cdn.example.com/a.mp3
            > prompt-done
              play https://example.com/audio/b.wav loop=3
            > prompt-done
              send-digits "ww1234#"
            > prompt-done
              pause 1000 ms
            > prompt-done
              pause 4000 ms
            > prompt-done
              hangup
              [debug] end of the document; hanging up
            > prompt-done
              [debug] prompt-done after the end of the call ignored
        "#]],
    );
}

#[test]
fn gather_submits_digits_to_its_action() {
    check_doc(
        r#"<Response>
          <Gather action="/handle?action=resume&amp;wait_type=gather" numDigits="1" timeout="30">
            <Say language="en-US">Press one for sales.</Say>
            <Play>tone.wav</Play>
            <Pause length="2"/>
          </Gather>
          <Say>Never heard.</Say>
        </Response>"#,
        vec![done(), digits("1"), reply("<Response><Hangup/></Response>")],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (309 bytes)
              gather timeout 30000 ms, finish "#", digits 1: [say "Press one for sales." language=en-US, play https://example.com/tone.wav, pause 2000 ms]
            > prompt-done
            > gathered "1"
              fetch POST https://example.com/handle?action=resume&wait_type=gather Digits=1
            > fetched 200 text/xml; charset=utf-8 (30 bytes)
              hangup
        "##]],
    );
}

#[test]
fn gather_defaults_post_to_the_current_document() {
    check_doc(
        "<Response><Gather/></Response>",
        vec![digits("1234")],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (30 bytes)
              gather timeout 5000 ms, finish "#", digits any: []
            > gathered "1234"
              fetch POST https://example.com/voice?call=1 Digits=1234
        "##]],
    );
    check_doc(
        r##"<Response><Gather method="GET" finishOnKey="" numDigits="3" timeout="0"/></Response>"##,
        vec![digits("987")],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (84 bytes)
              gather timeout 0 ms, finish "", digits 3: []
            > gathered "987"
              fetch GET https://example.com/voice?call=1 Digits=987
        "#]],
    );
}

#[test]
fn a_gather_that_times_out_falls_through_to_the_next_verb() {
    // RapidPro's own shape: the Redirect after the Gather is what a timeout runs
    check_doc(
        r##"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather finishOnKey="#" timeout="30" action="https://rp.example/mr/ivr/c/1/handle?action=resume&amp;call=2&amp;wait_type=gather">
    <Say language="en-US">enter a number, then press #</Say>
  </Gather>
  <Redirect>https://rp.example/mr/ivr/c/1/handle?action=resume&amp;call=2&amp;wait_type=gather&amp;timeout=true</Redirect>
</Response>"##,
        vec![timeout()],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (389 bytes)
              gather timeout 30000 ms, finish "#", digits any: [say "enter a number, then press #" language=en-US]
            > gathered nothing (timed out)
              fetch POST https://rp.example/mr/ivr/c/1/handle?action=resume&call=2&wait_type=gather&timeout=true
              [debug] no digits gathered; next verb
        "##]],
    );
    // with actionOnEmptyResult the action is requested anyway, with empty Digits
    check_doc(
        r#"<Response><Gather action="/empty" actionOnEmptyResult="true"/><Hangup/></Response>"#,
        vec![timeout()],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (82 bytes)
              gather timeout 5000 ms, finish "#", digits any: []
            > gathered nothing (timed out)
              fetch POST https://example.com/empty Digits=
        "##]],
    );
    // only the finish key: nothing entered, so the same
    check_doc(
        r#"<Response><Gather action="/g"/><Say>Bye.</Say></Response>"#,
        vec![digits(""), done()],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (57 bytes)
              gather timeout 5000 ms, finish "#", digits any: []
            > gathered ""
              say "Bye."
              [debug] no digits gathered; next verb
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "##]],
    );
}

#[test]
fn record_submits_the_recording_to_its_action() {
    check_doc(
        r#"<Response>
          <Say>Leave a message after the beep.</Say>
          <Record action="https://rp.example/handle?wait_type=record" maxLength="600"/>
          <Redirect>https://rp.example/handle?wait_type=record&amp;empty=true</Redirect>
        </Response>"#,
        vec![done(), recorded(4_200, "#")],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (260 bytes)
              say "Leave a message after the beep."
            > prompt-done
              record timeout 5000 ms, finish "1234567890*#", max 600000 ms, beep, trim
            > recorded 4200 ms, key "#"
              fetch POST https://rp.example/handle?wait_type=record RecordingUrl=https://api.example/2010-04-01/Accounts/AC00000000000000000000000000000000/Recordings/RE00000000000000000000000000000001 RecordingDuration=5 RecordingSid=RE00000000000000000000000000000001 Digits=#
        "##]],
    );
    // every attribute, the default action (this document) and a recording ended by time
    check_doc(
        r#"<Response><Record method="GET" timeout="0" finishOnKey="*" maxLength="20"
            playBeep="false" trim="do-not-trim"/></Response>"#,
        vec![recorded(20_000, "")],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (134 bytes)
              record timeout 0 ms, finish "*", max 20000 ms
            > recorded 20000 ms, key ""
              fetch GET https://example.com/voice?call=1 RecordingUrl=https://api.example/2010-04-01/Accounts/AC00000000000000000000000000000000/Recordings/RE00000000000000000000000000000001 RecordingDuration=20 RecordingSid=RE00000000000000000000000000000001
        "#]],
    );
}

#[test]
fn an_empty_recording_falls_through_to_the_next_verb() {
    check_doc(
        r#"<Response>
          <Record action="/r"/>
          <Redirect>/r?empty=true</Redirect>
        </Response>"#,
        vec![empty_recording()],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (107 bytes)
              record timeout 5000 ms, finish "1234567890*#", max 3600000 ms, beep, trim
            > recorded nothing
              fetch POST https://example.com/r?empty=true
              [debug] the recording is empty; next verb
        "#]],
    );
}

#[test]
fn dial_with_an_action_reports_the_outcome_there() {
    check_doc(
        r#"<Response>
          <Dial action="https://rp.example/handle?wait_type=dial" timeout="60" timeLimit="7200">+1234567890</Dial>
          <Say>Not reached.</Say>
        </Response>"#,
        vec![dial_done("completed", 42)],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (179 bytes)
              dial [+1234567890] timeout 60000 ms, limit 7200000 ms
            > dial-done completed, 42 s
              fetch POST https://rp.example/handle?wait_type=dial DialCallStatus=completed DialCallSid=CA00000000000000000000000000000002 DialCallDuration=42
        "#]],
    );
    check_doc(
        r#"<Response>
          <Dial action="/after" method="GET" callerId="+15550001111" hangupOnStar="true" record="record-from-answer">
            <Number>+15551111111</Number>
            <Sip>sip:desk@pbx.example.com</Sip>
          </Dial>
        </Response>"#,
        vec![dial_done("no-answer", 0)],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (256 bytes)
              dial [+15551111111, sip:desk@pbx.example.com] timeout 30000 ms, limit 14400000 ms, caller-id +15550001111, hangup-on-star, record
            > dial-done no-answer, 0 s
              fetch GET https://example.com/after DialCallStatus=no-answer DialCallDuration=0
        "#]],
    );
}

#[test]
fn a_recorded_dial_reports_its_recording_at_the_action() {
    let recorded = Ev::Event(FlowEvent::DialDone(DialResult {
        status: "completed".into(),
        call_sid: Some("CA00000000000000000000000000000002".into()),
        duration_s: 7,
        recording: Some(callflow_sdk::flow::DialRecording {
            sid: "RE00000000000000000000000000000003".into(),
            url: "https://cf.example/2010-04-01/Accounts/AC1/Recordings/RE00000000000000000000000000000003".into(),
            duration_s: 6,
        }),
    }));
    check_doc(
        r#"<Response><Dial action="/after" record="record-from-answer">+15551111111</Dial></Response>"#,
        vec![recorded],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (90 bytes)
              dial [+15551111111] timeout 30000 ms, limit 14400000 ms, record
            > dial-done completed, 7 s
              fetch POST https://example.com/after DialCallStatus=completed DialCallSid=CA00000000000000000000000000000002 DialCallDuration=7 RecordingUrl=https://cf.example/2010-04-01/Accounts/AC1/Recordings/RE00000000000000000000000000000003 RecordingSid=RE00000000000000000000000000000003 RecordingDuration=6
        "#]],
    );
}

#[test]
fn dial_without_an_action_continues_with_the_next_verb() {
    check_doc(
        r#"<Response><Dial>+15551234567</Dial><Say>The call has ended.</Say></Response>"#,
        vec![dial_done("busy", 0), done()],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (76 bytes)
              dial [+15551234567] timeout 30000 ms, limit 14400000 ms
            > dial-done busy, 0 s
              say "The call has ended."
              [debug] the dialled call ended (busy); next verb
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "#]],
    );
}

#[test]
fn redirect_hangup_and_reject() {
    check_doc(
        r#"<Response><Redirect method="GET">next?step=2</Redirect><Say>Not reached.</Say></Response>"#,
        vec![
            reply(
                r#"<Response><Say>Step two.</Say><Redirect>https://other.example/x</Redirect></Response>"#,
            ),
            done(),
            reply("<Response><Hangup/><Say>Not reached.</Say></Response>"),
            done(),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (89 bytes)
              fetch GET https://example.com/next?step=2
            > fetched 200 text/xml; charset=utf-8 (85 bytes)
              say "Step two."
            > prompt-done
              fetch POST https://other.example/x
            > fetched 200 text/xml; charset=utf-8 (53 bytes)
              hangup
            > prompt-done
              [debug] prompt-done after the end of the call ignored
        "#]],
    );
    check_doc(
        r#"<Response><Reject reason="busy"/><Say>Not reached.</Say></Response>"#,
        vec![],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (67 bytes)
              reject busy
        "#]],
    );
    check_doc(
        "<Response><Reject/></Response>",
        vec![],
        expect![[r#"
        > start
          fetch POST https://example.com/voice?call=1
        > fetched 200 text/xml; charset=utf-8 (30 bytes)
          reject rejected
    "#]],
    );
}

#[test]
fn the_end_of_a_document_hangs_up() {
    check_doc(
        "<Response/>",
        vec![],
        expect![[r#"
        > start
          fetch POST https://example.com/voice?call=1
        > fetched 200 text/xml; charset=utf-8 (11 bytes)
          hangup
          [debug] end of the document; hanging up
    "#]],
    );
    check_doc(
        "<Response><!--missed call handled--></Response>",
        vec![],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (47 bytes)
              hangup
              [debug] end of the document; hanging up
        "#]],
    );
}

#[test]
fn relative_urls_resolve_against_the_document_that_holds_them() {
    check_doc(
        r#"<Response><Redirect>../b/next.xml?x=1</Redirect></Response>"#,
        vec![
            reply(r#"<Response><Play>sound.wav</Play><Redirect>/root</Redirect></Response>"#),
            done(),
            reply(
                r#"<Response><Play>//cdn.example.org/c.mp3</Play><Redirect>?only=query</Redirect></Response>"#,
            ),
            done(),
            reply(
                r#"<Response><Redirect>ftp://files.example.com/x</Redirect><Play>mailto:a@b</Play><Redirect>http://[bad</Redirect></Response>"#,
            ),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (59 bytes)
              fetch POST https://example.com/b/next.xml?x=1
            > fetched 200 text/xml; charset=utf-8 (69 bytes)
              play https://example.com/b/sound.wav
            > prompt-done
              fetch POST https://example.com/root
            > fetched 200 text/xml; charset=utf-8 (89 bytes)
              play https://cdn.example.org/c.mp3
            > prompt-done
              fetch POST https://example.com/root?only=query
            > fetched 200 text/xml; charset=utf-8 (122 bytes)
              hangup
              [warn] <Redirect> skipped: "ftp://files.example.com/x" is not an http or https URL
              [warn] <Play> skipped: "mailto:a@b" is not an http or https URL
              [warn] <Redirect> skipped: "http://[bad" is not a URL: invalid IPv6 address
              [debug] end of the document; hanging up
        "#]],
    );
}

#[test]
fn inline_documents_have_no_url_for_relative_ones() {
    check(
        inline(
            r#"<Response>
              <Play>relative.wav</Play>
              <Gather numDigits="1"><Say>Press a key.</Say><Play>beep.wav</Play></Gather>
              <Record action="/r"/>
              <Dial action="after">+15551234567</Dial>
              <Redirect>next</Redirect>
              <Say>Goodbye.</Say>
            </Response>"#,
        ),
        vec![start(), digits("5"), done()],
        expect![[r##"
            > start
              gather timeout 5000 ms, finish "#", digits 1: [say "Press a key."]
              [warn] <Play> skipped: "relative.wav" is relative and the inline document has no URL to resolve it against
              [warn] in <Gather>, <Play> skipped: "beep.wav" is relative and the inline document has no URL to resolve it against
            > gathered "5"
              say "Goodbye."
              [warn] digits "5" not submitted: the inline document has no URL; next verb
              [warn] <Record> skipped: "/r" is relative and the inline document has no URL to resolve it against
              [warn] <Dial> skipped: "after" is relative and the inline document has no URL to resolve it against
              [warn] <Redirect> skipped: "next" is relative and the inline document has no URL to resolve it against
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "##]],
    );
    check(
        inline(r#"<Response><Record/><Redirect>https://example.org/abs</Redirect></Response>"#),
        vec![start(), recorded(3_000, "1")],
        expect![[r#"
            > start
              record timeout 5000 ms, finish "1234567890*#", max 3600000 ms, beep, trim
            > recorded 3000 ms, key "1"
              fetch POST https://example.org/abs
              [warn] recording https://api.example/2010-04-01/Accounts/AC00000000000000000000000000000000/Recordings/RE00000000000000000000000000000001 not submitted: the inline document has no URL; next verb
        "#]],
    );
}

#[test]
fn the_fallback_url_is_tried_once_with_the_error() {
    check(
        with_fallback,
        vec![
            start(),
            reply_with(500, Some("text/html"), "<h1>Internal Server Error</h1>"),
            reply("<Response><Say>From the fallback.</Say></Response>"),
            done(),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 500 text/html (30 bytes)
              fetch GET https://backup.example.net/fallback ErrorCode=11200 ErrorUrl=https://example.com/voice?call=1
              [warn] https://example.com/voice?call=1 answered HTTP 500; trying the fallback URL https://backup.example.net/fallback
            > fetched 200 text/xml; charset=utf-8 (50 bytes)
              say "From the fallback."
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "#]],
    );
    // the fallback fails too: the application error
    check(
        with_fallback,
        vec![start(), failed("connection refused"), failed("timed out")],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetch failed: connection refused
              fetch GET https://backup.example.net/fallback ErrorCode=11200 ErrorUrl=https://example.com/voice?call=1
              [warn] the request failed: connection refused; trying the fallback URL https://backup.example.net/fallback
            > fetch failed: timed out
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 11200: the request failed: timed out
        "#]],
    );
    // an action that fails falls back as well, with the action's parameters
    check(
        with_fallback,
        vec![
            start(),
            reply(r#"<Response><Gather action="/g"/></Response>"#),
            digits("7"),
            reply("<Response><Say>unclosed</Response>"),
        ],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (42 bytes)
              gather timeout 5000 ms, finish "#", digits any: []
            > gathered "7"
              fetch POST https://example.com/g Digits=7
            > fetched 200 text/xml; charset=utf-8 (34 bytes)
              fetch GET https://backup.example.net/fallback Digits=7 ErrorCode=12100 ErrorUrl=https://example.com/g
              [warn] https://example.com/g: the document is not well-formed XML: expected 'Say' tag, not 'Response' at 1:24; trying the fallback URL https://backup.example.net/fallback
        "##]],
    );
}

#[test]
fn what_is_not_twiml_is_an_application_error() {
    // RapidPro answers an unknown channel with HTTP 400 and JSON
    check(
        with_url,
        vec![
            start(),
            reply_with(
                400,
                Some("application/json"),
                r#"{"error": "unknown channel"}"#,
            ),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 400 application/json (28 bytes)
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 11200: https://example.com/voice?call=1 answered HTTP 400
        "#]],
    );
    check(
        with_url,
        vec![start(), failed("egress policy refuses 10.0.0.1")],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetch failed: egress policy refuses 10.0.0.1
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 11200: the request failed: egress policy refuses 10.0.0.1
        "#]],
    );
    check(
        with_url,
        vec![
            start(),
            reply_with(200, Some("application/json"), r#"{"ok": true}"#),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 application/json (12 bytes)
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 12300: https://example.com/voice?call=1 did not answer TwiML (application/json, body "{\"ok\": true}")
        "#]],
    );
    check(
        with_url,
        vec![start(), reply_with(204, None, "")],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 204 (no content type) (0 bytes)
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 12300: https://example.com/voice?call=1 did not answer TwiML (no content type, body "")
        "#]],
    );
    check_doc(
        "<Reply><Say>Hi</Say></Reply>",
        vec![],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (28 bytes)
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 12100: https://example.com/voice?call=1: the root element is <Reply>, not <Response>
        "#]],
    );
    check_doc(
        "<Response><Say>Hi</Say><Response>",
        vec![],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (33 bytes)
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 12100: https://example.com/voice?call=1: the document is not well-formed XML: the root node was opened but never closed
        "#]],
    );
    check(
        |ctx| ctx.url = None,
        vec![start()],
        expect![[r#"
            > start
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 11200: the call has neither a URL nor a document
        "#]],
    );
}

#[test]
fn plain_text_is_said_and_audio_is_played() {
    check(
        with_url,
        vec![
            start(),
            reply_with(200, Some("text/plain"), "  Hello\n from text. "),
            done(),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/plain (20 bytes)
              say "Hello from text."
              [info] https://example.com/voice?call=1 answered plain text; saying it
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "#]],
    );
    check(
        with_url,
        vec![
            start(),
            reply_with(200, Some("audio/mpeg"), "ID3\u{3}\u{0}"),
            done(),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 audio/mpeg (5 bytes)
              play https://example.com/voice?call=1
              [info] https://example.com/voice?call=1 answered audio/mpeg; playing it
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "#]],
    );
    // markup is TwiML whatever the content type (Go's sniffing may call it text/plain)
    check(
        with_url,
        vec![
            start(),
            reply_with(
                200,
                Some("text/plain; charset=utf-8"),
                "<Response><Hangup/></Response>",
            ),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/plain; charset=utf-8 (30 bytes)
              hangup
        "#]],
    );
}

#[test]
fn documents_too_large_to_run_or_keep() {
    let big = format!("<Response><Say>{}</Say></Response>", "a ".repeat(40_000));
    check_doc(
        &big,
        vec![],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (80032 bytes)
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 11750: https://example.com/voice?call=1: the document is 80032 bytes; the limit is 65536
        "#]],
    );
    // under the document limit, but JSON doubles every quote: too large to keep in the state
    let quotes = format!("<Response><Say>{}</Say></Response>", "\" ".repeat(30_000));
    check_doc(
        &quotes,
        vec![],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (60032 bytes)
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 12100: the document takes 90035 bytes to keep; the limit is 57344
        "#]],
    );
}

#[test]
fn unknown_verbs_and_bad_attributes_are_logged_and_skipped() {
    check_doc(
        r#"<Response>
          <Enqueue>support</Enqueue>
          <Whisper>psst</Whisper>
          <Say loop="many" rate="fast">Still said.</Say>
          <Gather timeout="soon"><Record/><Say>Press.</Say></Gather>
        </Response>"#,
        vec![done(), timeout()],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (227 bytes)
              say "Still said."
              [warn] <Enqueue> is not supported; skipped
              [warn] <Whisper> is not a TwiML verb; skipped
              [warn] attribute rate of <Say> is not supported; ignored
              [warn] <Say loop="many"> is not a whole number; using 1
              [warn] <Record> is not allowed in <Gather>; skipped
              [warn] <Gather timeout="soon"> is not a whole number; using 5
            > prompt-done
              gather timeout 5000 ms, finish "#", digits any: [say "Press."]
            > gathered nothing (timed out)
              hangup
              [debug] no digits gathered; next verb
              [debug] end of the document; hanging up
        "##]],
    );
}

#[test]
fn redirected_abandons_the_current_verb() {
    // during a Say, to a URL (an API update), then to an inline document
    check_doc(
        r#"<Response><Say>A long story.</Say><Say>Never told.</Say></Response>"#,
        vec![
            redirect_to("https://new.example/twiml", HttpMethod::Get),
            reply("<Response><Gather/></Response>"),
            redirect_doc("<Response><Say>Inline now.</Say></Response>"),
            done(),
        ],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (67 bytes)
              say "A long story."
            > redirected to GET https://new.example/twiml
              fetch GET https://new.example/twiml
              [info] redirected to https://new.example/twiml
            > fetched 200 text/xml; charset=utf-8 (30 bytes)
              gather timeout 5000 ms, finish "#", digits any: []
            > redirected to a document
              say "Inline now."
              [info] redirected to a new document
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "##]],
    );
    // while a fetch is pending; a bad inline document; a redirect with nothing
    check_doc(
        r#"<Response><Redirect>/slow</Redirect></Response>"#,
        vec![redirect_to("relative/url", HttpMethod::Post)],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (47 bytes)
              fetch POST https://example.com/slow
            > redirected to POST relative/url
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [error] application error 11200: redirected to "relative/url": "relative/url" is relative and the inline document has no URL to resolve it against
        "#]],
    );
    check_doc(
        r#"<Response><Pause length="10"/></Response>"#,
        vec![
            Ev::Event(FlowEvent::Redirected(Redirect {
                url: None,
                method: HttpMethod::Post,
                document: None,
            })),
            redirect_doc("<Response>"),
        ],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (41 bytes)
              pause 10000 ms
            > redirected to POST nowhere
              [warn] a redirect with neither a URL nor a document was ignored
            > redirected to a document
              say "We are sorry, an application error has occurred. Goodbye."
              hangup
              [info] redirected to a new document
              [error] application error 12100: the inline document: the document is not well-formed XML: the root node was opened but never closed
        "#]],
    );
}

#[test]
fn after_the_call_ends_events_are_ignored() {
    check_doc(
        r#"<Response><Gather/></Response>"#,
        vec![
            hangup(),
            digits("1"),
            redirect_doc("<Response><Say>x</Say></Response>"),
            hangup(),
        ],
        expect![[r##"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (30 bytes)
              gather timeout 5000 ms, finish "#", digits any: []
            > hangup
              [debug] the call ended
            > gathered "1"
              [debug] gathered after the end of the call ignored
            > redirected to a document
              [debug] redirected after the end of the call ignored
            > hangup
        "##]],
    );
    // events that do not answer what was asked are ignored too
    check_doc(
        r#"<Response><Say>Hi</Say></Response>"#,
        vec![digits("1"), dial_done("completed", 3), start(), done()],
        expect![[r#"
            > start
              fetch POST https://example.com/voice?call=1
            > fetched 200 text/xml; charset=utf-8 (34 bytes)
              say "Hi"
            > gathered "1"
              [warn] unexpected gathered while waiting for prompt-done; ignored
            > dial-done completed, 3 s
              [warn] unexpected dial-done while waiting for prompt-done; ignored
            > start
              [warn] unexpected start while waiting for prompt-done; ignored
            > prompt-done
              hangup
              [debug] end of the document; hanging up
        "#]],
    );
}

#[test]
fn the_state_between_events() {
    expect![[r##"
        > start
          fetch POST https://example.com/voice?call=1
          state {"wait":{"for":"fetch","url":"https://example.com/voice?call=1","method":"POST"}}
        > fetched 200 text/xml; charset=utf-8 (95 bytes)
          gather timeout 5000 ms, finish "#", digits 1: [say "Press."]
          state {"doc":{"url":"https://example.com/voice?call=1","verbs":[{"verb":"gather","prompts":[{"say":{"text":"Press.","loops":1}}],"action":"g","method":"POST","timeout_ms":5000,"finish_on_key":"#","num_digits":1,"action_on_empty":false},{"verb":"say","text":"Bye.","loops":1}],"next":1},"wait":{"for":"gather","action":"https://example.com/g","method":"POST","on_empty":false}}
        > gathered nothing (timed out)
          say "Bye."
          [debug] no digits gathered; next verb
          state {"doc":{"url":"https://example.com/voice?call=1","verbs":[{"verb":"gather","prompts":[{"say":{"text":"Press.","loops":1}}],"action":"g","method":"POST","timeout_ms":5000,"finish_on_key":"#","num_digits":1,"action_on_empty":false},{"verb":"say","text":"Bye.","loops":1}],"next":2},"wait":{"for":"prompt"}}
        > prompt-done
          hangup
          [debug] end of the document; hanging up
          state {"wait":{"for":"done"}}
    "##]]
    .assert_eq(&transcript(
        with_url,
        vec![
            start(),
            reply(r#"<Response><Gather action="g" numDigits="1"><Say>Press.</Say></Gather><Say>Bye.</Say></Response>"#),
            timeout(),
            done(),
        ],
        true,
    ));
}

#[test]
fn a_fifty_verb_document() {
    let mut doc = String::from("<Response>\n");
    for i in 1..=50 {
        doc.push_str(&match i % 5 {
            0 => format!("  <Pause length=\"{}\"/>\n", i / 5),
            1 => format!("  <Say>Line {i}.</Say>\n"),
            2 => format!("  <Play>clip{i}.wav</Play>\n"),
            3 => format!(
                "  <Gather numDigits=\"1\" action=\"/g{i}\"><Say>Press for {i}.</Say></Gather>\n"
            ),
            _ => format!("  <Play digits=\"w{i}\"/>\n"),
        });
    }
    doc.push_str("</Response>");
    let mut script = vec![start(), reply(&doc)];
    for i in 1..=50 {
        match i % 5 {
            3 => script.push(timeout()),
            _ => script.push(done()),
        }
    }
    let t = transcript(with_url, script, false);
    let commands = t
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("  ["))
        .count();
    // the fetch, 50 verbs, the hangup
    assert_eq!(commands, 52, "{t}");
    expect![[r##"
        > start
          fetch POST https://example.com/voice?call=1
        > fetched 200 text/xml; charset=utf-8 (1663 bytes)
          say "Line 1."
        > prompt-done
          play https://example.com/clip2.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 3."]
        > gathered nothing (timed out)
          send-digits "w4"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 1000 ms
        > prompt-done
          say "Line 6."
        > prompt-done
          play https://example.com/clip7.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 8."]
        > gathered nothing (timed out)
          send-digits "w9"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 2000 ms
        > prompt-done
          say "Line 11."
        > prompt-done
          play https://example.com/clip12.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 13."]
        > gathered nothing (timed out)
          send-digits "w14"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 3000 ms
        > prompt-done
          say "Line 16."
        > prompt-done
          play https://example.com/clip17.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 18."]
        > gathered nothing (timed out)
          send-digits "w19"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 4000 ms
        > prompt-done
          say "Line 21."
        > prompt-done
          play https://example.com/clip22.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 23."]
        > gathered nothing (timed out)
          send-digits "w24"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 5000 ms
        > prompt-done
          say "Line 26."
        > prompt-done
          play https://example.com/clip27.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 28."]
        > gathered nothing (timed out)
          send-digits "w29"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 6000 ms
        > prompt-done
          say "Line 31."
        > prompt-done
          play https://example.com/clip32.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 33."]
        > gathered nothing (timed out)
          send-digits "w34"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 7000 ms
        > prompt-done
          say "Line 36."
        > prompt-done
          play https://example.com/clip37.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 38."]
        > gathered nothing (timed out)
          send-digits "w39"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 8000 ms
        > prompt-done
          say "Line 41."
        > prompt-done
          play https://example.com/clip42.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 43."]
        > gathered nothing (timed out)
          send-digits "w44"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 9000 ms
        > prompt-done
          say "Line 46."
        > prompt-done
          play https://example.com/clip47.wav
        > prompt-done
          gather timeout 5000 ms, finish "#", digits 1: [say "Press for 48."]
        > gathered nothing (timed out)
          send-digits "w49"
          [debug] no digits gathered; next verb
        > prompt-done
          pause 10000 ms
        > prompt-done
          hangup
          [debug] end of the document; hanging up
    "##]]
    .assert_eq(&t);
}

#[test]
fn arbitrary_event_sequences_never_panic() {
    let docs = [
        "<Response><Gather action=\"/g\"><Say>a</Say></Gather><Record/><Dial action=\"d\">1</Dial><Redirect>/r</Redirect></Response>",
        "<Response><Play>x.wav</Play><Pause/><Reject/></Response>",
        "not xml",
        "<Response><Dial>5</Dial></Response>",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut t = FlowTester::<Twiml>::new("{}");
        t.ctx.url = Some(URL.into());
        if next() % 2 == 0 {
            t.ctx.fallback_url = Some(FALLBACK.into());
        }
        for _ in 0..20 {
            let doc = docs[(next() % docs.len() as u64) as usize];
            let ev = match next() % 10 {
                0 => start(),
                1 => reply(doc),
                2 => reply_with(500, None, doc),
                3 => done(),
                4 => digits("12"),
                5 => timeout(),
                6 => recorded(1000, ""),
                7 => dial_done("failed", 0),
                8 => redirect_doc(doc),
                _ => empty_recording(),
            };
            let step = t.send(ev.into_event(URL)).unwrap();
            assert!(step.commands.len() <= 2);
        }
    }
}

#[test]
fn log_lines_are_bounded() {
    let mut out = callflow_sdk::flow::Output::default();
    for i in 0..100 {
        out.log(
            callflow_sdk::flow::LogLevel::Warn,
            format!("{i} {}", "x".repeat(1000)),
        );
    }
    super::bound_logs(&mut out);
    assert_eq!(out.logs.len(), 40);
    assert!(out.logs[0].message.chars().count() <= 301);
    assert_eq!(out.logs[39].message, "… and 61 more log lines left out");
    let state = State::default();
    assert_eq!(
        serde_json::to_string(&state).unwrap(),
        r#"{"wait":{"for":"start"}}"#
    );
}
