//! The recorder behind TwiML `<Record>`: collects 8 kHz audio and decides when to stop (max
//! length, silence timeout, finish key), as a pure state machine on caller-supplied time.

use std::collections::VecDeque;
use std::ops::Range;

use crate::level;
use crate::spool::{Tape, Taped};

/// What `<Record>` was asked for, with Twilio's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOptions {
    /// Twilio `maxLength`: stop after this long (default 3600 s). It also bounds the audio held,
    /// at 16 KB per second.
    pub max_length_ms: u64,
    /// Twilio `timeout`: stop after this much silence (default 5 s); 0 never stops on silence.
    pub silence_timeout_ms: u64,
    /// Twilio `finishOnKey`: any of these keys stops the recording (default `1234567890*#`);
    /// empty means none.
    pub finish_on_key: String,
    /// Twilio `trim="trim-silence"` (the default): remove leading and trailing silence.
    pub trim: bool,
    /// The spool file's name (see [`crate::spool::Spool::tape`]); empty: one is made up.
    pub tape: String,
}

impl Default for RecordOptions {
    fn default() -> RecordOptions {
        RecordOptions {
            max_length_ms: 3_600_000,
            silence_timeout_ms: 5_000,
            finish_on_key: "1234567890*#".to_owned(),
            trim: true,
            tape: String::new(),
        }
    }
}

/// Why a recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `maxLength` reached.
    MaxLength,
    /// `timeout` of silence.
    Silence,
    /// A key of `finishOnKey` was pressed.
    FinishKey(char),
    /// The caller hung up.
    Hangup,
    /// Stopped from outside (call redirected or ended by the API).
    Stopped,
}

/// A finished recording.
#[derive(Debug)]
pub struct Recording {
    /// 8 kHz mono audio, as recorded.
    pub tape: Taped,
    /// The samples kept of it: all, or what trimming its silence leaves.
    pub keep: Range<u64>,
    /// Length of `keep`.
    pub duration_ms: u64,
    /// Whether any frame was above the silence threshold (Twilio skips the action of an empty
    /// recording).
    pub heard_audio: bool,
    pub reason: StopReason,
    /// The finish key pressed, if that is what stopped it.
    pub digit: Option<char>,
}

impl Recording {
    /// The kept audio of a memory tape, for tests.
    #[cfg(test)]
    fn pcm(&self) -> Vec<i16> {
        self.tape.memory()[self.keep.start as usize..self.keep.end as usize].to_vec()
    }
}

const SAMPLES_PER_MS: u64 = crate::SAMPLE_RATE as u64 / 1000;

/// Which 20 ms frames of a recording had sound, judged as they come (frames counted from the
/// start, as [`level::trim_silence_range`] counts them), so trimming needs no second look.
#[derive(Debug, Default)]
struct Loudness {
    /// The frame being filled (fewer than [`level::FRAME_SAMPLES`]).
    partial: Vec<i16>,
    frames: usize,
    first_loud: Option<usize>,
    /// One past the last loud frame.
    end_loud: usize,
}

impl Loudness {
    fn push(&mut self, mut pcm: &[i16]) {
        while !pcm.is_empty() {
            let n = (level::FRAME_SAMPLES - self.partial.len()).min(pcm.len());
            self.partial.extend_from_slice(&pcm[..n]);
            pcm = &pcm[n..];
            if self.partial.len() == level::FRAME_SAMPLES {
                self.judge();
            }
        }
    }

    fn push_zeros(&mut self, mut samples: usize) {
        const ZEROS: [i16; level::FRAME_SAMPLES] = [0; level::FRAME_SAMPLES];
        while samples > 0 {
            let n = samples.min(ZEROS.len());
            self.push(&ZEROS[..n]);
            samples -= n;
        }
    }

    fn judge(&mut self) {
        if !level::is_silent(&self.partial) {
            self.first_loud.get_or_insert(self.frames);
            self.end_loud = self.frames + 1;
        }
        self.frames += 1;
        self.partial.clear();
    }

    /// What [`level::trim_silence_range`] keeps of the `len` samples judged.
    fn keep(mut self, len: u64) -> Range<u64> {
        if !self.partial.is_empty() {
            self.judge();
        }
        let Some(first) = self.first_loud else {
            return 0..0;
        };
        let margin = level::TRIM_MARGIN_FRAMES;
        let frame = level::FRAME_SAMPLES as u64;
        let start = first.saturating_sub(margin) as u64 * frame;
        let end = (((self.end_loud + margin) as u64) * frame).min(len);
        start..end
    }
}

/// One `<Record>` in progress.
///
/// Inputs: [`Recorder::push`] for each frame of audio as it arrives (and
/// [`Recorder::push_silence`] for a lost packet), [`Recorder::digit`] for each key press, and
/// [`Recorder::tick`] from the worker's clock, which catches the time limits when no audio
/// arrives at all. Each returns the stop reason once the recorder has stopped (and keeps
/// returning it; later input is ignored). Then [`Recorder::finish`] gives the recording.
///
/// Time limits run on the caller's clock (`now_ms`), not on the audio received: the silence
/// timeout counts from the last frame above [`level::SILENCE_THRESHOLD_DBFS`], or from the start.
#[derive(Debug)]
pub struct Recorder {
    opts: RecordOptions,
    started_ms: u64,
    /// When the last non-silent frame arrived (or the start).
    last_sound_ms: u64,
    tape: Tape,
    /// Judged only when trimming.
    loudness: Option<Loudness>,
    /// `max_length_ms` in samples: the most audio kept.
    max_samples: usize,
    heard_audio: bool,
    stopped: Option<StopReason>,
}

impl Recorder {
    /// A recorder writing to `tape`.
    pub fn new(opts: RecordOptions, now_ms: u64, tape: Tape) -> Recorder {
        let max_samples = usize::try_from(opts.max_length_ms.saturating_mul(SAMPLES_PER_MS))
            .unwrap_or(usize::MAX);
        Recorder {
            loudness: opts.trim.then(Loudness::default),
            opts,
            started_ms: now_ms,
            last_sound_ms: now_ms,
            tape,
            max_samples,
            heard_audio: false,
            stopped: None,
        }
    }

    /// Appends a frame of 8 kHz audio that arrived at `now_ms`. Audio past `max_length_ms` is
    /// dropped.
    pub fn push(&mut self, now_ms: u64, pcm: &[i16]) -> Option<StopReason> {
        if self.stopped.is_some() {
            return self.stopped;
        }
        let room = self.max_samples.saturating_sub(self.recorded());
        let kept = &pcm[..pcm.len().min(room)];
        // Judged per 20 ms, so a large push is not averaged into silence.
        if kept
            .chunks(level::FRAME_SAMPLES)
            .any(|f| !level::is_silent(f))
        {
            self.heard_audio = true;
            self.last_sound_ms = self.last_sound_ms.max(now_ms);
        }
        if let Some(l) = &mut self.loudness {
            l.push(kept);
        }
        self.tape.extend(kept);
        if self.recorded() >= self.max_samples {
            return self.stop(StopReason::MaxLength);
        }
        self.tick(now_ms)
    }

    /// Appends `samples` of silence at `now_ms`, standing in for a lost packet.
    pub fn push_silence(&mut self, now_ms: u64, samples: usize) -> Option<StopReason> {
        if self.stopped.is_some() {
            return self.stopped;
        }
        let room = self.max_samples.saturating_sub(self.recorded());
        let n = samples.min(room);
        if let Some(l) = &mut self.loudness {
            l.push_zeros(n);
        }
        self.tape.extend_zeros(n);
        if self.recorded() >= self.max_samples {
            return self.stop(StopReason::MaxLength);
        }
        self.tick(now_ms)
    }

    /// A key pressed during the recording: a finish key stops it (and is reported as the
    /// recording's digit); others are ignored.
    pub fn digit(&mut self, c: char) -> Option<StopReason> {
        if self.stopped.is_some() {
            return self.stopped;
        }
        if self.opts.finish_on_key.contains(c) {
            return self.stop(StopReason::FinishKey(c));
        }
        None
    }

    /// Checks the time limits at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Option<StopReason> {
        if self.stopped.is_some() {
            return self.stopped;
        }
        if self.elapsed_ms(now_ms) >= self.opts.max_length_ms {
            return self.stop(StopReason::MaxLength);
        }
        let silent_for = now_ms.saturating_sub(self.last_sound_ms);
        if self.opts.silence_timeout_ms > 0 && silent_for >= self.opts.silence_timeout_ms {
            return self.stop(StopReason::Silence);
        }
        None
    }

    /// Time since the recording started.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.started_ms)
    }

    /// Why the recorder stopped itself, if it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    /// Ends the recording. `reason` is why the caller ends it (`Hangup`, `Stopped`, or the
    /// reason a method returned); if the recorder had already stopped itself, its own reason wins.
    pub fn finish(self, reason: StopReason) -> Recording {
        let reason = self.stopped.unwrap_or(reason);
        let len = self.tape.len();
        let keep = match self.loudness {
            Some(l) => l.keep(len),
            None => 0..len,
        };
        let duration_ms = (keep.end - keep.start) / SAMPLES_PER_MS;
        let digit = match reason {
            StopReason::FinishKey(c) => Some(c),
            _ => None,
        };
        Recording {
            tape: self.tape.finish(),
            keep,
            duration_ms,
            heard_audio: self.heard_audio,
            reason,
            digit,
        }
    }

    fn recorded(&self) -> usize {
        usize::try_from(self.tape.len()).unwrap_or(usize::MAX)
    }

    fn stop(&mut self, reason: StopReason) -> Option<StopReason> {
        self.stopped = Some(reason);
        self.stopped
    }
}

/// How far the peer's side may trail what was sent before silence is added (jitter).
const ALIGN_SLACK_SAMPLES: usize = 60 * SAMPLES_PER_MS as usize;

/// How far one side may run ahead of the other before the other is taken as silent there (a
/// peer that stopped sending must not hold what was said in memory).
const MAX_AHEAD_SAMPLES: usize = 2 * 8000;

/// A conversation being recorded (`<Dial record>`, a whole call): what the peer said and what
/// the call sent it (the bridged party's voice, prompts), mixed as soon as both sides have
/// reached a moment, onto a tape. Both sides run on the worker's clock, a frame at a time, so
/// they stay aligned and little waits unmixed; each stops at `max_samples`.
#[derive(Debug)]
pub struct Conversation {
    heard: VecDeque<i16>,
    said: VecDeque<i16>,
    /// Samples each side has given (mixed or waiting).
    heard_len: usize,
    said_len: usize,
    max_samples: usize,
    tape: Tape,
    /// Two channels, interleaved, instead of one mixed: left what the peer said (the call's
    /// own party: the caller of an inbound call, the callee of an API call), right what the
    /// call sent it.
    dual: bool,
}

impl Conversation {
    pub fn new(max_ms: u64, tape: Tape) -> Conversation {
        Conversation {
            heard: VecDeque::new(),
            said: VecDeque::new(),
            heard_len: 0,
            said_len: 0,
            max_samples: usize::try_from(max_ms * SAMPLES_PER_MS).unwrap_or(usize::MAX),
            tape,
            dual: false,
        }
    }

    /// The two sides on two channels ([`Conversation::dual`]).
    pub fn dual(mut self) -> Conversation {
        self.dual = true;
        self
    }

    /// The peer's audio, as it is released in order.
    pub fn heard(&mut self, pcm: &[i16]) {
        let room = self.max_samples.saturating_sub(self.heard_len);
        let pcm = &pcm[..pcm.len().min(room)];
        self.heard_len += pcm.len();
        self.heard.extend(pcm);
        self.mix();
    }

    /// What the call sent for one frame (`None`: silence of `samples`, e.g. a digit's time).
    pub fn said(&mut self, pcm: Option<&[i16]>, samples: usize) {
        let room = self.max_samples.saturating_sub(self.said_len);
        match pcm {
            Some(pcm) => {
                let pcm = &pcm[..pcm.len().min(room)];
                self.said_len += pcm.len();
                self.said.extend(pcm);
            }
            None => {
                let n = samples.min(room);
                self.said_len += n;
                self.said.extend(std::iter::repeat_n(0, n));
            }
        }
        self.mix();
    }

    /// Pads the peer's side with silence up to what was sent, less a jitter allowance: a peer
    /// that sends nothing must not shift everything it says later.
    pub fn align_heard(&mut self) {
        let behind = self
            .said_len
            .saturating_sub(self.heard_len + ALIGN_SLACK_SAMPLES);
        let room = self.max_samples.saturating_sub(self.heard_len);
        let n = behind.min(room);
        self.heard_len += n;
        self.heard.extend(std::iter::repeat_n(0, n));
        self.mix();
    }

    /// Mixes what both sides have (and, of a side far ahead, what the other will not catch
    /// up with) onto the tape.
    fn mix(&mut self) {
        let both = self.heard.len().min(self.said.len());
        let ahead = self.heard.len().max(self.said.len());
        let n = both.max(ahead.saturating_sub(MAX_AHEAD_SAMPLES));
        if n == 0 {
            return;
        }
        self.mix_out(n);
    }

    fn mix_out(&mut self, n: usize) {
        let mut out = [0i16; 320];
        let per = if self.dual { 2 } else { 1 };
        let mut left = n;
        while left > 0 {
            let m = left.min(out.len() / per);
            for o in out[..m * per].chunks_mut(per) {
                let a = self.heard.pop_front().unwrap_or(0);
                let b = self.said.pop_front().unwrap_or(0);
                if self.dual {
                    o[0] = a;
                    o[1] = b;
                } else {
                    o[0] = (i32::from(a) + i32::from(b))
                        .clamp(i32::from(i16::MIN), i32::from(i16::MAX))
                        as i16;
                }
            }
            self.tape.extend(&out[..m * per]);
            left -= m;
        }
    }

    /// The rest mixed (the shorter side padded with silence), and the tape ended: as long as
    /// the longer side.
    pub fn finish(mut self) -> Taped {
        let n = self.heard.len().max(self.said.len());
        self.mix_out(n);
        self.tape.finish()
    }
}

#[cfg(test)]
mod conversation_tests {
    use super::*;

    #[test]
    fn both_sides_are_mixed_aligned_and_clipped() {
        let mut c = Conversation::new(1_000, Tape::memory());
        c.heard(&[100, 200, i16::MAX]);
        c.said(Some(&[1, 2, 10]), 3);
        c.said(None, 2);
        assert_eq!(c.finish().memory(), [101, 202, i16::MAX, 0, 0]);
    }

    #[test]
    fn a_silent_peer_is_padded_to_what_was_sent_less_the_slack() {
        let mut c = Conversation::new(10_000, Tape::memory());
        c.said(None, 8_000);
        c.align_heard();
        c.heard(&[7; 10]);
        let taped = c.finish();
        let mixed = taped.memory();
        let at = 8_000 - ALIGN_SLACK_SAMPLES;
        assert_eq!(mixed.len(), 8_000);
        assert_eq!(&mixed[at..at + 10], &[7; 10]);
        assert!(mixed[..at].iter().all(|&s| s == 0));
    }

    #[test]
    fn a_dual_conversation_keeps_each_side_on_its_channel() {
        let mut c = Conversation::new(1_000, Tape::memory()).dual();
        c.heard(&[100, 200, 300]);
        c.said(Some(&[1, 2]), 2);
        c.said(None, 1);
        // left the peer, right what was sent, interleaved
        assert_eq!(c.finish().memory(), [100, 1, 200, 2, 300, 0]);
    }

    #[test]
    fn each_side_stops_at_the_limit() {
        let mut c = Conversation::new(1, Tape::memory()); // 8 samples
        c.heard(&[1; 5]);
        c.heard(&[1; 5]);
        c.said(None, 100);
        let taped = c.finish();
        let mixed = taped.memory();
        assert_eq!(mixed.len(), 8);
        assert_eq!(mixed.iter().filter(|&&s| s == 1).count(), 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Tape;

    const FRAME: usize = 160;

    /// 20 ms of a 440 Hz tone at about -15 dBFS.
    fn loud() -> Vec<i16> {
        (0..FRAME)
            .map(|n| {
                let t = n as f64 / 8000.0;
                (5000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect()
    }

    fn quiet() -> Vec<i16> {
        vec![0; FRAME]
    }

    /// Drives a recorder with one frame every 20 ms from `start`: `loud` frames while
    /// `is_loud(ms since start)`. Returns the time and reason of the stop, if any before `until`.
    fn run(
        rec: &mut Recorder,
        start: u64,
        until: u64,
        is_loud: impl Fn(u64) -> bool,
    ) -> Option<(u64, StopReason)> {
        let (loud, quiet) = (loud(), quiet());
        let mut now = start;
        while now < until {
            now += 20;
            let frame = if is_loud(now - start) { &loud } else { &quiet };
            if let Some(reason) = rec.push(now, frame) {
                return Some((now, reason));
            }
        }
        None
    }

    #[test]
    fn twilio_defaults() {
        let o = RecordOptions::default();
        assert_eq!(o.max_length_ms, 3_600_000);
        assert_eq!(o.silence_timeout_ms, 5_000);
        assert_eq!(o.finish_on_key, "1234567890*#");
        assert!(o.trim);
    }

    #[test]
    fn stops_after_silence_timeout_from_the_last_sound() {
        let start = 1_000_000;
        let mut rec = Recorder::new(RecordOptions::default(), start, Tape::memory());
        // Talk for 2 s, then silence: stops 5 s after the last loud frame.
        let stop = run(&mut rec, start, start + 60_000, |t| t <= 2_000);
        assert_eq!(stop, Some((start + 7_000, StopReason::Silence)));
        assert_eq!(rec.elapsed_ms(start + 7_000), 7_000);
        let r = rec.finish(StopReason::Hangup);
        assert_eq!(r.reason, StopReason::Silence);
        assert!(r.heard_audio);
        assert_eq!(r.digit, None);
        // Trimmed: 2 s of sound plus the 100 ms margin after it (none fits before).
        assert_eq!(r.duration_ms, 2_100);
        assert_eq!(r.pcm().len(), 2_100 * 8);
    }

    #[test]
    fn silence_from_the_start_counts() {
        let mut rec = Recorder::new(RecordOptions::default(), 0, Tape::memory());
        assert_eq!(
            run(&mut rec, 0, 60_000, |_| false),
            Some((5_000, StopReason::Silence))
        );
        let r = rec.finish(StopReason::Stopped);
        assert!(!r.heard_audio);
        assert!(r.pcm().is_empty());
        assert_eq!(r.duration_ms, 0);
    }

    #[test]
    fn silence_timeout_zero_never_stops_on_silence() {
        let opts = RecordOptions {
            silence_timeout_ms: 0,
            max_length_ms: 30_000,
            ..Default::default()
        };
        let mut rec = Recorder::new(opts, 0, Tape::memory());
        assert_eq!(
            run(&mut rec, 0, 60_000, |_| false),
            Some((30_000, StopReason::MaxLength))
        );
    }

    #[test]
    fn max_length_stops_and_bounds_the_audio() {
        let opts = RecordOptions {
            max_length_ms: 1_000,
            trim: false,
            ..Default::default()
        };
        let mut rec = Recorder::new(opts.clone(), 0, Tape::memory());
        assert_eq!(
            run(&mut rec, 0, 10_000, |_| true),
            Some((1_000, StopReason::MaxLength))
        );
        let r = rec.finish(StopReason::Hangup);
        assert_eq!(
            (r.reason, r.pcm().len(), r.duration_ms),
            (StopReason::MaxLength, 8_000, 1_000)
        );

        // Audio arriving faster than the clock (a burst after a stall) is cut at the limit.
        let mut rec = Recorder::new(opts.clone(), 0, Tape::memory());
        assert_eq!(
            rec.push(10, &vec![1000; 12_000]),
            Some(StopReason::MaxLength)
        );
        assert_eq!(rec.finish(StopReason::Stopped).pcm().len(), 8_000);

        // The clock alone, no audio at all (the peer stopped sending).
        let mut rec = Recorder::new(opts, 500, Tape::memory());
        assert_eq!(rec.tick(1_000), None);
        assert_eq!(rec.tick(1_499), None);
        assert_eq!(rec.tick(1_500), Some(StopReason::MaxLength));
    }

    #[test]
    fn finish_key_stops_and_is_reported() {
        let mut rec = Recorder::new(RecordOptions::default(), 0, Tape::memory());
        assert_eq!(run(&mut rec, 0, 1_000, |_| true), None);
        assert_eq!(rec.digit('#'), Some(StopReason::FinishKey('#')));
        let r = rec.finish(StopReason::Stopped);
        assert_eq!(r.reason, StopReason::FinishKey('#'));
        assert_eq!(r.digit, Some('#'));
        assert_eq!(r.duration_ms, 1_000);
    }

    #[test]
    fn keys_outside_finish_on_key_are_ignored() {
        let opts = RecordOptions {
            finish_on_key: "*".into(),
            ..Default::default()
        };
        let mut rec = Recorder::new(opts, 0, Tape::memory());
        for c in ['1', '#', 'A'] {
            assert_eq!(rec.digit(c), None);
        }
        assert_eq!(rec.digit('*'), Some(StopReason::FinishKey('*')));

        let opts = RecordOptions {
            finish_on_key: String::new(),
            ..Default::default()
        };
        let mut rec = Recorder::new(opts, 0, Tape::memory());
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(rec.digit(c), None);
        }
    }

    #[test]
    fn hangup_and_stop_from_outside() {
        for reason in [StopReason::Hangup, StopReason::Stopped] {
            let mut rec = Recorder::new(RecordOptions::default(), 0, Tape::memory());
            assert_eq!(run(&mut rec, 0, 3_000, |t| t > 1_000 && t <= 2_000), None);
            let r = rec.finish(reason);
            assert_eq!(r.reason, reason);
            assert_eq!(r.digit, None);
            // 1 s of sound with 100 ms on each side.
            assert_eq!(r.duration_ms, 1_200);
        }
    }

    #[test]
    fn the_first_stop_wins() {
        let mut rec = Recorder::new(RecordOptions::default(), 0, Tape::memory());
        assert_eq!(rec.digit('5'), Some(StopReason::FinishKey('5')));
        // Later input changes nothing and repeats the reason.
        assert_eq!(rec.push(20, &loud()), Some(StopReason::FinishKey('5')));
        assert_eq!(rec.push_silence(40, 160), Some(StopReason::FinishKey('5')));
        assert_eq!(rec.tick(99_999_999), Some(StopReason::FinishKey('5')));
        assert_eq!(rec.digit('#'), Some(StopReason::FinishKey('5')));
        assert_eq!(rec.stopped(), Some(StopReason::FinishKey('5')));
        let r = rec.finish(StopReason::Hangup);
        assert_eq!((r.reason, r.digit), (StopReason::FinishKey('5'), Some('5')));
        assert!(r.pcm().is_empty());
    }

    #[test]
    fn lost_packets_are_filled_with_silence() {
        let opts = RecordOptions {
            trim: false,
            ..Default::default()
        };
        let mut rec = Recorder::new(opts, 0, Tape::memory());
        assert_eq!(rec.push(20, &loud()), None);
        assert_eq!(rec.push_silence(40, 160), None);
        assert_eq!(rec.push(60, &loud()), None);
        let r = rec.finish(StopReason::Hangup);
        assert_eq!(r.pcm().len(), 480);
        assert!(r.pcm()[160..320].iter().all(|&s| s == 0));
        assert_eq!(r.duration_ms, 60);
    }

    #[test]
    fn lost_packets_count_as_silence_for_the_timeout() {
        let mut rec = Recorder::new(RecordOptions::default(), 0, Tape::memory());
        assert_eq!(rec.push(20, &loud()), None);
        let mut now = 20;
        let stop = loop {
            now += 20;
            if let Some(reason) = rec.push_silence(now, 160) {
                break (now, reason);
            }
        };
        assert_eq!(stop, (5_020, StopReason::Silence));
    }

    #[test]
    fn quiet_background_is_silence_and_a_big_push_is_judged_per_frame() {
        let mut rec = Recorder::new(RecordOptions::default(), 0, Tape::memory());
        // Line noise at about -60 dBFS.
        let hiss: Vec<i16> = (0..FRAME)
            .map(|n| if n % 2 == 0 { 30 } else { -30 })
            .collect();
        assert_eq!(rec.push(20, &hiss), None);
        // One second of silence with one loud frame inside, pushed at once: counts as sound.
        let mut second = vec![0; 8000];
        second[4000..4160].copy_from_slice(&loud());
        assert_eq!(rec.push(1_000, &second), None);
        assert_eq!(rec.tick(5_999), None);
        assert_eq!(rec.tick(6_000), Some(StopReason::Silence));
        assert!(rec.finish(StopReason::Hangup).heard_audio);
    }

    #[test]
    fn untrimmed_keeps_everything() {
        let opts = RecordOptions {
            trim: false,
            ..Default::default()
        };
        let mut rec = Recorder::new(opts, 0, Tape::memory());
        assert_eq!(run(&mut rec, 0, 3_000, |t| t > 1_000 && t <= 2_000), None);
        let r = rec.finish(StopReason::Hangup);
        assert_eq!(r.duration_ms, 3_000);
        assert_eq!(r.pcm().len(), 24_000);
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let mut rec = Recorder::new(RecordOptions::default(), 10_000, Tape::memory());
        assert_eq!(rec.push(5_000, &loud()), None);
        assert_eq!(rec.tick(0), None);
        assert_eq!(rec.elapsed_ms(0), 0);
        assert_eq!(rec.tick(15_000), Some(StopReason::Silence));
    }

    #[test]
    fn zero_max_length_stops_at_once() {
        let opts = RecordOptions {
            max_length_ms: 0,
            ..Default::default()
        };
        let mut rec = Recorder::new(opts, 0, Tape::memory());
        assert_eq!(rec.tick(0), Some(StopReason::MaxLength));
        let mut rec = Recorder::new(
            RecordOptions {
                max_length_ms: 0,
                ..Default::default()
            },
            0,
            Tape::memory(),
        );
        assert_eq!(rec.push(0, &loud()), Some(StopReason::MaxLength));
        assert!(rec.finish(StopReason::Hangup).pcm().is_empty());
    }

    #[test]
    fn trimming_as_it_records_keeps_what_trimming_the_whole_keeps() {
        let mut all = Vec::new();
        let mut rec = Recorder::new(RecordOptions::default(), 0, Tape::memory());
        // uneven pieces, so frames straddle pushes; sound, silence and a lost packet
        let pieces: Vec<Vec<i16>> = vec![
            quiet()[..70].to_vec(),
            quiet(),
            loud()[..100].to_vec(),
            loud(),
            quiet(),
            vec![0; 37],
            loud()[..13].to_vec(),
            quiet(),
            quiet(),
            quiet()[..90].to_vec(),
        ];
        let mut t = 0;
        for p in &pieces {
            t += 20;
            all.extend_from_slice(p);
            rec.push(t, p);
        }
        rec.push_silence(t, 500);
        all.extend([0; 500]);
        let r = rec.finish(StopReason::Hangup);
        let want = level::trim_silence_range(&all);
        assert_eq!(r.keep, want.start as u64..want.end as u64);
        assert_eq!(r.pcm(), all[want]);
    }
}
