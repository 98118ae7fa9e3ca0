//! Answering machine detection for Twilio's `MachineDetection=Enable`: energy and cadence rules
//! in the manner of Asterisk's `AMD()` application, as a pure state machine fed the callee's
//! 8 kHz audio after answer, on caller-supplied time.
//!
//! # How it decides
//!
//! Every 10 ms of audio is voice or silence by its RMS level ([`level::rms_dbfs`] against
//! [`AmdConfig::silence_threshold_dbfs`]). A stretch of voice of at least
//! [`AmdConfig::min_word_length_ms`] is a *word*; a word ends after
//! [`AmdConfig::between_words_silence_ms`] of silence. Then, in order of arrival:
//!
//! - no word for [`AmdConfig::initial_silence_ms`] from the start (or since the last sound) →
//!   [`AnsweredBy::Unknown`], reason `initial-silence`;
//! - a greeting (audio from the first word on) followed by [`AmdConfig::after_greeting_silence_ms`]
//!   of silence → [`AnsweredBy::Human`], reason `after-greeting-silence`: people say a short
//!   "hello?" and wait;
//! - [`AmdConfig::greeting_ms`] of voice in total → [`AnsweredBy::MachineStart`], reason
//!   `long-greeting`: recorded greetings talk on;
//! - more than [`AmdConfig::max_words`] words → [`AnsweredBy::MachineStart`], reason `max-words`;
//! - none of these within [`AmdConfig::total_analysis_ms`] → [`AnsweredBy::Unknown`], reason
//!   `analysis-time`.
//!
//! Differences from Asterisk, on purpose: long initial silence gives `unknown`, not Asterisk's
//! `MACHINE`, because that is what Twilio answers when nobody speaks (its
//! `MachineDetectionSilenceTimeout`) and a silent line is as often a person waiting as a machine;
//! the greeting starts with the first *word*, not with the first 100 ms of scattered clicks; the
//! words rule fires when the count *exceeds* the maximum (Asterisk's comparison and default,
//! 2 or 3, have changed between versions; not checked here). Asterisk's `maximum_word_length`
//! (5000 ms) is left out: with the default analysis time it can never fire.
//!
//! Twilio's `fax` outcome is not produced: a fax's CNG tone (1100 Hz, 0.5 s on, 3 s off) reads as a
//! one-word greeting and gives `human` (see the tests). Beeps and tones in general are voice to
//! an energy detector; steady noise above the threshold reads as a long greeting (`machine_start`);
//! line noise below it is silence.
//!
//! # How accurate this is
//!
//! Honestly: not very, and unmeasured on real calls. Energy and cadence detectors like Asterisk's
//! `AMD()` are known to misjudge people who answer with a full sentence ("Hello, this is Anna
//! speaking" → machine), machines with a short greeting, greetings that start with silence or
//! music, and noisy lines. Accuracy figures for Asterisk's AMD circulate in forums and vendor
//! posts (often roughly 80–90%, heavily dependent on tuning and the traffic), but we know of no
//! published benchmark and have not measured one. This module is tested only on synthetic
//! signals (the tests below): tones with harmonics and noise shaped into syllables and words,
//! silence, noise and beeps. Those tests check that the rules are implemented as written, not
//! that the rules are right about people.

use crate::level;

/// The parameters of Asterisk's `AMD()` (`amd.conf`), with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AmdConfig {
    /// Silence from the start after which the result is `unknown` (Asterisk: `initial_silence`,
    /// 2500 ms; its result there is `MACHINE`).
    pub initial_silence_ms: u64,
    /// Total voice in a greeting after which it is a machine (`greeting`, 1500 ms).
    pub greeting_ms: u64,
    /// Silence after a greeting that makes it a human (`after_greeting_silence`, 800 ms).
    pub after_greeting_silence_ms: u64,
    /// Audio analysed at most; then the result is `unknown` (`total_analysis_time`, 5000 ms).
    pub total_analysis_ms: u64,
    /// Shortest voice that counts as a word (`min_word_length`, 100 ms).
    pub min_word_length_ms: u64,
    /// Silence that ends a word (`between_words_silence`, 50 ms).
    pub between_words_silence_ms: u64,
    /// Most words in a human greeting; one more makes it a machine (`maximum_number_of_words`,
    /// 3).
    pub max_words: u32,
    /// RMS level below which 10 ms of audio is silence. Asterisk's `silence_threshold` of 256
    /// (mean amplitude) is about -41 dBFS RMS; the default is the project's own
    /// [`level::SILENCE_THRESHOLD_DBFS`], which explains its choice.
    pub silence_threshold_dbfs: f32,
}

impl Default for AmdConfig {
    fn default() -> AmdConfig {
        AmdConfig {
            initial_silence_ms: 2500,
            greeting_ms: 1500,
            after_greeting_silence_ms: 800,
            total_analysis_ms: 5000,
            min_word_length_ms: 100,
            between_words_silence_ms: 50,
            max_words: 3,
            silence_threshold_dbfs: level::SILENCE_THRESHOLD_DBFS,
        }
    }
}

/// Who answered, as Twilio's `AnsweredBy` says it for `MachineDetection=Enable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredBy {
    Human,
    MachineStart,
    Unknown,
}

impl AnsweredBy {
    /// Twilio's string: `human`, `machine_start` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::MachineStart => "machine_start",
            AnsweredBy::Unknown => "unknown",
        }
    }
}

/// The detector's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub answered_by: AnsweredBy,
    /// Which rule decided, for logs: `initial-silence`, `after-greeting-silence`,
    /// `long-greeting`, `max-words`, `analysis-time` or `timeout` (from [`Amd::finish`]).
    pub reason: &'static str,
    /// When it was decided, from the start: for a rule on the audio, the position in the audio
    /// where the rule fired (so it does not depend on how the audio was cut into frames); for
    /// the clock (`analysis-time` from `now_ms`, `timeout`), `now_ms` minus the start.
    pub decided_after_ms: u64,
    /// Voice heard by then, in ms.
    pub speech_ms: u64,
    /// Words heard by then.
    pub words: u32,
}

/// Audio judged at a time: 10 ms, fine enough for the 50 ms between words.
const STEP_SAMPLES: usize = 80;
const STEP_MS: u64 = 10;

/// One detection in progress.
///
/// Input: [`Amd::push`] with each frame of the callee's audio as it arrives (any length; a lost
/// packet can be pushed as zeros). It returns the verdict once there is one, and keeps returning
/// it; later audio is ignored. [`Amd::finish`] ends the detection when the caller's own time is
/// up (or the call ends) and gives the verdict, `unknown` if none was reached.
///
/// Rules run on the audio's own time (8 samples per ms), so the frame size does not matter; the
/// caller's clock (`now_ms`) only enforces [`AmdConfig::total_analysis_ms`] when audio stops
/// coming. Memory is bounded: at most one partial 10 ms step is held between pushes.
#[derive(Debug)]
pub struct Amd {
    config: AmdConfig,
    start_ms: u64,
    /// Audio analysed so far.
    audio_ms: u64,
    /// The start of a 10 ms step cut by the end of a push.
    carry: [i16; STEP_SAMPLES],
    carry_len: usize,
    /// A word has been heard: the greeting has begun.
    in_greeting: bool,
    /// Inside a word (voice, with no silence as long as `between_words_silence_ms` since).
    in_word: bool,
    /// Voice since the last word-ending silence.
    voice_run_ms: u64,
    /// Silence since the last voice (or the start).
    silence_run_ms: u64,
    speech_ms: u64,
    words: u32,
    verdict: Option<Verdict>,
}

impl Amd {
    /// Starts detecting at `start_ms` (the answer).
    pub fn new(config: AmdConfig, start_ms: u64) -> Amd {
        Amd {
            config,
            start_ms,
            audio_ms: 0,
            carry: [0; STEP_SAMPLES],
            carry_len: 0,
            in_greeting: false,
            in_word: false,
            voice_run_ms: 0,
            silence_run_ms: 0,
            speech_ms: 0,
            words: 0,
            verdict: None,
        }
    }

    /// Analyses a frame of 8 kHz audio that arrived at `now_ms`.
    pub fn push(&mut self, now_ms: u64, pcm: &[i16]) -> Option<Verdict> {
        if self.verdict.is_some() {
            return self.verdict;
        }
        let mut rest = pcm;
        if self.carry_len > 0 {
            let take = (STEP_SAMPLES - self.carry_len).min(rest.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&rest[..take]);
            self.carry_len += take;
            rest = &rest[take..];
            if self.carry_len == STEP_SAMPLES {
                self.carry_len = 0;
                let step = self.carry;
                self.step(&step);
            }
        }
        let mut steps = rest.chunks_exact(STEP_SAMPLES);
        for step in steps.by_ref() {
            if self.verdict.is_some() {
                break;
            }
            self.step(step);
        }
        if self.verdict.is_some() {
            return self.verdict;
        }
        // Either the carry is still partial and `rest` is empty, or the carry was used up.
        let tail = steps.remainder();
        if !tail.is_empty() {
            self.carry[..tail.len()].copy_from_slice(tail);
            self.carry_len = tail.len();
        }

        let elapsed = now_ms.saturating_sub(self.start_ms);
        if elapsed >= self.config.total_analysis_ms {
            self.decide(AnsweredBy::Unknown, "analysis-time", elapsed);
        }
        self.verdict
    }

    /// Ends the detection at `now_ms`: the verdict if there is one, else `unknown` with reason
    /// `timeout`. A partial 10 ms step left over is not analysed.
    pub fn finish(&mut self, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.start_ms);
        self.decide(AnsweredBy::Unknown, "timeout", elapsed)
    }

    /// The verdict, if reached.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Judges 10 ms of audio and applies the rules at its end.
    fn step(&mut self, pcm: &[i16]) {
        let c = &self.config;
        self.audio_ms += STEP_MS;
        let at = self.audio_ms;
        if level::rms_dbfs(pcm) < c.silence_threshold_dbfs {
            self.silence_run_ms += STEP_MS;
            if self.silence_run_ms >= c.between_words_silence_ms {
                self.in_word = false;
                self.voice_run_ms = 0;
            }
            if !self.in_greeting && self.silence_run_ms >= c.initial_silence_ms {
                self.decide(AnsweredBy::Unknown, "initial-silence", at);
            } else if self.in_greeting && self.silence_run_ms >= c.after_greeting_silence_ms {
                self.decide(AnsweredBy::Human, "after-greeting-silence", at);
            }
        } else {
            self.silence_run_ms = 0;
            self.voice_run_ms += STEP_MS;
            self.speech_ms += STEP_MS;
            if !self.in_word && self.voice_run_ms >= c.min_word_length_ms {
                self.in_word = true;
                self.in_greeting = true;
                self.words += 1;
            }
            if self.words > c.max_words {
                self.decide(AnsweredBy::MachineStart, "max-words", at);
            } else if self.in_greeting && self.speech_ms >= c.greeting_ms {
                self.decide(AnsweredBy::MachineStart, "long-greeting", at);
            }
        }
        if at >= self.config.total_analysis_ms {
            self.decide(AnsweredBy::Unknown, "analysis-time", at);
        }
    }

    /// Records a verdict unless there already is one; returns the one that stands.
    fn decide(&mut self, answered_by: AnsweredBy, reason: &'static str, at_ms: u64) -> Verdict {
        *self.verdict.get_or_insert(Verdict {
            answered_by,
            reason,
            decided_after_ms: at_ms,
            speech_ms: self.speech_ms,
            words: self.words,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1] (xorshift32), so the tests need no seed handling.
    struct Noise(u32);

    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            f64::from(self.0) / f64::from(u32::MAX) * 2.0 - 1.0
        }
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 8]
    }

    /// A speech-like word: five harmonics of a 140 Hz voice plus noise, under a 4 Hz syllable
    /// envelope that dips to 30% (about -34 dBFS, still voice) and 5 ms fades at both ends.
    /// About -24 dBFS RMS at the envelope's peak, near telephone speech level.
    fn word(ms: usize, noise: &mut Noise) -> Vec<i16> {
        let n = ms * 8;
        (0..n)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let tau = 2.0 * std::f64::consts::PI;
                let voiced: f64 = (1..=5)
                    .map(|h| (tau * 140.0 * f64::from(h) * t).sin() / f64::from(h))
                    .sum();
                let env = 0.3 + 0.7 * (std::f64::consts::PI * 4.0 * t).sin().abs();
                let fade = ((i.min(n - 1 - i)) as f64 / 40.0).min(1.0);
                (3000.0 * env * fade * (0.8 * voiced + 0.4 * noise.next())).round() as i16
            })
            .collect()
    }

    fn tone(freq: f64, dbfs: f64, ms: usize) -> Vec<i16> {
        let amplitude = 32768.0 * 10f64.powf(dbfs / 20.0) * std::f64::consts::SQRT_2;
        (0..ms * 8)
            .map(|n| {
                let t = n as f64 / 8000.0;
                (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
            })
            .collect()
    }

    /// Words of the given lengths with the given silent gaps between them, after `lead` ms of
    /// silence and followed by `tail` ms of silence.
    fn utterance(lead: usize, words: &[usize], gap: usize, tail: usize) -> Vec<i16> {
        let mut noise = Noise(0x1234_5678);
        let mut pcm = silence(lead);
        for (i, &ms) in words.iter().enumerate() {
            if i > 0 {
                pcm.extend(silence(gap));
            }
            pcm.extend(word(ms, &mut noise));
        }
        pcm.extend(silence(tail));
        pcm
    }

    /// Feeds `pcm` in frames of `frame` samples, each arriving when its audio ends (clock =
    /// audio), from `start`; then, if undecided, finishes when the audio ends.
    fn detect_with(config: AmdConfig, pcm: &[i16], frame: usize) -> Verdict {
        let start = 1_000_000;
        let mut amd = Amd::new(config, start);
        let mut sent = 0;
        for chunk in pcm.chunks(frame) {
            sent += chunk.len() as u64;
            if let Some(v) = amd.push(start + sent / 8, chunk) {
                return v;
            }
        }
        amd.finish(start + sent / 8)
    }

    fn detect(pcm: &[i16]) -> Verdict {
        detect_with(AmdConfig::default(), pcm, 160)
    }

    fn verdict(
        answered_by: AnsweredBy,
        reason: &'static str,
        decided_after_ms: u64,
        speech_ms: u64,
        words: u32,
    ) -> Verdict {
        Verdict {
            answered_by,
            reason,
            decided_after_ms,
            speech_ms,
            words,
        }
    }

    #[test]
    fn defaults_are_asterisks_and_strings_are_twilios() {
        let c = AmdConfig::default();
        assert_eq!(
            (
                c.initial_silence_ms,
                c.greeting_ms,
                c.after_greeting_silence_ms,
                c.total_analysis_ms,
                c.min_word_length_ms,
                c.between_words_silence_ms,
                c.max_words
            ),
            (2500, 1500, 800, 5000, 100, 50, 3)
        );
        assert_eq!(c.silence_threshold_dbfs, level::SILENCE_THRESHOLD_DBFS);
        assert_eq!(AnsweredBy::Human.as_str(), "human");
        assert_eq!(AnsweredBy::MachineStart.as_str(), "machine_start");
        assert_eq!(AnsweredBy::Unknown.as_str(), "unknown");
    }

    #[test]
    fn the_synthetic_word_is_voice_throughout() {
        let mut noise = Noise(1);
        let w = word(1000, &mut noise);
        let db = level::rms_dbfs(&w);
        assert!((-27.0..-20.0).contains(&db), "{db}");
        // Every 10 ms step but the faded edges reads as voice.
        let steps: Vec<bool> = w.chunks(STEP_SAMPLES).map(level::is_silent).collect();
        assert!(steps.iter().all(|&silent| !silent), "{steps:?}");
    }

    #[test]
    fn a_short_hello_then_waiting_is_human() {
        // 300 ms silence, "hello" for 600 ms, then the person waits.
        let pcm = utterance(300, &[600], 0, 3000);
        // 300 + 600 + 800 ms of after-greeting silence.
        assert_eq!(
            detect(&pcm),
            verdict(AnsweredBy::Human, "after-greeting-silence", 1700, 600, 1)
        );
    }

    #[test]
    fn hello_there_two_words_is_still_human() {
        let pcm = utterance(300, &[300, 350], 150, 3000);
        assert_eq!(
            detect(&pcm),
            verdict(AnsweredBy::Human, "after-greeting-silence", 1900, 650, 2)
        );
    }

    #[test]
    fn continuous_speech_is_a_machine_long_greeting() {
        // 300 ms silence, then 4 s of speech whose syllables never fall silent.
        let pcm = utterance(300, &[4000], 0, 1000);
        assert_eq!(
            detect(&pcm),
            verdict(AnsweredBy::MachineStart, "long-greeting", 1800, 1500, 1)
        );
        // Short pauses (30 ms, under the 50 ms between words) do not split it into words; the
        // pauses are not voice, so 1500 ms of voice is reached a little later.
        let pcm = utterance(300, &[500, 500, 500, 500, 500, 500, 500, 500], 30, 1000);
        let v = detect(&pcm);
        assert_eq!(
            (v.answered_by, v.reason, v.speech_ms, v.words),
            (AnsweredBy::MachineStart, "long-greeting", 1500, 1)
        );
        assert_eq!(v.decided_after_ms, 300 + 3 * 500 + 2 * 30);
    }

    #[test]
    fn speech_bursts_with_short_gaps_are_a_machine() {
        // 4 s of 400 ms bursts separated by 80 ms gaps (over the 50 ms between words): the
        // fourth word, 100 ms into it, exceeds three words.
        let pcm = utterance(300, &[400; 9], 80, 1000);
        assert_eq!(
            detect(&pcm),
            verdict(
                AnsweredBy::MachineStart,
                "max-words",
                300 + 3 * 480 + 100,
                1300,
                4
            )
        );
    }

    #[test]
    fn many_short_words_are_a_machine() {
        // Five 200 ms words with 200 ms pauses: little voice in total, but too many words.
        let pcm = utterance(300, &[200; 5], 200, 2000);
        assert_eq!(
            detect(&pcm),
            verdict(
                AnsweredBy::MachineStart,
                "max-words",
                300 + 3 * 400 + 100,
                700,
                4
            )
        );
    }

    #[test]
    fn silence_is_unknown_after_the_initial_silence() {
        let pcm = silence(6000);
        assert_eq!(
            detect(&pcm),
            verdict(AnsweredBy::Unknown, "initial-silence", 2500, 0, 0)
        );
        // Line noise at -60 dBFS is silence too.
        let hiss = tone(3000.0, -60.0, 6000);
        assert_eq!(
            detect(&hiss),
            verdict(AnsweredBy::Unknown, "initial-silence", 2500, 0, 0)
        );
    }

    #[test]
    fn a_click_in_the_silence_restarts_the_initial_silence_but_is_no_word() {
        // A 60 ms beep at 1 s: voice, shorter than a word.
        let mut pcm = silence(1000);
        pcm.extend(tone(1000.0, -20.0, 60));
        pcm.extend(silence(5000));
        assert_eq!(
            detect(&pcm),
            verdict(AnsweredBy::Unknown, "initial-silence", 1060 + 2500, 60, 0)
        );
    }

    #[test]
    fn steady_noise_or_tone_reads_as_a_long_greeting() {
        // Documented behaviour, not a wish: an energy detector cannot tell a loud steady hum or
        // music from talking.
        let hum = tone(440.0, -20.0, 5000);
        assert_eq!(
            detect(&hum),
            verdict(AnsweredBy::MachineStart, "long-greeting", 1500, 1500, 1)
        );
    }

    #[test]
    fn fax_cng_reads_as_human() {
        // A known miss: CNG is 1100 Hz for 0.5 s every 3.5 s; that looks like a short hello
        // and a wait. Twilio would say `fax`; we cannot.
        let mut pcm = tone(1100.0, -20.0, 500);
        pcm.extend(silence(3000));
        pcm.extend(tone(1100.0, -20.0, 500));
        assert_eq!(
            detect(&pcm),
            verdict(AnsweredBy::Human, "after-greeting-silence", 1300, 500, 1)
        );
    }

    #[test]
    fn nothing_decided_within_the_analysis_time_is_unknown() {
        let config = AmdConfig {
            total_analysis_ms: 1000,
            ..AmdConfig::default()
        };
        let pcm = utterance(300, &[600], 0, 3000);
        assert_eq!(
            detect_with(config, &pcm, 160),
            verdict(AnsweredBy::Unknown, "analysis-time", 1000, 600, 1)
        );
    }

    #[test]
    fn the_clock_ends_the_analysis_when_no_audio_comes() {
        let mut amd = Amd::new(AmdConfig::default(), 500);
        assert_eq!(amd.push(520, &silence(20)), None);
        // Audio stops; the next push (or an empty one) comes late.
        assert_eq!(amd.push(5_499, &[]), None);
        assert_eq!(
            amd.push(5_500, &[]),
            Some(verdict(AnsweredBy::Unknown, "analysis-time", 5000, 0, 0))
        );
    }

    #[test]
    fn finish_before_a_verdict_is_unknown_timeout() {
        let mut amd = Amd::new(AmdConfig::default(), 100);
        let pcm = utterance(0, &[300], 0, 200);
        assert_eq!(amd.push(100 + 500, &pcm), None);
        assert_eq!(amd.verdict(), None);
        let v = amd.finish(100 + 700);
        assert_eq!(v, verdict(AnsweredBy::Unknown, "timeout", 700, 300, 1));
        // Later input and calls repeat it.
        assert_eq!(amd.push(900, &silence(2000)), Some(v));
        assert_eq!(amd.finish(99_999), v);
    }

    #[test]
    fn the_verdict_sticks() {
        let mut amd = Amd::new(AmdConfig::default(), 0);
        let v = amd.push(3000, &silence(3000)).expect("initial silence");
        assert_eq!(v.reason, "initial-silence");
        assert_eq!(amd.push(3020, &tone(440.0, -10.0, 2000)), Some(v));
        assert_eq!(amd.push(9000, &[]), Some(v));
        assert_eq!(amd.verdict(), Some(v));
        assert_eq!(amd.finish(10_000), v);
    }

    #[test]
    fn frame_size_does_not_change_the_verdict() {
        let signals = [
            utterance(300, &[600], 0, 3000),
            utterance(300, &[300, 350], 150, 3000),
            utterance(300, &[4000], 0, 1000),
            utterance(300, &[400; 9], 80, 1000),
            utterance(300, &[200; 5], 200, 2000),
            silence(6000),
        ];
        for pcm in &signals {
            let expected = detect(pcm);
            for frame in [1, 7, 80, 159, 160, 240, 1000, 8000, pcm.len()] {
                assert_eq!(
                    detect_with(AmdConfig::default(), pcm, frame),
                    expected,
                    "frame {frame}"
                );
            }
        }
    }

    #[test]
    fn empty_input_odd_configs_and_a_backwards_clock_do_not_panic() {
        let mut amd = Amd::new(AmdConfig::default(), 10_000);
        assert_eq!(amd.push(10_000, &[]), None);
        assert_eq!(amd.push(0, &[]), None);
        assert_eq!(amd.push(0, &[1, 2, 3]), None);
        assert_eq!(amd.finish(0).reason, "timeout");

        let zero = AmdConfig {
            initial_silence_ms: 0,
            greeting_ms: 0,
            after_greeting_silence_ms: 0,
            total_analysis_ms: 0,
            min_word_length_ms: 0,
            between_words_silence_ms: 0,
            max_words: 0,
            silence_threshold_dbfs: f32::NAN,
        };
        let mut amd = Amd::new(zero.clone(), 0);
        assert!(amd.push(0, &[]).is_some());
        let mut amd = Amd::new(zero, 0);
        assert!(amd.push(10, &silence(10)).is_some());
        let mut amd = Amd::new(AmdConfig::default(), u64::MAX);
        assert_eq!(amd.push(u64::MAX, &silence(20)), None);
    }
}
