//! TwiML text → [`Verb`]s plus diagnostics. The parser never fails on a well-formed
//! `<Response>`: unknown verbs, misplaced nouns, unknown attributes and bad values are reported
//! (warn) and skipped or replaced by Twilio's default. Only a document that is not TwiML at all
//! (too large, not well-formed XML, a root other than `<Response>`) is refused.
//!
//! XML comments, numeric character references, CDATA and whitespace-only text are accepted;
//! DTDs are refused (by `roxmltree`, which also guards against entity expansion).

use callflow_sdk::flow::{LogLevel, LogLine};
use roxmltree::Node;

use crate::document::{
    DialVerb, GatherVerb, Method, PlayVerb, Prompt, RecordVerb, SayVerb, Target, Verb, defaults,
};

/// Largest document accepted, in bytes: the parsed document is kept in the flow's state, which
/// the host bounds to 64 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 10;

/// Longest URL a verb may hold: URLs end up in the state too (the one a verb waits to submit
/// to besides the document), so they are bounded on their own.
pub const MAX_URL_BYTES: usize = 2048;

/// Diagnostics kept per document; the rest are counted in one last line.
const MAX_DIAGNOSTICS: usize = 20;

/// Twilio verbs and nouns this interpreter does not run (named as such in the diagnostic).
const UNSUPPORTED: &[&str] = &[
    "Connect",
    "Enqueue",
    "Leave",
    "Start",
    "Stop",
    "Refer",
    "Pay",
    "Sms",
    "Echo",
    "Client",
    "Conference",
    "Queue",
    "Application",
];

/// What [`parse`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The verbs in document order, or why the text is not a TwiML document.
    pub verbs: Result<Vec<Verb>, String>,
    /// What was skipped or defaulted, in document order.
    pub diagnostics: Vec<LogLine>,
}

/// Parses a TwiML document.
pub fn parse(text: &str) -> Parsed {
    let mut p = Parser::default();
    let verbs = p.document(text);
    if p.dropped > 0 {
        p.diagnostics.push(LogLine {
            level: LogLevel::Warn,
            message: format!("… and {} more diagnostics for this document", p.dropped),
        });
    }
    Parsed {
        verbs,
        diagnostics: p.diagnostics,
    }
}

#[derive(Default)]
struct Parser {
    diagnostics: Vec<LogLine>,
    dropped: usize,
}

impl Parser {
    fn warn(&mut self, message: String) {
        if self.diagnostics.len() < MAX_DIAGNOSTICS {
            self.diagnostics.push(LogLine {
                level: LogLevel::Warn,
                message,
            });
        } else {
            self.dropped += 1;
        }
    }

    fn document(&mut self, text: &str) -> Result<Vec<Verb>, String> {
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "the document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                text.len()
            ));
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let doc = roxmltree::Document::parse(text)
            .map_err(|e| format!("the document is not well-formed XML: {e}"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "Response" {
            return Err(format!(
                "the root element is <{}>, not <Response>",
                root.tag_name().name()
            ));
        }
        let mut verbs = Vec::new();
        for child in root.children() {
            if child.is_element() {
                if let Some(verb) = self.verb(child) {
                    verbs.push(verb);
                }
            } else {
                self.stray_text(child, "<Response>");
            }
        }
        Ok(verbs)
    }

    /// Text where only elements belong is reported (whitespace is fine).
    fn stray_text(&mut self, node: Node, parent: &str) {
        if let Some(t) = node
            .text()
            .filter(|t| node.is_text() && !t.trim().is_empty())
        {
            self.warn(format!("text {:?} in {parent} ignored", clip(t.trim())));
        }
    }

    fn verb(&mut self, node: Node) -> Option<Verb> {
        let name = node.tag_name().name();
        let verb = match name {
            "Say" => Verb::Say(self.say(node)?),
            "Play" => self.play(node)?,
            "Pause" => Verb::Pause {
                ms: self.pause(node)?,
            },
            "Gather" => Verb::Gather(self.gather(node)),
            "Record" => Verb::Record(self.record(node)),
            "Dial" => Verb::Dial(self.dial(node)?),
            "Redirect" => {
                self.attributes(node, &["method"]);
                let method = self.method(node);
                let url = text_of(node);
                if url.is_empty() {
                    self.warn("<Redirect> has no URL; skipped".into());
                    return None;
                }
                Verb::Redirect { url, method }
            }
            "Hangup" => {
                self.attributes(node, &[]);
                Verb::Hangup
            }
            "Reject" => {
                self.attributes(node, &["reason"]);
                let busy = match node.attribute("reason") {
                    None | Some("rejected") => false,
                    Some("busy") => true,
                    Some(other) => {
                        self.warn(format!(
                            "<Reject reason={other:?}> is neither \"rejected\" nor \"busy\"; using \"rejected\""
                        ));
                        false
                    }
                };
                Verb::Reject { busy }
            }
            other if UNSUPPORTED.contains(&other) => {
                self.warn(format!("<{other}> is not supported; skipped"));
                return None;
            }
            other => {
                self.warn(format!("<{other}> is not a TwiML verb; skipped"));
                return None;
            }
        };
        if urls(&verb).any(|u| u.len() > MAX_URL_BYTES) {
            self.warn(format!(
                "<{name}> has a URL longer than {MAX_URL_BYTES} bytes; skipped"
            ));
            return None;
        }
        Some(verb)
    }

    fn say(&mut self, node: Node) -> Option<SayVerb> {
        self.attributes(node, &["voice", "language", "loop"]);
        let text = text_of(node);
        if text.is_empty() {
            self.warn("<Say> has nothing to say; skipped".into());
            return None;
        }
        Some(SayVerb {
            text,
            voice: non_empty(node.attribute("voice")),
            language: non_empty(node.attribute("language")),
            loops: self.number(node, "loop", 1),
        })
    }

    /// A `<Pause>`'s length in milliseconds; `None` for `length="0"`, which pauses for nothing.
    fn pause(&mut self, node: Node) -> Option<u32> {
        self.attributes(node, &["length"]);
        Some(secs_to_ms(self.number(node, "length", defaults::PAUSE_S))).filter(|&ms| ms != 0)
    }

    fn play(&mut self, node: Node) -> Option<Verb> {
        self.attributes(node, &["loop", "digits"]);
        if let Some(digits) = node.attribute("digits") {
            let digits = digits.trim();
            if digits.is_empty() || !digits.chars().all(|c| "0123456789*#wW".contains(c)) {
                self.warn(format!(
                    "<Play digits={digits:?}>: digits are 0-9, *, # and w; skipped"
                ));
                return None;
            }
            return Some(Verb::SendDigits {
                digits: digits.to_owned(),
            });
        }
        let url = text_of(node);
        if url.is_empty() {
            self.warn("<Play> has no URL; skipped".into());
            return None;
        }
        Some(Verb::Play(PlayVerb {
            url,
            loops: self.number(node, "loop", 1),
        }))
    }

    fn gather(&mut self, node: Node) -> GatherVerb {
        self.attributes(
            node,
            &[
                "action",
                "method",
                "timeout",
                "finishOnKey",
                "numDigits",
                "actionOnEmptyResult",
                "input",
            ],
        );
        if let Some(input) = node.attribute("input") {
            let kinds: Vec<&str> = input.split_whitespace().collect();
            if kinds != ["dtmf"] {
                self.warn(format!(
                    "<Gather input={input:?}>: only dtmf input is supported; listening for digits"
                ));
            }
        }
        let finish_on_key = match node.attribute("finishOnKey") {
            None => defaults::GATHER_FINISH_ON_KEY.to_owned(),
            Some(k) if k.is_empty() || (k.len() == 1 && k.chars().all(is_key)) => k.to_owned(),
            Some(k) => {
                self.warn(format!(
                    "<Gather finishOnKey={k:?}> is not one key (0-9, *, #) or empty; using \"#\""
                ));
                defaults::GATHER_FINISH_ON_KEY.to_owned()
            }
        };
        let num_digits = match node.attribute("numDigits") {
            None => None,
            Some(n) => match n.trim().parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.warn(format!(
                        "<Gather numDigits={n:?}> is not a positive whole number; ignored"
                    ));
                    None
                }
            },
        };
        let mut prompts = Vec::new();
        for child in node.children() {
            if !child.is_element() {
                self.stray_text(child, "<Gather>");
                continue;
            }
            match child.tag_name().name() {
                "Say" => prompts.extend(self.say(child).map(Prompt::Say)),
                "Play" => match self.play(child) {
                    Some(Verb::Play(p)) => prompts.push(Prompt::Play(p)),
                    Some(_) => {
                        self.warn("<Play digits> is not allowed in <Gather>; skipped".into())
                    }
                    None => {}
                },
                "Pause" => prompts.extend(self.pause(child).map(Prompt::Pause)),
                other => self.warn(format!("<{other}> is not allowed in <Gather>; skipped")),
            }
        }
        GatherVerb {
            prompts,
            action: non_empty(node.attribute("action")),
            method: self.method(node),
            timeout_ms: secs_to_ms(self.number(node, "timeout", defaults::GATHER_TIMEOUT_S)),
            finish_on_key,
            num_digits,
            action_on_empty: self.boolean(node, "actionOnEmptyResult", false),
        }
    }

    fn record(&mut self, node: Node) -> RecordVerb {
        self.attributes(
            node,
            &[
                "action",
                "method",
                "timeout",
                "finishOnKey",
                "maxLength",
                "playBeep",
                "trim",
            ],
        );
        self.no_children(node, "<Record>");
        let finish_on_key = match node.attribute("finishOnKey") {
            None => defaults::RECORD_FINISH_ON_KEY.to_owned(),
            Some(k) if k.chars().all(is_key) => k.to_owned(),
            Some(k) => {
                let keys: String = k.chars().filter(|&c| is_key(c)).collect();
                self.warn(format!(
                    "<Record finishOnKey={k:?}>: only 0-9, * and # are keys; using {keys:?}"
                ));
                keys
            }
        };
        let trim_silence = match node.attribute("trim") {
            None | Some("trim-silence") => true,
            Some("do-not-trim") => false,
            Some(other) => {
                self.warn(format!(
                    "<Record trim={other:?}> is neither \"trim-silence\" nor \"do-not-trim\"; trimming"
                ));
                true
            }
        };
        RecordVerb {
            action: non_empty(node.attribute("action")),
            method: self.method(node),
            timeout_ms: secs_to_ms(self.number(node, "timeout", defaults::RECORD_TIMEOUT_S)),
            finish_on_key,
            max_length_ms: secs_to_ms(self.number(
                node,
                "maxLength",
                defaults::RECORD_MAX_LENGTH_S,
            )),
            play_beep: self.boolean(node, "playBeep", true),
            trim_silence,
        }
    }

    fn dial(&mut self, node: Node) -> Option<DialVerb> {
        self.attributes(
            node,
            &[
                "action",
                "method",
                "timeout",
                "timeLimit",
                "callerId",
                "hangupOnStar",
                "record",
            ],
        );
        let mut targets = Vec::new();
        let direct: String = node
            .children()
            .filter(|c| c.is_text())
            .filter_map(|c| c.text())
            .collect();
        let direct = collapse(&direct);
        if !direct.is_empty() {
            targets.push(Target::Number(direct));
        }
        for child in node.children().filter(|c| c.is_element()) {
            let noun = child.tag_name().name();
            let make: fn(String) -> Target = match noun {
                "Number" => Target::Number,
                "Sip" => Target::Sip,
                other if UNSUPPORTED.contains(&other) => {
                    self.warn(format!("<Dial><{other}> is not supported; skipped"));
                    continue;
                }
                other => {
                    self.warn(format!("<{other}> is not allowed in <Dial>; skipped"));
                    continue;
                }
            };
            let address = text_of(child);
            if address.is_empty() {
                self.warn(format!("<{noun}> in <Dial> is empty; skipped"));
            } else {
                targets.push(make(address));
            }
        }
        if targets.is_empty() {
            self.warn("<Dial> has nothing to dial; skipped".into());
            return None;
        }
        let (low, high) = defaults::DIAL_TIMEOUT_RANGE_S;
        let timeout = self.number(node, "timeout", defaults::DIAL_TIMEOUT_S);
        let clamped = timeout.clamp(low, high);
        if clamped != timeout {
            self.warn(format!(
                "<Dial timeout=\"{timeout}\"> is outside {low}-{high} seconds; using {clamped}"
            ));
        }
        let record = match node.attribute("record") {
            None | Some("do-not-record" | "false") => false,
            Some(
                "true"
                | "record-from-answer"
                | "record-from-ringing"
                | "record-from-answer-dual"
                | "record-from-ringing-dual",
            ) => true,
            Some(other) => {
                self.warn(format!(
                    "<Dial record={other:?}> is not a recording mode; not recording"
                ));
                false
            }
        };
        Some(DialVerb {
            targets,
            action: non_empty(node.attribute("action")),
            method: self.method(node),
            timeout_ms: secs_to_ms(clamped),
            time_limit_ms: secs_to_ms(self.number(node, "timeLimit", defaults::DIAL_TIME_LIMIT_S)),
            caller_id: non_empty(node.attribute("callerId")),
            hangup_on_star: self.boolean(node, "hangupOnStar", false),
            record,
        })
    }

    /// Reports the attributes of `node` that are not in `known`.
    fn attributes(&mut self, node: Node, known: &[&str]) {
        for a in node.attributes() {
            // namespaced attributes (xml:lang, xmlns:…) are not TwiML's business
            if a.namespace().is_none() && !known.contains(&a.name()) {
                self.warn(format!(
                    "attribute {} of <{}> is not supported; ignored",
                    a.name(),
                    node.tag_name().name()
                ));
            }
        }
    }

    fn no_children(&mut self, node: Node, name: &str) {
        for child in node.children() {
            if child.is_element() {
                self.warn(format!(
                    "<{}> is not allowed in {name}; skipped",
                    child.tag_name().name()
                ));
            } else {
                self.stray_text(child, name);
            }
        }
    }

    /// A whole number attribute, or `default` (with a diagnostic when it is there but bad).
    fn number(&mut self, node: Node, name: &str, default: u32) -> u32 {
        let Some(raw) = node.attribute(name) else {
            return default;
        };
        match raw.trim().parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                self.warn(format!(
                    "<{} {name}={raw:?}> is not a whole number; using {default}",
                    node.tag_name().name()
                ));
                default
            }
        }
    }

    fn boolean(&mut self, node: Node, name: &str, default: bool) -> bool {
        match node.attribute(name).map(str::trim) {
            None => default,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                self.warn(format!(
                    "<{} {name}={v:?}> is neither true nor false; using {default}",
                    node.tag_name().name()
                ));
                default
            }
        }
    }

    fn method(&mut self, node: Node) -> Method {
        match node.attribute("method").map(str::trim) {
            None => Method::Post,
            Some(m) if m.eq_ignore_ascii_case("POST") => Method::Post,
            Some(m) if m.eq_ignore_ascii_case("GET") => Method::Get,
            Some(m) => {
                self.warn(format!(
                    "<{} method={m:?}> is neither GET nor POST; using POST",
                    node.tag_name().name()
                ));
                Method::Post
            }
        }
    }
}

/// Every URL `verb` holds.
fn urls(verb: &Verb) -> impl Iterator<Item = &str> {
    let (first, prompts): (Option<&str>, &[Prompt]) = match verb {
        Verb::Play(p) => (Some(&p.url), &[]),
        Verb::Redirect { url, .. } => (Some(url), &[]),
        Verb::Gather(g) => (g.action.as_deref(), &g.prompts),
        Verb::Record(r) => (r.action.as_deref(), &[]),
        Verb::Dial(d) => (d.action.as_deref(), &[]),
        Verb::Say(_)
        | Verb::SendDigits { .. }
        | Verb::Pause { .. }
        | Verb::Hangup
        | Verb::Reject { .. } => (None, &[]),
    };
    first
        .into_iter()
        .chain(prompts.iter().filter_map(|p| match p {
            Prompt::Play(p) => Some(p.url.as_str()),
            Prompt::Say(_) | Prompt::Pause(_) => None,
        }))
}

fn is_key(c: char) -> bool {
    "0123456789*#".contains(c)
}

/// Seconds to milliseconds, saturating (a huge `length` must not wrap around to a short one).
fn secs_to_ms(s: u32) -> u32 {
    s.saturating_mul(1000)
}

/// All the text under `node` (SSML and other markup read as their text), whitespace collapsed.
fn text_of(node: Node) -> String {
    let mut text = String::new();
    for t in node.descendants().filter(|n| n.is_text()) {
        push_collapsed(&mut text, t.text().unwrap_or_default());
    }
    text
}

fn collapse(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_collapsed(&mut out, s);
    out
}

/// Appends the words of `s` to `out`, one space between words.
fn push_collapsed(out: &mut String, s: &str) {
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// At most 40 characters of `s`, for diagnostics.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    /// Parses `doc` and shows the verbs (as the state keeps them) and the diagnostics.
    fn check(doc: &str, expected: Expect) {
        let parsed = parse(doc);
        let mut out = String::new();
        match &parsed.verbs {
            Ok(verbs) => {
                for v in verbs {
                    out.push_str(&serde_json::to_string(v).unwrap());
                    out.push('\n');
                }
            }
            Err(e) => out.push_str(&format!("not TwiML: {e}\n")),
        }
        for d in &parsed.diagnostics {
            out.push_str(&format!("[{}] {}\n", crate::level_name(d.level), d.message));
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn every_verb_with_twilios_defaults() {
        check(
            r###"<?xml version="1.0" encoding="UTF-8"?>
            <Response>
              <Say>Hello</Say>
              <Play>https://example.com/a.wav</Play>
              <Play digits="ww1234#"/>
              <Pause/>
              <Gather><Say>Press</Say><Play>b.mp3</Play><Pause/></Gather>
              <Record/>
              <Dial>+15551234567</Dial>
              <Redirect>/next</Redirect>
              <Reject/>
              <Hangup/>
            </Response>"###,
            expect![[r##"
                {"verb":"say","text":"Hello","loops":1}
                {"verb":"play","url":"https://example.com/a.wav","loops":1}
                {"verb":"send-digits","digits":"ww1234#"}
                {"verb":"pause","ms":1000}
                {"verb":"gather","prompts":[{"say":{"text":"Press","loops":1}},{"play":{"url":"b.mp3","loops":1}},{"pause":1000}],"method":"POST","timeout_ms":5000,"finish_on_key":"#","action_on_empty":false}
                {"verb":"record","method":"POST","timeout_ms":5000,"finish_on_key":"1234567890*#","max_length_ms":3600000,"play_beep":true,"trim_silence":true}
                {"verb":"dial","targets":[{"number":"+15551234567"}],"method":"POST","timeout_ms":30000,"time_limit_ms":14400000,"hangup_on_star":false,"record":false}
                {"verb":"redirect","url":"/next","method":"POST"}
                {"verb":"reject","busy":false}
                {"verb":"hangup"}
            "##]],
        );
    }

    #[test]
    fn every_attribute_given() {
        check(
            r###"<Response>
              <Say voice="Polly.Joanna" language="en-US" loop="0">Hi</Say>
              <Play loop="3">https://example.com/a.wav</Play>
              <Pause length="7"/>
              <Gather input="dtmf" action="/g" method="GET" timeout="9" finishOnKey="*"
                      numDigits="4" actionOnEmptyResult="true"/>
              <Record action="/r" method="get" timeout="0" finishOnKey="#" maxLength="30"
                      playBeep="false" trim="do-not-trim"/>
              <Dial action="/d" method="GET" timeout="10" timeLimit="60" callerId="+15550000000"
                    hangupOnStar="true" record="record-from-answer">
                <Number>+15551111111</Number><Sip>sip:alice@example.com</Sip>
              </Dial>
              <Redirect method="GET">https://example.com/x</Redirect>
              <Reject reason="busy"/>
            </Response>"###,
            expect![[r##"
                {"verb":"say","text":"Hi","voice":"Polly.Joanna","language":"en-US","loops":0}
                {"verb":"play","url":"https://example.com/a.wav","loops":3}
                {"verb":"pause","ms":7000}
                {"verb":"gather","prompts":[],"action":"/g","method":"GET","timeout_ms":9000,"finish_on_key":"*","num_digits":4,"action_on_empty":true}
                {"verb":"record","action":"/r","method":"GET","timeout_ms":0,"finish_on_key":"#","max_length_ms":30000,"play_beep":false,"trim_silence":false}
                {"verb":"dial","targets":[{"number":"+15551111111"},{"sip":"sip:alice@example.com"}],"action":"/d","method":"GET","timeout_ms":10000,"time_limit_ms":60000,"caller_id":"+15550000000","hangup_on_star":true,"record":true}
                {"verb":"redirect","url":"https://example.com/x","method":"GET"}
                {"verb":"reject","busy":true}
            "##]],
        );
    }

    #[test]
    fn bad_values_fall_back_to_the_defaults() {
        check(
            r###"<Response>
              <Say loop="-1" colour="blue">Hi</Say>
              <Pause length="two"/>
              <Gather timeout="5s" finishOnKey="##" numDigits="0" actionOnEmptyResult="yes"
                      method="PUT" input="speech" speechTimeout="auto"/>
              <Record finishOnKey="1a#" trim="maybe" playBeep="0" maxLength="99999999999"/>
              <Dial timeout="1" record="sometimes">123</Dial>
              <Dial timeout="1000">456</Dial>
              <Reject reason="angry"/>
              <Play digits="12x"/>
            </Response>"###,
            expect![[r###"
                {"verb":"say","text":"Hi","loops":1}
                {"verb":"pause","ms":1000}
                {"verb":"gather","prompts":[],"method":"POST","timeout_ms":5000,"finish_on_key":"#","action_on_empty":false}
                {"verb":"record","method":"POST","timeout_ms":5000,"finish_on_key":"1#","max_length_ms":3600000,"play_beep":true,"trim_silence":true}
                {"verb":"dial","targets":[{"number":"123"}],"method":"POST","timeout_ms":5000,"time_limit_ms":14400000,"hangup_on_star":false,"record":false}
                {"verb":"dial","targets":[{"number":"456"}],"method":"POST","timeout_ms":600000,"time_limit_ms":14400000,"hangup_on_star":false,"record":false}
                {"verb":"reject","busy":false}
                [warn] attribute colour of <Say> is not supported; ignored
                [warn] <Say loop="-1"> is not a whole number; using 1
                [warn] <Pause length="two"> is not a whole number; using 1
                [warn] attribute speechTimeout of <Gather> is not supported; ignored
                [warn] <Gather input="speech">: only dtmf input is supported; listening for digits
                [warn] <Gather finishOnKey="##"> is not one key (0-9, *, #) or empty; using "#"
                [warn] <Gather numDigits="0"> is not a positive whole number; ignored
                [warn] <Gather method="PUT"> is neither GET nor POST; using POST
                [warn] <Gather timeout="5s"> is not a whole number; using 5
                [warn] <Gather actionOnEmptyResult="yes"> is neither true nor false; using false
                [warn] <Record finishOnKey="1a#">: only 0-9, * and # are keys; using "1#"
                [warn] <Record trim="maybe"> is neither "trim-silence" nor "do-not-trim"; trimming
                [warn] <Record maxLength="99999999999"> is not a whole number; using 3600
                [warn] <Record playBeep="0"> is neither true nor false; using true
                [warn] <Dial timeout="1"> is outside 5-600 seconds; using 5
                [warn] <Dial record="sometimes"> is not a recording mode; not recording
                [warn] <Dial timeout="1000"> is outside 5-600 seconds; using 600
                [warn] <Reject reason="angry"> is neither "rejected" nor "busy"; using "rejected"
                [warn] <Play digits="12x">: digits are 0-9, *, # and w; skipped
            "###]],
        );
    }

    #[test]
    fn comments_references_cdata_whitespace_and_ssml_are_text() {
        check(
            "\u{feff}<?xml version=\"1.0\"?>\n<!-- generated -->\n<Response>\n  <!--call start-->\n  \
             <Say language=\"en-US\">It&#39;s &#x41;&amp;B,\n   <![CDATA[<raw> & ok]]>\n  \
             <break time=\"1s\"/><emphasis>really</emphasis></Say>\n  \
             <Play>\n    https://example.com/a.wav?x=1&amp;y=2\n  </Play>\n</Response>\n",
            expect![[r#"
                {"verb":"say","text":"It's A&B, <raw> & ok really","language":"en-US","loops":1}
                {"verb":"play","url":"https://example.com/a.wav?x=1&y=2","loops":1}
            "#]],
        );
    }

    #[test]
    fn unknown_and_misplaced_elements_are_skipped() {
        check(
            r###"<Response xmlns:x="urn:x">
              stray words
              <Conference>room</Conference>
              <Shout>hey</Shout>
              <say>lower case is not TwiML</say>
              <Gather><Redirect>/x</Redirect><Say>ok</Say><Play digits="1"/>text</Gather>
              <Dial><Client>bob</Client><Number> </Number><Conference>r</Conference><Foo/></Dial>
              <Dial><Queue>q</Queue></Dial>
              <Record><Say>no</Say></Record>
              <Redirect/>
              <Say>  </Say>
              <Play/>
              <Hangup x:y="namespaced" z="1"/>
            </Response>"###,
            expect![[r##"
                {"verb":"gather","prompts":[{"say":{"text":"ok","loops":1}}],"method":"POST","timeout_ms":5000,"finish_on_key":"#","action_on_empty":false}
                {"verb":"record","method":"POST","timeout_ms":5000,"finish_on_key":"1234567890*#","max_length_ms":3600000,"play_beep":true,"trim_silence":true}
                {"verb":"hangup"}
                [warn] text "stray words" in <Response> ignored
                [warn] <Conference> is not supported; skipped
                [warn] <Shout> is not a TwiML verb; skipped
                [warn] <say> is not a TwiML verb; skipped
                [warn] <Redirect> is not allowed in <Gather>; skipped
                [warn] <Play digits> is not allowed in <Gather>; skipped
                [warn] text "text" in <Gather> ignored
                [warn] <Dial><Client> is not supported; skipped
                [warn] <Number> in <Dial> is empty; skipped
                [warn] <Dial><Conference> is not supported; skipped
                [warn] <Foo> is not allowed in <Dial>; skipped
                [warn] <Dial> has nothing to dial; skipped
                [warn] <Dial><Queue> is not supported; skipped
                [warn] <Dial> has nothing to dial; skipped
                [warn] <Say> is not allowed in <Record>; skipped
                [warn] <Redirect> has no URL; skipped
                [warn] <Say> has nothing to say; skipped
                [warn] <Play> has no URL; skipped
                [warn] attribute z of <Hangup> is not supported; ignored
            "##]],
        );
    }

    #[test]
    fn documents_that_are_not_twiml() {
        check(
            "",
            expect![[r#"
            not TwiML: the document is not well-formed XML: the document does not have a root node
        "#]],
        );
        check(
            "<Response><Say>unclosed</Response>",
            expect![[r#"
            not TwiML: the document is not well-formed XML: expected 'Say' tag, not 'Response' at 1:24
        "#]],
        );
        check(
            "<Reply/>",
            expect![[r#"
            not TwiML: the root element is <Reply>, not <Response>
        "#]],
        );
        check(
            r#"<!DOCTYPE r [<!ENTITY a "aaaa">]><Response><Say>&a;</Say></Response>"#,
            expect![[r#"
                not TwiML: the document is not well-formed XML: XML with DTD detected
            "#]],
        );
        check(
            r#"{"error": "unknown channel"}"#,
            expect![[r#"
            not TwiML: the document is not well-formed XML: unknown token at 1:1
        "#]],
        );
        let big = format!(
            "<Response><Say>{}</Say></Response>",
            "a".repeat(MAX_DOCUMENT_BYTES)
        );
        check(
            &big,
            expect![[r#"
            not TwiML: the document is 65568 bytes; the limit is 65536
        "#]],
        );
        // an empty Response is a document with nothing to do (the call hangs up)
        check("<Response/>", expect![[""]]);
    }

    #[test]
    fn urls_are_bounded() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        check(
            &format!(
                r#"<Response><Play>{long}</Play><Gather action="{long}"/><Gather><Play>{long}</Play></Gather>
                <Record action="{long}"/><Dial action="{long}">1</Dial><Redirect>{long}</Redirect>
                <Play>https://example.com/ok.wav</Play></Response>"#
            ),
            expect![[r#"
                {"verb":"play","url":"https://example.com/ok.wav","loops":1}
                [warn] <Play> has a URL longer than 2048 bytes; skipped
                [warn] <Gather> has a URL longer than 2048 bytes; skipped
                [warn] <Gather> has a URL longer than 2048 bytes; skipped
                [warn] <Record> has a URL longer than 2048 bytes; skipped
                [warn] <Dial> has a URL longer than 2048 bytes; skipped
                [warn] <Redirect> has a URL longer than 2048 bytes; skipped
            "#]],
        );
    }

    #[test]
    fn diagnostics_are_bounded() {
        let doc = format!("<Response>{}</Response>", "<Nope/>".repeat(1000));
        let parsed = parse(&doc);
        assert_eq!(parsed.verbs, Ok(vec![]));
        assert_eq!(parsed.diagnostics.len(), MAX_DIAGNOSTICS + 1);
        assert_eq!(
            parsed.diagnostics.last().unwrap().message,
            "… and 980 more diagnostics for this document"
        );
    }

    #[test]
    fn deep_nesting_and_garbage_never_panic() {
        let deep = format!(
            "<Response><Say>{}x{}</Say></Response>",
            "<b>".repeat(5000),
            "</b>".repeat(5000)
        );
        assert_eq!(parse(&deep).verbs.map(|v| v.len()), Ok(1));
        // every prefix and some byte flips of a real document
        let doc = r#"<?xml version="1.0"?><Response><Gather action="/g?a=1&amp;b=2" numDigits="1"><Say language="fr-FR">Appuyez &#233;</Say></Gather><Redirect>/t</Redirect></Response>"#;
        for end in 0..doc.len() {
            if doc.is_char_boundary(end) {
                let _ = parse(&doc[..end]);
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = doc.as_bytes().to_vec();
            let i = (seed % bytes.len() as u64) as usize;
            bytes[i] = (seed >> 32) as u8;
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
