//! The interpreter: a state machine over the call-flow world's events. [`handle`] takes one event
//! and the [`State`] the previous one left, and writes the commands to carry out next (at most a
//! few: one verb's worth, or the application error's two) and its log lines into an [`Output`].
//!
//! One verb runs at a time: audio verbs wait for `prompt-done`, `Gather`, `Record` and `Dial` for
//! their results, fetches (`Redirect`, actions, the call's URL) for `fetched`; verbs that need no
//! answer (skipped ones) are passed over in the same step. A fetched document replaces the current
//! one; the end of a document hangs up.

use callflow_sdk::flow::{
    CallContext, Command, Dial, DialResult, DialTarget, FetchResult, FlowEvent, Gather,
    GatherResult, HttpMethod, LogLevel, Output, Param, Play, Record, RecordResult, Redirect,
    RejectReason, Say,
};
use serde::{Deserialize, Serialize};

use crate::document::{Method, Prompt, SayVerb, Target, Verb};
use crate::parse::{MAX_DOCUMENT_BYTES, clip, parse};

/// What Twilio says when a call's instructions cannot be had or run.
pub const APPLICATION_ERROR: &str = "We are sorry, an application error has occurred. Goodbye.";

/// The API version every request names.
const API_VERSION: &str = "2010-04-01";

/// Encoded size the kept document may take: the host refuses states over 64 KiB, and the rest
/// of the state (the pending fetch's parameters, URLs) needs room too.
pub const MAX_KEPT_DOCUMENT_BYTES: usize = 56 << 10;
const _: () = assert!(MAX_KEPT_DOCUMENT_BYTES < 64 << 10);
/// What one kept verb, prompt or dial target encodes to besides its strings, at most (the
/// longest, a Dial's, is about 160 bytes with every number at its largest).
const KEPT_ITEM_BYTES: usize = 256;

/// Log lines one event may produce; the rest are counted in a last line (the host bounds log
/// bytes as well).
const MAX_LOG_LINES: usize = 40;
/// Characters kept of one log line.
const MAX_LOG_CHARS: usize = 300;

/// Twilio's error codes, sent to the fallback URL as `ErrorCode`.
mod error_code {
    /// The document could not be fetched (connection, timeout, non-2xx status).
    pub const HTTP_RETRIEVAL: &str = "11200";
    /// The document is not well-formed TwiML.
    pub const DOCUMENT_PARSE: &str = "12100";
    /// The response's content type is not one TwiML can be read from.
    pub const CONTENT_TYPE: &str = "12300";
    /// The response is larger than a document may be.
    pub const TOO_LARGE: &str = "11750";
}

/// What the interpreter keeps between events (encoded as JSON by the SDK).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The document being run; dropped once a fetch replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<Doc>,
    /// What the last commands wait for.
    #[serde(default)]
    pub wait: Wait,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    /// Where the document came from (relative URLs resolve against it); `None` when inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub verbs: Vec<Verb>,
    /// The next verb to run.
    pub next: usize,
}

/// The event the interpreter expects next.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "kebab-case")]
pub enum Wait {
    /// Nothing has happened yet.
    #[default]
    Start,
    /// A document: `fetched`. The request is kept so a failure can be retried at the fallback
    /// URL with the same parameters (only when the call has a fallback URL).
    Fetch {
        url: String,
        method: Method,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        params: Vec<(String, String)>,
        /// This is the request to the fallback URL (so it has none).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fallback: bool,
    },
    /// `prompt-done` of a Say, Play, Pause or Play digits.
    Prompt,
    /// A document arrived that did not come from a fetch (inline, or from the API), so it has
    /// no fallback; never kept past the step that loads it.
    Running,
    Gather {
        /// `None` when the document has no URL to submit to (inline).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        method: Method,
        on_empty: bool,
    },
    Record {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        method: Method,
    },
    Dial {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        method: Method,
    },
    /// The call is over (hung up, rejected, or the application failed); events are ignored.
    Done,
}

/// Handles one event.
pub fn handle(ctx: &CallContext, state: &mut State, event: FlowEvent, out: &mut Output) {
    Step { ctx, state, out }.event(event);
    bound_logs(out);
}

struct Step<'a> {
    ctx: &'a CallContext,
    state: &'a mut State,
    out: &'a mut Output,
}

/// Why a verb did not run.
type Skip = String;

impl Step<'_> {
    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        self.out.log(level, message);
    }

    fn event(&mut self, event: FlowEvent) {
        if self.state.wait == Wait::Done {
            if !matches!(event, FlowEvent::Hangup) {
                self.log(
                    LogLevel::Debug,
                    format!("{} after the end of the call ignored", event_name(&event)),
                );
            }
            return;
        }
        let wait = self.state.wait.clone();
        match (event, wait) {
            (FlowEvent::Start, Wait::Start) => self.start(),
            (FlowEvent::Fetched(result), Wait::Fetch { .. }) => self.fetched(result),
            (FlowEvent::PromptDone, Wait::Prompt) => self.run(),
            (
                FlowEvent::Gathered(g),
                Wait::Gather {
                    action,
                    method,
                    on_empty,
                },
            ) => self.gathered(g, action, method, on_empty),
            (FlowEvent::Recorded(r), Wait::Record { action, method }) => {
                self.recorded(r, action, method)
            }
            (FlowEvent::DialDone(d), Wait::Dial { action, method }) => {
                self.dial_done(d, action, method)
            }
            (FlowEvent::Redirected(r), _) => self.redirected(r),
            (FlowEvent::Hangup, _) => {
                self.state.wait = Wait::Done;
                self.state.doc = None;
                self.log(LogLevel::Debug, "the call ended");
            }
            // a gather's prompts may be reported as they finish; its result follows
            (FlowEvent::PromptDone, _) => {}
            (event, wait) => self.log(
                LogLevel::Warn,
                format!(
                    "unexpected {} while waiting for {}; ignored",
                    event_name(&event),
                    wait_name(&wait)
                ),
            ),
        }
    }

    fn start(&mut self) {
        if let Some(document) = self.ctx.document.clone() {
            self.state.wait = Wait::Running;
            return self.load(&document, None);
        }
        let Some(url) = self.ctx.url.clone() else {
            return self.application_error(
                "the call has neither a URL nor a document".into(),
                error_code::HTTP_RETRIEVAL,
            );
        };
        let method = self.method_of(self.ctx.method);
        let params = self.params(&self.ctx.status);
        self.fetch(url, method, params, false);
    }

    /// Asks for a document; the current one is done with.
    fn fetch(
        &mut self,
        url: String,
        method: Method,
        params: Vec<(String, String)>,
        fallback: bool,
    ) {
        self.out.push(Command::Fetch(callflow_sdk::flow::Fetch {
            url: url.clone(),
            method: http_method(method),
            params: params
                .iter()
                .map(|(n, v)| Param::new(n.as_str(), v.as_str()))
                .collect(),
        }));
        self.state.doc = None;
        // the parameters are kept only for a fallback request
        let params = if fallback || self.ctx.fallback_url.is_none() {
            Vec::new()
        } else {
            params
        };
        self.state.wait = Wait::Fetch {
            url,
            method,
            params,
            fallback,
        };
    }

    /// The parameters of every request, in this order: CallSid, AccountSid, From, To, Caller,
    /// Called, CallStatus, Direction, ApiVersion, then ParentCallSid and AnsweredBy when known.
    fn params(&self, status: &str) -> Vec<(String, String)> {
        let c = self.ctx;
        let mut p: Vec<(String, String)> = [
            ("CallSid", c.call_sid.as_str()),
            ("AccountSid", &c.account_sid),
            ("From", &c.from),
            ("To", &c.to),
            ("Caller", &c.from),
            ("Called", &c.to),
            ("CallStatus", status),
            ("Direction", &c.direction),
            ("ApiVersion", API_VERSION),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
        if let Some(parent) = &c.parent_call_sid {
            p.push(("ParentCallSid".into(), parent.clone()));
        }
        if let Some(answered_by) = &c.answered_by {
            p.push(("AnsweredBy".into(), answered_by.clone()));
        }
        p
    }

    /// The parameters of a verb's action: the call is live, whatever the context says.
    fn action_params(&self, extra: Vec<(&str, String)>) -> Vec<(String, String)> {
        let mut p = self.params("in-progress");
        p.extend(extra.into_iter().map(|(n, v)| (n.to_owned(), v)));
        p
    }

    fn method_of(&mut self, m: HttpMethod) -> Method {
        match m {
            HttpMethod::Get => Method::Get,
            HttpMethod::Post => Method::Post,
            other => {
                self.log(
                    LogLevel::Warn,
                    format!("{other:?} cannot fetch TwiML; using POST"),
                );
                Method::Post
            }
        }
    }

    fn fetched(&mut self, result: FetchResult) {
        let response = match result {
            FetchResult::Failed(why) => {
                return self.fetch_failed(
                    format!("the request failed: {why}"),
                    error_code::HTTP_RETRIEVAL,
                );
            }
            FetchResult::Response(r) => r,
        };
        let Wait::Fetch { url: asked, .. } = &self.state.wait else {
            return;
        };
        let url = if response.url.is_empty() {
            asked.clone()
        } else {
            response.url.clone()
        };
        if !(200..300).contains(&response.status) {
            return self.fetch_failed(
                format!("{url} answered HTTP {}", response.status),
                error_code::HTTP_RETRIEVAL,
            );
        }
        let body = response.body.trim_start_matches('\u{feff}').trim_start();
        let media = response
            .content_type
            .as_deref()
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase())
            .unwrap_or_default();
        // markup is read as TwiML whatever the content type says (some servers send none)
        if body.starts_with('<') {
            return self.load(&response.body, Some(url));
        }
        if media == "text/plain" {
            // Twilio reads a plain-text answer aloud, then hangs up
            let text = body.split_whitespace().collect::<Vec<_>>().join(" ");
            if !text.is_empty() && text.len() <= MAX_DOCUMENT_BYTES {
                self.log(
                    LogLevel::Info,
                    format!("{url} answered plain text; saying it"),
                );
                return self.load_verbs(
                    vec![Verb::Say(SayVerb {
                        text,
                        voice: None,
                        language: None,
                        loops: 1,
                    })],
                    Some(url),
                    body.len(),
                );
            }
        }
        if media.starts_with("audio/") {
            // Twilio plays an audio answer, then hangs up
            self.log(
                LogLevel::Info,
                format!("{url} answered {media}; playing it"),
            );
            let play = crate::document::PlayVerb {
                url: url.clone(),
                loops: 1,
            };
            return self.load_verbs(vec![Verb::Play(play)], Some(url.clone()), url.len());
        }
        let what = if media.is_empty() {
            "no content type".to_owned()
        } else {
            media
        };
        self.fetch_failed(
            format!("{url} did not answer TwiML ({what}, body {:?})", clip(body)),
            error_code::CONTENT_TYPE,
        )
    }

    /// A document could not be had: try the fallback URL once, else the application error.
    fn fetch_failed(&mut self, why: String, code: &str) {
        if let Wait::Fetch {
            url,
            params,
            fallback: false,
            ..
        } = &self.state.wait
            && let Some(fallback) = self.ctx.fallback_url.clone()
        {
            let mut params = params.clone();
            params.push(("ErrorCode".into(), code.into()));
            params.push(("ErrorUrl".into(), url.clone()));
            self.log(
                LogLevel::Warn,
                format!("{why}; trying the fallback URL {fallback}"),
            );
            let method = self.method_of(self.ctx.fallback_method);
            return self.fetch(fallback, method, params, true);
        }
        self.application_error(why, code)
    }

    /// Twilio's answer to instructions that cannot be run: an apology, then hang up. The log
    /// line names Twilio's error code (the host counts application errors by it).
    fn application_error(&mut self, why: String, code: &str) {
        self.log(LogLevel::Error, format!("application error {code}: {why}"));
        self.out.say(APPLICATION_ERROR).hangup();
        self.state.doc = None;
        self.state.wait = Wait::Done;
    }

    /// Parses and runs a document (`url` is where it came from, for relative URLs).
    fn load(&mut self, text: &str, url: Option<String>) {
        let parsed = parse(text);
        for d in parsed.diagnostics {
            self.out.logs.push(d);
        }
        match parsed.verbs {
            Ok(verbs) => self.load_verbs(verbs, url, text.len()),
            Err(why) => {
                let code = if text.len() > MAX_DOCUMENT_BYTES {
                    error_code::TOO_LARGE
                } else {
                    error_code::DOCUMENT_PARSE
                };
                let from = url.as_deref().unwrap_or("the inline document");
                self.fetch_failed(format!("{from}: {why}"), code)
            }
        }
    }

    /// Runs `verbs`, read from `source_len` bytes, if the state can keep them.
    fn load_verbs(&mut self, verbs: Vec<Verb>, url: Option<String>, source_len: usize) {
        // The document lives in the state, which the host bounds. Encoding it is measured only
        // when a cheap bound says it might not fit: a string from the text encodes to at most 6
        // bytes per byte (`\u00XX`), and a verb, prompt or target adds at most KEPT_ITEM_BYTES.
        let items: usize = verbs
            .iter()
            .map(|v| match v {
                Verb::Gather(g) => 1 + g.prompts.len(),
                Verb::Dial(d) => 1 + d.targets.len(),
                _ => 1,
            })
            .sum();
        let bound = source_len
            .saturating_mul(6)
            .saturating_add(items.saturating_mul(KEPT_ITEM_BYTES));
        let size = if bound <= MAX_KEPT_DOCUMENT_BYTES {
            0
        } else {
            serde_json::to_vec(&verbs).map_or(usize::MAX, |v| v.len())
        };
        if size > MAX_KEPT_DOCUMENT_BYTES {
            return self.fetch_failed(
                format!("the document takes {size} bytes to keep; the limit is {MAX_KEPT_DOCUMENT_BYTES}"),
                error_code::DOCUMENT_PARSE,
            );
        }
        self.state.doc = Some(Doc {
            url,
            verbs,
            next: 0,
        });
        self.run();
    }

    /// Runs verbs from the current one until one waits for an answer or the call ends.
    fn run(&mut self) {
        loop {
            let Some(doc) = self.state.doc.as_mut() else {
                // only reachable after a fetch replaced the document, which waits for `fetched`
                self.log(LogLevel::Debug, "no document to run; hanging up");
                return self.end(Command::Hangup);
            };
            let Some(verb) = doc.verbs.get(doc.next).cloned() else {
                self.log(LogLevel::Debug, "end of the document; hanging up");
                return self.end(Command::Hangup);
            };
            doc.next += 1;
            match self.verb(verb) {
                Ok(Some(wait)) => {
                    self.state.wait = wait;
                    return;
                }
                // the verb ended the call or started a fetch: the state is set
                Ok(None) => return,
                Err(why) => self.log(LogLevel::Warn, why),
            }
        }
    }

    fn end(&mut self, command: Command) {
        self.out.push(command);
        self.state.doc = None;
        self.state.wait = Wait::Done;
    }

    fn doc_url(&self) -> Option<&str> {
        self.state.doc.as_ref().and_then(|d| d.url.as_deref())
    }

    fn resolve(&self, verb: &str, url: &str) -> Result<String, Skip> {
        resolve(self.doc_url(), url).map_err(|why| format!("<{verb}> skipped: {why}"))
    }

    /// An action: the given URL resolved, or the document's own (if it has one).
    fn action(&self, verb: &str, action: Option<&str>) -> Result<Option<String>, Skip> {
        match action {
            Some(a) => self.resolve(verb, a).map(Some),
            None => Ok(self.doc_url().map(str::to_owned)),
        }
    }

    /// Starts one verb: `Ok(Some(wait))` when it waits for an event, `Ok(None)` when it set the
    /// state itself (a fetch, the end of the call), `Err` when it was skipped.
    fn verb(&mut self, verb: Verb) -> Result<Option<Wait>, Skip> {
        let command = match verb {
            Verb::Say(s) => Command::Say(say(s)),
            Verb::Play(p) => Command::Play(Play {
                url: self.resolve("Play", &p.url)?,
                loops: p.loops,
            }),
            Verb::SendDigits { digits } => Command::SendDigits(digits),
            Verb::Pause { ms } => Command::Pause(ms),
            Verb::Gather(g) => {
                let action = self.action("Gather", g.action.as_deref())?;
                let mut prompts = Vec::with_capacity(g.prompts.len());
                for p in g.prompts {
                    prompts.push(match p {
                        Prompt::Say(s) => callflow_sdk::flow::Prompt::Say(say(s)),
                        Prompt::Pause(ms) => callflow_sdk::flow::Prompt::Pause(ms),
                        Prompt::Play(p) => match self.resolve("Play", &p.url) {
                            Ok(url) => callflow_sdk::flow::Prompt::Play(Play {
                                url,
                                loops: p.loops,
                            }),
                            Err(why) => {
                                self.log(LogLevel::Warn, format!("in <Gather>, {why}"));
                                continue;
                            }
                        },
                    });
                }
                self.out.push(Command::Gather(Gather {
                    prompts,
                    timeout_ms: g.timeout_ms,
                    finish_on_key: g.finish_on_key,
                    num_digits: g.num_digits,
                }));
                return Ok(Some(Wait::Gather {
                    action,
                    method: g.method,
                    on_empty: g.action_on_empty,
                }));
            }
            Verb::Record(r) => {
                let action = self.action("Record", r.action.as_deref())?;
                self.out.push(Command::Record(Record {
                    timeout_ms: r.timeout_ms,
                    finish_on_key: r.finish_on_key,
                    max_length_ms: r.max_length_ms,
                    play_beep: r.play_beep,
                    trim_silence: r.trim_silence,
                }));
                return Ok(Some(Wait::Record {
                    action,
                    method: r.method,
                }));
            }
            Verb::Dial(d) => {
                // without an action the document goes on, so there is no default URL
                let action = d.action.map(|a| self.resolve("Dial", &a)).transpose()?;
                self.out.push(Command::Dial(Dial {
                    targets: d
                        .targets
                        .into_iter()
                        .map(|t| match t {
                            Target::Number(n) => DialTarget::Number(n),
                            Target::Sip(s) => DialTarget::Sip(s),
                        })
                        .collect(),
                    caller_id: d.caller_id,
                    timeout_ms: d.timeout_ms,
                    time_limit_ms: d.time_limit_ms,
                    hangup_on_star: d.hangup_on_star,
                    record: d.record,
                }));
                return Ok(Some(Wait::Dial {
                    action,
                    method: d.method,
                }));
            }
            Verb::Redirect { url, method } => {
                let url = self.resolve("Redirect", &url)?;
                let params = self.params(&self.ctx.status);
                self.fetch(url, method, params, false);
                return Ok(None);
            }
            Verb::Hangup => {
                self.end(Command::Hangup);
                return Ok(None);
            }
            Verb::Reject { busy } => {
                let reason = if busy {
                    RejectReason::Busy
                } else {
                    RejectReason::Rejected
                };
                self.end(Command::Reject(reason));
                return Ok(None);
            }
        };
        self.out.push(command);
        Ok(Some(Wait::Prompt))
    }

    fn gathered(
        &mut self,
        g: GatherResult,
        action: Option<String>,
        method: Method,
        on_empty: bool,
    ) {
        if g.digits.is_empty() && !on_empty {
            self.log(LogLevel::Debug, "no digits gathered; next verb");
            return self.run();
        }
        let Some(action) = action else {
            self.log(
                LogLevel::Warn,
                format!(
                    "digits {:?} not submitted: the inline document has no URL; next verb",
                    g.digits
                ),
            );
            return self.run();
        };
        let params = self.action_params(vec![("Digits", g.digits)]);
        self.fetch(action, method, params, false);
    }

    fn recorded(&mut self, r: RecordResult, action: Option<String>, method: Method) {
        let url = match r.recording_url {
            Some(url) if !r.empty => url,
            _ => {
                self.log(LogLevel::Debug, "the recording is empty; next verb");
                return self.run();
            }
        };
        let Some(action) = action else {
            self.log(
                LogLevel::Warn,
                format!("recording {url} not submitted: the inline document has no URL; next verb"),
            );
            return self.run();
        };
        let mut extra = vec![
            ("RecordingUrl", url),
            // whole seconds, rounded up as the Recording resource's duration is
            (
                "RecordingDuration",
                r.duration_ms.div_ceil(1000).to_string(),
            ),
        ];
        if let Some(sid) = r.recording_sid {
            extra.push(("RecordingSid", sid));
        }
        if !r.digits.is_empty() {
            extra.push(("Digits", r.digits));
        }
        let params = self.action_params(extra);
        self.fetch(action, method, params, false);
    }

    fn dial_done(&mut self, d: DialResult, action: Option<String>, method: Method) {
        let Some(action) = action else {
            self.log(
                LogLevel::Debug,
                format!("the dialled call ended ({}); next verb", d.status),
            );
            return self.run();
        };
        let mut extra = vec![("DialCallStatus", d.status)];
        if let Some(sid) = d.call_sid {
            extra.push(("DialCallSid", sid));
        }
        extra.push(("DialCallDuration", d.duration_s.to_string()));
        if let Some(r) = d.recording {
            extra.push(("RecordingUrl", r.url));
            extra.push(("RecordingSid", r.sid));
            extra.push(("RecordingDuration", r.duration_s.to_string()));
        }
        let params = self.action_params(extra);
        self.fetch(action, method, params, false);
    }

    /// New instructions from the API: whatever ran is abandoned.
    fn redirected(&mut self, r: Redirect) {
        if let Some(document) = r.document {
            self.log(LogLevel::Info, "redirected to a new document");
            self.state.doc = None;
            self.state.wait = Wait::Running;
            return self.load(&document, None);
        }
        let Some(url) = r.url else {
            return self.log(
                LogLevel::Warn,
                "a redirect with neither a URL nor a document was ignored",
            );
        };
        match resolve(None, &url) {
            Ok(url) => {
                self.log(LogLevel::Info, format!("redirected to {url}"));
                let method = self.method_of(r.method);
                let params = self.params(&self.ctx.status);
                self.fetch(url, method, params, false);
            }
            Err(why) => self.application_error(
                format!("redirected to {url:?}: {why}"),
                error_code::HTTP_RETRIEVAL,
            ),
        }
    }
}

fn say(s: SayVerb) -> Say {
    Say {
        text: s.text,
        voice: s.voice,
        language: s.language,
        loops: s.loops,
    }
}

fn http_method(m: Method) -> HttpMethod {
    match m {
        Method::Get => HttpMethod::Get,
        Method::Post => HttpMethod::Post,
    }
}

/// `target` resolved against `base` (the document's URL); only http and https are fetched.
pub fn resolve(base: Option<&str>, target: &str) -> Result<String, String> {
    let target = target.trim();
    if target.is_empty() {
        return Err("the URL is empty".into());
    }
    let url = match url::Url::parse(target) {
        Ok(u) => u,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            let Some(base) = base else {
                return Err(format!(
                    "{:?} is relative and the inline document has no URL to resolve it against",
                    clip(target)
                ));
            };
            url::Url::parse(base)
                .and_then(|b| b.join(target))
                .map_err(|e| format!("{:?} cannot be resolved against {base}: {e}", clip(target)))?
        }
        Err(e) => return Err(format!("{:?} is not a URL: {e}", clip(target))),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{:?} is not an http or https URL", clip(target)));
    }
    Ok(url.into())
}

/// Log lines cut to [`MAX_LOG_CHARS`] and at most [`MAX_LOG_LINES`] of them.
fn bound_logs(out: &mut Output) {
    for l in &mut out.logs {
        if let Some((i, _)) = l.message.char_indices().nth(MAX_LOG_CHARS) {
            l.message.truncate(i);
            l.message.push('…');
        }
    }
    if out.logs.len() > MAX_LOG_LINES {
        let dropped = out.logs.len() - (MAX_LOG_LINES - 1);
        out.logs.truncate(MAX_LOG_LINES - 1);
        out.log(
            LogLevel::Warn,
            format!("… and {dropped} more log lines left out"),
        );
    }
}

fn event_name(e: &FlowEvent) -> &'static str {
    match e {
        FlowEvent::Start => "start",
        FlowEvent::Fetched(_) => "fetched",
        FlowEvent::PromptDone => "prompt-done",
        FlowEvent::Gathered(_) => "gathered",
        FlowEvent::Recorded(_) => "recorded",
        FlowEvent::DialDone(_) => "dial-done",
        FlowEvent::Redirected(_) => "redirected",
        FlowEvent::Hangup => "hangup",
    }
}

fn wait_name(w: &Wait) -> &'static str {
    match w {
        Wait::Start => "start",
        Wait::Fetch { .. } => "fetched",
        Wait::Prompt => "prompt-done",
        Wait::Running => "a verb",
        Wait::Gather { .. } => "gathered",
        Wait::Record { .. } => "recorded",
        Wait::Dial { .. } => "dial-done",
        Wait::Done => "nothing",
    }
}

#[cfg(test)]
mod tests;
