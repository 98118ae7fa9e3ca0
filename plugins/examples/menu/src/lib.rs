//! An IVR menu that needs no webhooks: it greets the caller, offers the options of its
//! configuration ("For river levels, press 1. … To hear these options again, press 9."), answers
//! the key pressed, and offers the menu again. A timeout or an unknown key repeats the menu (the
//! latter after an apology) up to `max_repeats` times in a row; then it says goodbye and hangs up.
//!
//! Configuration (every field but `options` is optional):
//!
//! ```json
//! {
//!   "greeting": "Welcome to the river authority.",
//!   "options": {
//!     "1": {"label": "river levels", "say": "The river is at its normal level."},
//!     "2": {"label": "opening hours", "say": "We are open from eight to six, Monday to Friday."}
//!   },
//!   "menu": null,
//!   "repeat_key": "9",
//!   "max_repeats": 2,
//!   "timeout_ms": 5000,
//!   "return_to_menu": true,
//!   "sorry": "Sorry, that is not one of the options.",
//!   "goodbye": "Goodbye.",
//!   "voice": null,
//!   "language": null
//! }
//! ```
//!
//! `menu` replaces the spoken list of options with a prompt of your own (then `label`s may be
//! left out). With `return_to_menu: false` the call ends after the first answer.

use std::collections::BTreeMap;

use callflow_sdk::PluginError;
use callflow_sdk::flow::{
    CallContext, Flow, FlowEvent, GatherResult, LogLevel, Output, Prompt, Say,
};
use callflow_sdk::flow::{Command, Gather};
use serde::{Deserialize, Serialize};

/// The menu flow.
pub struct Menu;

/// The keys of a telephone keypad, in the order a menu reads them out.
const KEYPAD: &str = "1234567890*#";

/// Bounds on the configuration, so one binding cannot make a call say megabytes.
const MAX_TEXT_CHARS: usize = 1_000;
const MAX_REPEATS: u32 = 10;
const MAX_TIMEOUT_MS: u32 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    greeting: Option<String>,
    options: BTreeMap<String, MenuOption>,
    #[serde(default)]
    menu: Option<String>,
    #[serde(default = "default_repeat_key")]
    repeat_key: String,
    #[serde(default = "default_max_repeats")]
    max_repeats: u32,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
    #[serde(default = "yes")]
    return_to_menu: bool,
    #[serde(default = "default_sorry")]
    sorry: String,
    #[serde(default = "default_goodbye")]
    goodbye: String,
    #[serde(default)]
    voice: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MenuOption {
    /// What the menu calls the option: "For {label}, press 1."
    #[serde(default)]
    label: Option<String>,
    /// What is said when the key is pressed.
    say: String,
}

fn default_repeat_key() -> String {
    "9".into()
}
fn default_max_repeats() -> u32 {
    2
}
fn default_timeout_ms() -> u32 {
    5_000
}
fn yes() -> bool {
    true
}
fn default_sorry() -> String {
    "Sorry, that is not one of the options.".into()
}
fn default_goodbye() -> String {
    "Goodbye.".into()
}

fn config_error(message: impl Into<String>) -> PluginError {
    PluginError::new("config", message)
}

impl Config {
    fn parse(json: &str) -> Result<Config, PluginError> {
        let config: Config = serde_json::from_str(json)
            .map_err(|e| config_error(format!("the menu configuration is invalid: {e}")))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), PluginError> {
        if self.options.is_empty() {
            return Err(config_error("the menu has no options"));
        }
        for (key, option) in &self.options {
            if !is_key(key) {
                return Err(config_error(format!(
                    "option {key:?} is not one telephone key (0-9, * or #)"
                )));
            }
            if option.label.is_none() && self.menu.is_none() {
                return Err(config_error(format!(
                    "option {key} needs a label, or the configuration a menu prompt"
                )));
            }
            check_text(&format!("option {key}"), &option.say)?;
            if let Some(label) = &option.label {
                check_text(&format!("the label of option {key}"), label)?;
            }
        }
        if !is_key(&self.repeat_key) || self.options.contains_key(&self.repeat_key) {
            return Err(config_error(format!(
                "the repeat key {:?} must be one telephone key that is not an option",
                self.repeat_key
            )));
        }
        if self.max_repeats > MAX_REPEATS {
            return Err(config_error(format!(
                "max_repeats is at most {MAX_REPEATS}"
            )));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(config_error(format!(
                "timeout_ms is between 1 and {MAX_TIMEOUT_MS}"
            )));
        }
        for (what, text) in [
            ("greeting", self.greeting.as_deref()),
            ("menu", self.menu.as_deref()),
            ("sorry", Some(&self.sorry[..])),
            ("goodbye", Some(&self.goodbye[..])),
        ] {
            if let Some(text) = text {
                check_text(what, text)?;
            }
        }
        Ok(())
    }

    fn say(&self, text: &str) -> Say {
        Say {
            text: text.into(),
            voice: self.voice.clone(),
            language: self.language.clone(),
            loops: 1,
        }
    }

    /// The spoken menu: the configured prompt, or one sentence per option in keypad order.
    fn menu_prompts(&self) -> Vec<Prompt> {
        if let Some(menu) = &self.menu {
            return vec![Prompt::Say(self.say(menu))];
        }
        let mut keys: Vec<&String> = self.options.keys().collect();
        keys.sort_by_key(|k| KEYPAD.find(k.as_str()));
        let mut prompts: Vec<Prompt> = keys
            .into_iter()
            .map(|key| {
                // check() made sure every option has a label when there is no menu prompt
                let label = self.options[key].label.as_deref().unwrap_or(key);
                Prompt::Say(self.say(&format!("For {label}, press {key}.")))
            })
            .collect();
        prompts.push(Prompt::Say(self.say(&format!(
            "To hear these options again, press {}.",
            self.repeat_key
        ))));
        prompts
    }

    /// Plays `before` (if anything), then the menu, and waits for one key.
    fn offer(&self, before: Option<&str>, out: &mut Output) {
        let mut prompts: Vec<Prompt> = before
            .map(|t| Prompt::Say(self.say(t)))
            .into_iter()
            .collect();
        prompts.extend(self.menu_prompts());
        out.push(Command::Gather(Gather {
            prompts,
            timeout_ms: self.timeout_ms,
            // every key may be an option, so none ends the input
            finish_on_key: String::new(),
            num_digits: Some(1),
        }));
    }

    /// Says `last` (if anything), then goodbye, and hangs up.
    fn end(&self, last: Option<&str>, out: &mut Output) {
        if let Some(text) = last {
            out.push(Command::Say(self.say(text)));
        }
        out.push(Command::Say(self.say(&self.goodbye)));
        out.hangup();
    }
}

fn is_key(key: &str) -> bool {
    key.len() == 1 && KEYPAD.contains(key)
}

fn check_text(what: &str, text: &str) -> Result<(), PluginError> {
    if text.trim().is_empty() {
        return Err(config_error(format!("{what} is empty")));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(config_error(format!(
            "{what} is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

/// What the menu remembers during a call.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Menus in a row that ended without a valid choice (timeouts and unknown keys).
    pub misses: u32,
    /// Options answered so far.
    pub answered: u32,
}

impl Flow for Menu {
    type State = State;

    fn handle(
        ctx: &CallContext,
        state: &mut State,
        event: FlowEvent,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        match event {
            FlowEvent::Start => {
                let config = Config::parse(&ctx.config)?;
                config.offer(config.greeting.as_deref(), out);
            }
            FlowEvent::Gathered(gathered) => {
                let config = Config::parse(&ctx.config)?;
                on_gathered(&config, state, gathered, out);
            }
            // the audio of a gather is reported as it finishes; the gather's result follows
            FlowEvent::PromptDone => {}
            FlowEvent::Hangup => {
                out.log(
                    LogLevel::Info,
                    format!("the caller hung up after {} answers", state.answered),
                );
            }
            FlowEvent::Redirected(_) => {
                out.log(
                    LogLevel::Warn,
                    "a redirect was ignored: the menu has no instructions to follow",
                );
            }
            FlowEvent::Fetched(_) | FlowEvent::Recorded(_) | FlowEvent::DialDone(_) => {
                out.log(
                    LogLevel::Warn,
                    "the menu got the result of a command it never gave",
                );
            }
        }
        Ok(())
    }
}

fn on_gathered(config: &Config, state: &mut State, gathered: GatherResult, out: &mut Output) {
    let key = gathered.digits.as_str();
    if key == config.repeat_key && !gathered.timed_out {
        config.offer(None, out);
        return;
    }
    if let Some(option) = config.options.get(key).filter(|_| !gathered.timed_out) {
        state.misses = 0;
        state.answered += 1;
        out.log(LogLevel::Info, format!("option {key}"));
        if config.return_to_menu {
            config.offer(Some(&option.say), out);
        } else {
            config.end(Some(&option.say), out);
        }
        return;
    }
    state.misses += 1;
    let sorry = if key.is_empty() {
        out.log(LogLevel::Info, "no key pressed");
        None
    } else {
        out.log(LogLevel::Info, format!("unknown key {key:?}"));
        Some(config.sorry.as_str())
    };
    if state.misses > config.max_repeats {
        out.log(
            LogLevel::Info,
            format!(
                "no choice after {} {} in a row; hanging up",
                state.misses,
                if state.misses == 1 { "menu" } else { "menus" }
            ),
        );
        config.end(sorry, out);
    } else {
        config.offer(sorry, out);
    }
}

callflow_sdk::export_flow!(Menu);

#[cfg(test)]
mod tests {
    use super::*;
    use callflow_sdk::flow::FlowTester;
    use expect_test::{Expect, expect};

    const CONFIG: &str = r#"{
        "greeting": "Welcome to the river authority.",
        "options": {
            "2": {"label": "opening hours", "say": "We are open from eight to six."},
            "1": {"label": "river levels", "say": "The river is at its normal level."}
        },
        "max_repeats": 1
    }"#;

    /// A key press, or `None` for a timeout.
    fn key(k: Option<&str>) -> FlowEvent {
        FlowEvent::Gathered(GatherResult {
            digits: k.unwrap_or_default().into(),
            timed_out: k.is_none(),
        })
    }

    /// Runs `events` through a fresh call and checks the transcript of what the menu did.
    fn check(config: &str, events: Vec<FlowEvent>, expected: Expect) {
        let mut t = FlowTester::<Menu>::new(config);
        let mut transcript = String::new();
        for event in events {
            transcript.push_str(&format!("> {}\n", describe_event(&event)));
            match t.send(event) {
                Ok(out) => {
                    for c in &out.commands {
                        transcript.push_str(&format!("  {}\n", describe_command(c)));
                    }
                    for l in &out.logs {
                        let level = format!("{:?}", l.level).to_lowercase();
                        let level = level.trim_start_matches("loglevel::");
                        transcript.push_str(&format!("  [{level}] {}\n", l.message));
                    }
                }
                Err(e) => transcript.push_str(&format!("  error {}: {}\n", e.code, e.message)),
            }
        }
        expected.assert_eq(&transcript);
    }

    fn describe_event(e: &FlowEvent) -> String {
        match e {
            FlowEvent::Gathered(g) if g.timed_out => "timeout".into(),
            FlowEvent::Gathered(g) => format!("key {}", g.digits),
            FlowEvent::Start => "start".into(),
            FlowEvent::PromptDone => "prompt done".into(),
            FlowEvent::Hangup => "hangup".into(),
            other => format!("{other:?}"),
        }
    }

    fn describe_command(c: &Command) -> String {
        let say = |s: &Say| format!("{:?}", s.text);
        match c {
            Command::Say(s) => format!("say {}", say(s)),
            Command::Gather(g) => {
                let prompts: Vec<String> = g
                    .prompts
                    .iter()
                    .map(|p| match p {
                        Prompt::Say(s) => say(s),
                        other => format!("{other:?}"),
                    })
                    .collect();
                let keys = g.num_digits.map_or("any".into(), |n| n.to_string());
                format!(
                    "gather {keys} key(s), {} ms, finish {:?}: {}",
                    g.timeout_ms,
                    g.finish_on_key,
                    prompts.join(" ")
                )
            }
            Command::Hangup => "hangup".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn answers_options_and_offers_the_menu_again() {
        check(
            CONFIG,
            vec![
                FlowEvent::Start,
                key(Some("1")),
                FlowEvent::PromptDone,
                key(Some("9")),
                key(Some("2")),
                FlowEvent::Hangup,
            ],
            expect![[r#"
                > start
                  gather 1 key(s), 5000 ms, finish "": "Welcome to the river authority." "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                > key 1
                  gather 1 key(s), 5000 ms, finish "": "The river is at its normal level." "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                  [info] option 1
                > prompt done
                > key 9
                  gather 1 key(s), 5000 ms, finish "": "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                > key 2
                  gather 1 key(s), 5000 ms, finish "": "We are open from eight to six." "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                  [info] option 2
                > hangup
                  [info] the caller hung up after 2 answers
            "#]],
        );
    }

    #[test]
    fn timeouts_and_unknown_keys_repeat_the_menu_then_it_says_goodbye() {
        check(
            CONFIG,
            vec![
                FlowEvent::Start,
                key(None),
                key(Some("1")),
                key(Some("5")),
                key(None),
            ],
            expect![[r#"
                > start
                  gather 1 key(s), 5000 ms, finish "": "Welcome to the river authority." "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                > timeout
                  gather 1 key(s), 5000 ms, finish "": "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                  [info] no key pressed
                > key 1
                  gather 1 key(s), 5000 ms, finish "": "The river is at its normal level." "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                  [info] option 1
                > key 5
                  gather 1 key(s), 5000 ms, finish "": "Sorry, that is not one of the options." "For river levels, press 1." "For opening hours, press 2." "To hear these options again, press 9."
                  [info] unknown key "5"
                > timeout
                  say "Goodbye."
                  hangup
                  [info] no key pressed
                  [info] no choice after 2 menus in a row; hanging up
            "#]],
        );
        check(
            r#"{"options": {"1": {"label": "news", "say": "No news."}}, "max_repeats": 0}"#,
            vec![FlowEvent::Start, key(Some("#"))],
            expect![[r##"
                > start
                  gather 1 key(s), 5000 ms, finish "": "For news, press 1." "To hear these options again, press 9."
                > key #
                  say "Sorry, that is not one of the options."
                  say "Goodbye."
                  hangup
                  [info] unknown key "#"
                  [info] no choice after 1 menu in a row; hanging up
            "##]],
        );
    }

    #[test]
    fn a_custom_menu_voice_and_single_answer() {
        check(
            r#"{
                "menu": "Press star for the weather.",
                "options": {"*": {"say": "Rain."}},
                "repeat_key": "0",
                "timeout_ms": 3000,
                "return_to_menu": false,
                "goodbye": "Bye now.",
                "voice": "alice"
            }"#,
            vec![FlowEvent::Start, key(Some("*"))],
            expect![[r#"
                > start
                  gather 1 key(s), 3000 ms, finish "": "Press star for the weather."
                > key *
                  say "Rain."
                  say "Bye now."
                  hangup
                  [info] option *
            "#]],
        );
        let mut t = FlowTester::<Menu>::new(
            r#"{"options": {"1": {"label": "a", "say": "b"}}, "voice": "alice", "language": "en-GB"}"#,
        );
        let out = t.send(FlowEvent::Start).unwrap();
        let [Command::Gather(g)] = &out.commands[..] else {
            panic!("{out:?}")
        };
        assert!(g.prompts.iter().all(|p| matches!(p, Prompt::Say(s)
            if s.voice.as_deref() == Some("alice") && s.language.as_deref() == Some("en-GB"))));
    }

    #[test]
    fn the_state_counts_misses_and_answers() {
        let mut t = FlowTester::<Menu>::new(CONFIG);
        t.send(FlowEvent::Start).unwrap();
        t.send(key(None)).unwrap();
        assert_eq!(
            t.state(),
            State {
                misses: 1,
                answered: 0
            }
        );
        t.send(key(Some("2"))).unwrap();
        assert_eq!(
            t.state(),
            State {
                misses: 0,
                answered: 1
            }
        );
    }

    #[test]
    fn bad_configurations_are_plugin_errors() {
        let cases = [
            "not json",
            "{}",
            r#"{"options": {}}"#,
            r#"{"options": {"12": {"label": "a", "say": "b"}}}"#,
            r#"{"options": {"1": {"say": "b"}}}"#,
            r#"{"options": {"9": {"label": "a", "say": "b"}}}"#,
            r#"{"options": {"1": {"label": "a", "say": " "}}}"#,
            r#"{"options": {"1": {"label": "a", "say": "b"}}, "timeout_ms": 0}"#,
            r#"{"options": {"1": {"label": "a", "say": "b"}}, "max_repeats": 11}"#,
            r#"{"options": {"1": {"label": "a", "say": "b"}}, "greting": "typo"}"#,
        ];
        let long = format!(
            r#"{{"options": {{"1": {{"label": "a", "say": "{}"}}}}}}"#,
            "x".repeat(MAX_TEXT_CHARS + 1)
        );
        for config in cases.iter().copied().chain([long.as_str()]) {
            let mut t = FlowTester::<Menu>::new(config);
            let err = t.send(FlowEvent::Start).unwrap_err();
            assert_eq!(err.code, "config", "{config}: {err}");
        }
        check(
            r#"{"options": {"9": {"label": "a", "say": "b"}}}"#,
            vec![FlowEvent::Start],
            expect![[r#"
                > start
                  error config: the repeat key "9" must be one telephone key that is not an option
            "#]],
        );
    }
}
