//! Prompts: fetched audio (WAV, MP3) decoded into 8 kHz mono [`Audio`], the shared cache of
//! prompts and synthesised speech, and the two generated sounds (Record's beep, Pause's silence).
//!
//! Decoding happens once per URL or per spoken text, under `spawn_blocking`, never per packet;
//! so does the only resampling in the crate ([`resample_to_8k`]).
//!
//! Architecture Invariant: this module knows nothing about HTTP clients or clocks. The engine
//! fetches, passes the bytes and the response's validators in, and passes the time in
//! milliseconds to every cache call.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::{Audio, SAMPLE_RATE};

/// Largest input [`decode`] accepts: 64 MiB, about 67 minutes of 128 kbit/s MP3 or 70 minutes
/// of 8 kHz 16-bit WAV. The engine should refuse bigger bodies while fetching.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

/// Longest audio [`decode`] produces: one hour (28.8 M samples, 57.6 MB as [`Audio`]).
/// Decoding stops with [`PromptError::TooLong`] as soon as the output passes it, so a small
/// file that decodes to days of audio costs at most one hour of decoding.
pub const MAX_DURATION_MS: u64 = 60 * 60 * 1000;

/// Sample rates accepted from files. Outside this range the file is broken or exotic, and an
/// absurd rate would make the resampler's tables huge.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=384_000;

/// Consecutive undecodable packets tolerated (a damaged MP3 frame is skipped, as players do)
/// before the file is declared malformed.
const MAX_BAD_PACKETS: usize = 32;

/// Input frames per resampler call.
const RESAMPLE_CHUNK: usize = 1024;

/// Why audio could not be turned into a prompt.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("no audio: the input is empty")]
    Empty,
    #[error("audio input of {bytes} bytes is larger than the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("audio is longer than the limit of {max_ms} ms")]
    TooLong { max_ms: u64 },
    #[error("unsupported or unrecognised audio format: {0}")]
    Unsupported(String),
    #[error("malformed audio: {0}")]
    Malformed(String),
    #[error("the input holds no audio samples")]
    NoAudio,
    #[error("unsupported sample rate {rate} Hz (accepted: 1000 to 384000 Hz)")]
    SampleRate { rate: u32 },
    #[error("resampling to 8 kHz failed: {0}")]
    Resample(String),
}

/// Bounds on one [`decode_with`] call; [`decode`] uses the defaults ([`MAX_INPUT_BYTES`],
/// [`MAX_DURATION_MS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_input_bytes: usize,
    pub max_duration_ms: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_input_bytes: MAX_INPUT_BYTES,
            max_duration_ms: MAX_DURATION_MS,
        }
    }
}

impl DecodeLimits {
    fn max_samples(&self) -> usize {
        let samples = self.max_duration_ms.saturating_mul(u64::from(SAMPLE_RATE)) / 1000;
        usize::try_from(samples).unwrap_or(usize::MAX)
    }
}

/// Decodes a WAV (PCM 8/16/24/32-bit, float, µ-law, A-law) or MP3 file into 8 kHz mono PCM,
/// with the default limits. See [`decode_with`].
pub fn decode(bytes: &[u8], hint: Option<&str>) -> Result<Vec<i16>, PromptError> {
    decode_with(bytes, hint, &DecodeLimits::default())
}

/// Decodes `bytes` into 8 kHz mono PCM: channels are averaged, other rates resampled.
///
/// `hint` is a `Content-Type` (`audio/mpeg`, `audio/x-wav; charset=…`), a file name, URL or
/// extension (`mp3`, `.wav`, `https://x/prompt.wav?v=2`); the format is detected from the bytes
/// either way, the hint only orders the guesses.
///
/// A file cut short after its header yields the audio up to the cut, as players do; a file
/// from which nothing can be decoded is an error. Never panics: a panic inside the decoder is
/// caught and reported as [`PromptError::Malformed`].
pub fn decode_with(
    bytes: &[u8],
    hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Vec<i16>, PromptError> {
    if bytes.is_empty() {
        return Err(PromptError::Empty);
    }
    if bytes.len() > limits.max_input_bytes {
        return Err(PromptError::TooLarge {
            bytes: bytes.len(),
            max: limits.max_input_bytes,
        });
    }
    std::panic::catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, hint, limits))).unwrap_or_else(
        |_| {
            Err(PromptError::Malformed(
                "the decoder failed on this input".to_string(),
            ))
        },
    )
}

fn symphonia_hint(hint: Option<&str>) -> Hint {
    let mut out = Hint::new();
    let Some(hint) = hint.map(str::trim).filter(|h| !h.is_empty()) else {
        return out;
    };
    let lower = hint.to_ascii_lowercase();
    let media_type = lower.split(';').next().unwrap_or("").trim();
    if let Some((kind, _)) = media_type.split_once('/')
        && matches!(kind, "audio" | "application" | "video")
    {
        out.mime_type(media_type);
    } else {
        // A file name, a URL path or a bare extension.
        let path = lower.split(['?', '#']).next().unwrap_or("");
        let name = path.rsplit('/').next().unwrap_or(path);
        out.with_extension(name.rsplit('.').next().unwrap_or(name));
    }
    out
}

fn decode_inner(
    bytes: &[u8],
    hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<Vec<i16>, PromptError> {
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &symphonia_hint(hint),
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| PromptError::Unsupported(e.to_string()))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(PromptError::NoAudio)?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(PromptError::NoAudio)?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| PromptError::Unsupported(e.to_string()))?;

    let mut out = To8k::new(limits);
    let mut interleaved: Vec<f32> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
    let mut bad_packets = 0;
    // Each packet consumes at least one byte of input, so this bounds the loop even if a
    // reader misbehaved and returned empty packets forever.
    for _ in 0..=bytes.len() {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A truncated file: keep what was decoded.
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) if out.produced() > 0 => {
                tracing::debug!(error = %e, "audio: stopping at an unreadable packet");
                break;
            }
            Err(e) => return Err(PromptError::Malformed(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            Err(e @ (SymphoniaError::DecodeError(_) | SymphoniaError::IoError(_))) => {
                bad_packets += 1;
                if bad_packets > MAX_BAD_PACKETS {
                    return Err(PromptError::Malformed(e.to_string()));
                }
                continue;
            }
            Err(e) => return Err(PromptError::Malformed(e.to_string())),
        };
        bad_packets = 0;
        let rate = buf.spec().rate();
        let channels = buf.spec().channels().count();
        if channels == 0 {
            return Err(PromptError::Malformed(
                "a packet has no channels".to_string(),
            ));
        }
        buf.copy_to_vec_interleaved::<f32>(&mut interleaved);
        mono.clear();
        mono.extend(
            interleaved
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() / channels as f32),
        );
        out.push(rate, &mono)?;
    }
    let pcm = out.finish()?;
    if pcm.is_empty() {
        return Err(PromptError::NoAudio);
    }
    Ok(pcm)
}

/// Resamples 8 kHz-or-not mono PCM to 8 kHz mono, bounded by [`MAX_DURATION_MS`]. For callers
/// that already hold raw PCM (speech engines); files go through [`decode`].
pub fn resample_to_8k(pcm: &[i16], rate: u32) -> Result<Vec<i16>, PromptError> {
    let limits = DecodeLimits::default();
    let mut out = To8k::new(&limits);
    let mut chunk: Vec<f32> = Vec::with_capacity(RESAMPLE_CHUNK);
    for part in pcm.chunks(RESAMPLE_CHUNK) {
        chunk.clear();
        chunk.extend(part.iter().map(|&s| f32::from(s) / 32768.0));
        out.push(rate, &chunk)?;
    }
    out.finish()
}

fn to_i16(x: f32) -> i16 {
    // `as` saturates and maps NaN to 0.
    (x * 32768.0).round() as i16
}

/// Streams mono audio of any accepted rate into 8 kHz PCM, so that only the output (bounded by
/// the duration cap) is ever held whole, not the decoded input.
struct To8k {
    out: Vec<i16>,
    max_samples: usize,
    max_ms: u64,
    /// The rate of the current run and its resampler (`None` at 8 kHz).
    current: Option<(u32, Option<Run>)>,
}

/// One resampling run at one input rate.
struct Run {
    resampler: Fft<f32>,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    frames_in: u64,
    /// Where this run's output starts in the output.
    start: usize,
    to_trim: usize,
    rate: u32,
}

impl To8k {
    fn new(limits: &DecodeLimits) -> To8k {
        To8k {
            out: Vec::new(),
            max_samples: limits.max_samples(),
            max_ms: limits.max_duration_ms,
            current: None,
        }
    }

    fn produced(&self) -> usize {
        self.out.len()
    }

    fn push(&mut self, rate: u32, mono: &[f32]) -> Result<(), PromptError> {
        if !SAMPLE_RATES.contains(&rate) {
            return Err(PromptError::SampleRate { rate });
        }
        if self.current.as_ref().is_some_and(|(r, _)| *r != rate) {
            // The rate changed mid-stream (concatenated MP3s): finish the old run.
            self.end_run()?;
        }
        if self.current.is_none() {
            let run = if rate == SAMPLE_RATE {
                None
            } else {
                Some(Run::new(rate, self.out.len())?)
            };
            self.current = Some((rate, run));
        }
        let too_long = PromptError::TooLong {
            max_ms: self.max_ms,
        };
        match &mut self.current {
            Some((_, Some(run))) => {
                run.pending.extend_from_slice(mono);
                run.frames_in += mono.len() as u64;
                while run.pending.len() >= run.resampler.input_frames_next() {
                    run.process(&mut self.out, None)?;
                    if self.out.len() > self.max_samples {
                        return Err(too_long);
                    }
                }
            }
            _ => self.out.extend(mono.iter().map(|&x| to_i16(x))),
        }
        self.check_len()
    }

    fn check_len(&self) -> Result<(), PromptError> {
        if self.out.len() > self.max_samples {
            return Err(PromptError::TooLong {
                max_ms: self.max_ms,
            });
        }
        Ok(())
    }

    fn end_run(&mut self) -> Result<(), PromptError> {
        if let Some((_, Some(mut run))) = self.current.take() {
            run.flush(&mut self.out)?;
            self.check_len()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<i16>, PromptError> {
        self.end_run()?;
        Ok(self.out)
    }
}

impl Run {
    fn new(rate: u32, start: usize) -> Result<Run, PromptError> {
        let resampler = Fft::<f32>::new(
            rate as usize,
            SAMPLE_RATE as usize,
            RESAMPLE_CHUNK,
            1,
            FixedSync::Input,
        )
        .map_err(|e| PromptError::Resample(e.to_string()))?;
        let to_trim = resampler.output_delay();
        let scratch = vec![0.0; resampler.output_frames_max()];
        Ok(Run {
            resampler,
            pending: Vec::new(),
            scratch,
            frames_in: 0,
            start,
            to_trim,
            rate,
        })
    }

    /// Runs one chunk; `partial` = how many of the pending frames are real when fewer than a
    /// chunk remain (the rest is silence).
    fn process(&mut self, out: &mut Vec<i16>, partial: Option<usize>) -> Result<(), PromptError> {
        let need = self.resampler.input_frames_next();
        let take = partial.unwrap_or(need).min(self.pending.len());
        if self.pending.len() < need {
            self.pending.resize(need, 0.0);
        }
        let err = |e: &dyn std::fmt::Display| PromptError::Resample(e.to_string());
        let input = InterleavedSlice::new(&self.pending[..need], 1, need).map_err(|e| err(&e))?;
        let frames = self.scratch.len();
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch[..], 1, frames).map_err(|e| err(&e))?;
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, produced) = self
            .resampler
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .map_err(|e| err(&e))?;
        self.pending.drain(..take.min(need));
        if partial.is_some() {
            self.pending.clear();
        }
        let produced = produced.min(self.scratch.len());
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        out.extend(self.scratch[skip..produced].iter().map(|&x| to_i16(x)));
        Ok(())
    }

    /// Resamples what is pending and drains the resampler's delay, then cuts the output to
    /// exactly `ceil(frames_in * 8000 / rate)` frames.
    fn flush(&mut self, out: &mut Vec<i16>) -> Result<(), PromptError> {
        let expected = (self.frames_in * u64::from(SAMPLE_RATE)).div_ceil(u64::from(self.rate));
        let end = usize::try_from(expected)
            .unwrap_or(usize::MAX)
            .saturating_add(self.start);
        if !self.pending.is_empty() {
            let n = self.pending.len();
            self.process(out, Some(n))?;
        }
        // Each call yields at least one output frame; the bound is only a guard.
        for _ in 0..1_000 {
            if out.len() >= end {
                break;
            }
            self.process(out, Some(0))?;
        }
        out.truncate(end);
        Ok(())
    }
}

/// The beep `<Record playBeep="true">` plays before recording: 500 ms of 1000 Hz at −12 dBFS
/// with 10 ms fades (no clicks). Twilio documents no exact beep; this is the usual answering
/// machine tone. Built once, shared.
pub fn beep() -> Audio {
    static BEEP: OnceLock<Audio> = OnceLock::new();
    BEEP.get_or_init(|| Audio::from_pcm(&beep_pcm())).clone()
}

const BEEP_MS: u32 = 500;
const BEEP_HZ: f64 = 1000.0;

fn beep_pcm() -> Vec<i16> {
    let n = (BEEP_MS * SAMPLE_RATE / 1000) as usize;
    let fade = (10 * SAMPLE_RATE / 1000) as usize;
    let amplitude = 8192.0; // -12 dBFS
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let edge = i.min(n - 1 - i);
            let gain = if edge < fade {
                0.5 - 0.5 * (std::f64::consts::PI * edge as f64 / fade as f64).cos()
            } else {
                1.0
            };
            (amplitude * gain * (2.0 * std::f64::consts::PI * BEEP_HZ * t).sin()).round() as i16
        })
        .collect()
}

/// `ms` of silence for `<Pause>`, at most [`MAX_DURATION_MS`] (longer asks are cut to it).
pub fn silence(ms: u64) -> Audio {
    let ms = ms.min(MAX_DURATION_MS);
    let samples = (ms * u64::from(SAMPLE_RATE) / 1000) as usize;
    Audio::from_pcm(&vec![0; samples])
}

// ---------------------------------------------------------------------------------------------
// The cache

/// Freshness of a URL entry when the response said nothing (`Cache-Control` absent): 5 min.
pub const DEFAULT_MAX_AGE_MS: u64 = 5 * 60 * 1000;

/// Longest freshness granted whatever the server says (1 day), so that a changed prompt is
/// noticed at least daily.
pub const MAX_MAX_AGE_MS: u64 = 24 * 60 * 60 * 1000;

/// What the cache holds audio for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// A `<Play>` URL, as fetched.
    Url(String),
    /// A `<Say>`: synthesised speech never goes stale.
    Speech(SpeechKey),
}

/// Identifies synthesised speech: same engine and voice, language and text, same audio.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpeechKey {
    /// Engine and voice, e.g. `flite/kal`.
    pub voice: String,
    pub language: String,
    pub text: String,
}

/// The HTTP validators of a fetched prompt, sent back in a conditional GET (`If-None-Match`,
/// `If-Modified-Since`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The answer of [`AudioCache::lookup`].
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Play it.
    Fresh(Arc<Audio>),
    /// A URL entry past its freshness: revalidate with a conditional GET carrying `validators`
    /// (an unconditional GET if both are `None`); on 304 call [`AudioCache::refresh`] and play
    /// `audio`, on 200 decode and [`AudioCache::insert_url`].
    Stale {
        audio: Arc<Audio>,
        validators: Validators,
    },
    Missing,
}

/// The `max-age` of a `Cache-Control` header value in ms, for [`AudioCache::insert_url`].
///
/// The cache is shared by all calls, so `s-maxage` wins over `max-age`; `no-cache` and
/// `no-store` give 0 (the entry is kept but revalidated before every use). `None` when the
/// header says nothing about freshness: the cache then uses [`DEFAULT_MAX_AGE_MS`].
pub fn max_age_from_cache_control(value: &str) -> Option<u64> {
    let mut max_age = None;
    let mut s_maxage = None;
    for directive in value.split(',') {
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        let seconds = || {
            let digits = arg.filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))?;
            // Too many digits for u64 is "very long" (RFC 9111 §1.2.2), not an error.
            Some(
                digits
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
                    .saturating_mul(1000),
            )
        };
        match name.to_ascii_lowercase().as_str() {
            "no-cache" | "no-store" => return Some(0),
            "max-age" => max_age = seconds().or(max_age),
            "s-maxage" => s_maxage = seconds().or(s_maxage),
            _ => {}
        }
    }
    s_maxage.or(max_age)
}

/// Decoded prompts and synthesised speech shared by every call, bounded in bytes
/// ([`Audio::bytes`]) with least-recently-used eviction.
///
/// URL entries carry their HTTP validators and a freshness deadline; the cache never reads a
/// clock: every call takes `now_ms` (any monotonic millisecond count). Thread-safe behind one
/// mutex, which is held only for map updates (lookups happen once per `<Play>`, not per
/// packet). An entry larger than the whole budget is handed back but not kept.
///
/// Metrics: `callflow_media_cache_hits_total`, `callflow_media_cache_stale_total`,
/// `callflow_media_cache_misses_total` (label `kind` = `url` | `speech`),
/// `callflow_media_cache_evictions_total`, gauge `callflow_media_cache_bytes`.
pub struct AudioCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    /// Use stamp → key, oldest first.
    order: BTreeMap<u64, CacheKey>,
    next_stamp: u64,
    used: usize,
}

struct Entry {
    audio: Arc<Audio>,
    bytes: usize,
    stamp: u64,
    /// URL entries only.
    http: Option<Http>,
}

struct Http {
    validators: Validators,
    fresh_until_ms: u64,
}

fn kind(key: &CacheKey) -> &'static str {
    match key {
        CacheKey::Url(_) => "url",
        CacheKey::Speech(_) => "speech",
    }
}

fn deadline(now_ms: u64, max_age_ms: Option<u64>) -> u64 {
    now_ms.saturating_add(max_age_ms.unwrap_or(DEFAULT_MAX_AGE_MS).min(MAX_MAX_AGE_MS))
}

impl AudioCache {
    /// A cache holding at most `budget_bytes` of [`Audio::bytes`].
    pub fn new(budget_bytes: usize) -> AudioCache {
        AudioCache {
            budget: budget_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget
    }

    pub fn used_bytes(&self) -> usize {
        self.lock().used
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds `key` and marks it used.
    pub fn lookup(&self, key: &CacheKey, now_ms: u64) -> Lookup {
        let mut inner = self.lock();
        let stamp = inner.next_stamp;
        let Some(entry) = inner.entries.get_mut(key) else {
            drop(inner);
            metrics::counter!("callflow_media_cache_misses_total", "kind" => kind(key))
                .increment(1);
            return Lookup::Missing;
        };
        let old = std::mem::replace(&mut entry.stamp, stamp);
        let result = match &entry.http {
            Some(http) if now_ms >= http.fresh_until_ms => Lookup::Stale {
                audio: entry.audio.clone(),
                validators: http.validators.clone(),
            },
            _ => Lookup::Fresh(entry.audio.clone()),
        };
        inner.next_stamp += 1;
        inner.order.remove(&old);
        inner.order.insert(stamp, key.clone());
        drop(inner);
        let name = match result {
            Lookup::Stale { .. } => "callflow_media_cache_stale_total",
            _ => "callflow_media_cache_hits_total",
        };
        metrics::counter!(name, "kind" => kind(key)).increment(1);
        result
    }

    /// Stores a freshly fetched URL (after a 200) and hands the audio back. `max_age_ms` as
    /// from [`max_age_from_cache_control`]; `None` = [`DEFAULT_MAX_AGE_MS`].
    pub fn insert_url(
        &self,
        url: &str,
        audio: impl Into<Arc<Audio>>,
        validators: Validators,
        max_age_ms: Option<u64>,
        now_ms: u64,
    ) -> Arc<Audio> {
        let http = Http {
            validators,
            fresh_until_ms: deadline(now_ms, max_age_ms),
        };
        self.insert(CacheKey::Url(url.to_string()), audio.into(), Some(http))
    }

    /// After a 304: the entry is fresh again for `max_age_ms` (as in [`Self::insert_url`]).
    /// `None` if the entry was evicted meanwhile: fetch it again unconditionally.
    pub fn refresh(&self, url: &str, max_age_ms: Option<u64>, now_ms: u64) -> Option<Arc<Audio>> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(&CacheKey::Url(url.to_string()))?;
        if let Some(http) = &mut entry.http {
            http.fresh_until_ms = deadline(now_ms, max_age_ms);
        }
        Some(entry.audio.clone())
    }

    /// Stores synthesised speech and hands it back.
    pub fn insert_speech(&self, key: SpeechKey, audio: impl Into<Arc<Audio>>) -> Arc<Audio> {
        self.insert(CacheKey::Speech(key), audio.into(), None)
    }

    /// Forgets `key` (e.g. a URL whose revalidation returned an error).
    pub fn remove(&self, key: &CacheKey) {
        let mut inner = self.lock();
        inner.remove(key);
        metrics::gauge!("callflow_media_cache_bytes").set(inner.used as f64);
    }

    fn insert(&self, key: CacheKey, audio: Arc<Audio>, http: Option<Http>) -> Arc<Audio> {
        let bytes = audio.bytes();
        let mut inner = self.lock();
        // Whatever happens next, an older entry for this key is outdated.
        inner.remove(&key);
        if bytes > self.budget {
            tracing::debug!(
                bytes,
                budget = self.budget,
                "audio cache: entry too large to keep"
            );
            return audio;
        }
        let mut evicted = 0u64;
        while inner.used + bytes > self.budget {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.remove(&oldest);
            evicted += 1;
        }
        let stamp = inner.next_stamp;
        inner.next_stamp += 1;
        inner.order.insert(stamp, key.clone());
        inner.used += bytes;
        inner.entries.insert(
            key,
            Entry {
                audio: audio.clone(),
                bytes,
                stamp,
                http,
            },
        );
        let used = inner.used;
        drop(inner);
        if evicted > 0 {
            metrics::counter!("callflow_media_cache_evictions_total").increment(evicted);
        }
        metrics::gauge!("callflow_media_cache_bytes").set(used as f64);
        audio
    }
}

impl Inner {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.stamp);
            self.used -= entry.bytes;
        }
    }
}

impl std::fmt::Debug for AudioCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("AudioCache")
            .field("budget", &self.budget)
            .field("used", &inner.used)
            .field("entries", &inner.entries.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone(rate: u32, ms: u32, hz: f64, amplitude: f64) -> Vec<f64> {
        let n = (u64::from(rate) * u64::from(ms) / 1000) as usize;
        (0..n)
            .map(|i| amplitude * (2.0 * PI * hz * i as f64 / f64::from(rate)).sin())
            .collect()
    }

    /// A WAV written by hound; `frames` holds one value per channel per frame, in -1.0..1.0.
    fn wav(rate: u32, channels: u16, bits: u16, float: bool, frames: &[Vec<f64>]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        };
        let mut cursor = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for frame in frames {
            for &x in frame {
                if float {
                    w.write_sample(x as f32).unwrap();
                } else {
                    let max = f64::from((1u32 << (bits - 1)) - 1);
                    match bits {
                        8 => w.write_sample((x * max).round() as i8).unwrap(),
                        16 => w.write_sample((x * max).round() as i16).unwrap(),
                        _ => w.write_sample((x * max).round() as i32).unwrap(),
                    }
                }
            }
        }
        w.finalize().unwrap();
        cursor.into_inner()
    }

    fn mono_wav(rate: u32, samples: &[f64]) -> Vec<u8> {
        let frames: Vec<Vec<f64>> = samples.iter().map(|&x| vec![x]).collect();
        wav(rate, 1, 16, false, &frames)
    }

    /// A G.711 WAV (format tag 7 = µ-law, 6 = A-law), which hound cannot write.
    fn g711_wav(format_tag: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(4 + 26 + 8 + data.len() as u32).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&18u32.to_le_bytes());
        v.extend_from_slice(&format_tag.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes()); // channels
        v.extend_from_slice(&8000u32.to_le_bytes());
        v.extend_from_slice(&8000u32.to_le_bytes()); // bytes per second
        v.extend_from_slice(&1u16.to_le_bytes()); // block align
        v.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
        v.extend_from_slice(&0u16.to_le_bytes()); // cbSize
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    /// Frequency from sign changes, over the middle of the signal (edges hold fades and the
    /// resampler's ramps).
    fn frequency(pcm: &[i16], rate: u32) -> f64 {
        let mid = &pcm[pcm.len() / 8..pcm.len() * 7 / 8];
        let changes = mid.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        changes as f64 / 2.0 / (mid.len() as f64 / f64::from(rate))
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
    }

    fn testdata(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Deterministic noise for garbage inputs.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn wav_8k_mono_16bit_is_decoded_bit_exact() {
        let pcm: Vec<i16> = (0..800).map(|i| ((i * 97) % 65536) as i16).collect();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for &s in &pcm {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        assert_eq!(
            decode(&cursor.into_inner(), Some("audio/wav")).unwrap(),
            pcm
        );
    }

    #[test]
    fn wav_sample_formats_at_8k() {
        let src = tone(8000, 250, 440.0, 0.5);
        let frames: Vec<Vec<f64>> = src.iter().map(|&x| vec![x]).collect();
        for (bits, float, tolerance) in [
            (8, false, 300.0),
            (16, false, 2.0),
            (24, false, 2.0),
            (32, false, 2.0),
            (32, true, 2.0),
        ] {
            let pcm = decode(&wav(8000, 1, bits, float, &frames), None)
                .unwrap_or_else(|e| panic!("{bits} bits float={float}: {e}"));
            assert_eq!(pcm.len(), src.len(), "{bits} bits float={float}");
            let worst = pcm
                .iter()
                .zip(&src)
                .map(|(&got, &want)| (f64::from(got) - want * 32767.0).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= tolerance,
                "{bits} bits float={float}: off by {worst}"
            );
        }
    }

    #[test]
    fn wav_g711_laws() {
        // Reference values from `sox -t ul` / `sox -t al`.
        let mu = decode(&g711_wav(7, &[0xff, 0x80, 0x00, 0x7f, 0x90]), Some("wav")).unwrap();
        assert_eq!(mu, [0, 32124, -32124, 0, 15996]);
        let a = decode(&g711_wav(6, &[0xd5, 0xaa, 0x2a, 0x55, 0x80]), Some("wav")).unwrap();
        assert_eq!(a, [8, 32256, -32256, -8, 5504]);
    }

    #[test]
    fn wav_16k_is_resampled_and_keeps_its_pitch() {
        let pcm = decode(
            &mono_wav(16000, &tone(16000, 1000, 440.0, 0.5)),
            Some("x.wav"),
        )
        .unwrap();
        assert!(pcm.len().abs_diff(8000) <= 2, "{} samples", pcm.len());
        let f = frequency(&pcm, 8000);
        assert!((f - 440.0).abs() < 3.0, "{f} Hz");
        assert!(
            (rms(&pcm) - 0.5 * 32767.0 / 2f64.sqrt()).abs() < 500.0,
            "rms {}",
            rms(&pcm)
        );
    }

    #[test]
    fn wav_44k_stereo_is_mixed_down_resampled_and_keeps_its_pitch() {
        let left = tone(44100, 1500, 440.0, 0.5);
        let frames: Vec<Vec<f64>> = left.iter().map(|&x| vec![x, x * 0.5]).collect();
        let pcm = decode(&wav(44100, 2, 16, false, &frames), Some("audio/x-wav")).unwrap();
        assert!(pcm.len().abs_diff(12000) <= 2, "{} samples", pcm.len());
        let f = frequency(&pcm, 8000);
        assert!((f - 440.0).abs() < 3.0, "{f} Hz");
        // The mix is the average: 0.75 * 0.5 of full scale.
        let want = 0.375 * 32767.0 / 2f64.sqrt();
        assert!(
            (rms(&pcm) - want).abs() < 400.0,
            "rms {} want {want}",
            rms(&pcm)
        );
    }

    #[test]
    fn opposite_channels_mix_to_silence() {
        let left = tone(8000, 200, 440.0, 0.5);
        let frames: Vec<Vec<f64>> = left.iter().map(|&x| vec![x, -x]).collect();
        let pcm = decode(&wav(8000, 2, 16, false, &frames), None).unwrap();
        assert_eq!(pcm.len(), 1600);
        assert!(pcm.iter().all(|s| s.abs() <= 1), "not silent");
    }

    #[test]
    fn odd_rates_are_resampled() {
        for rate in [11025, 22050, 48000, 6000, 44101, 96000] {
            let pcm = decode(&mono_wav(rate, &tone(rate, 500, 440.0, 0.5)), None).unwrap();
            assert!(
                pcm.len().abs_diff(4000) <= 2,
                "{rate} Hz: {} samples",
                pcm.len()
            );
            let f = frequency(&pcm, 8000);
            assert!((f - 440.0).abs() < 5.0, "{rate} Hz: {f} Hz");
        }
    }

    #[test]
    fn very_short_files_are_resampled_whole() {
        for (rate, ms) in [(16000, 1), (44100, 10), (22050, 3)] {
            let pcm = decode(&mono_wav(rate, &tone(rate, ms, 440.0, 0.5)), None).unwrap();
            let want = (ms * 8) as usize;
            assert!(
                pcm.len().abs_diff(want) <= 1,
                "{rate} Hz {ms} ms: {}",
                pcm.len()
            );
        }
    }

    #[test]
    fn mp3_mono_22k_with_id3_tag() {
        let bytes = testdata("prompt-tone440-22050-mono.mp3");
        for hint in [
            Some("audio/mpeg"),
            Some("mp3"),
            Some(".MP3"),
            None,
            Some("audio/wav"),
        ] {
            let pcm = decode(&bytes, hint).unwrap_or_else(|e| panic!("{hint:?}: {e}"));
            // One second, plus the encoder's delay and padding (no gapless info in the file).
            assert!(
                (8000..=9000).contains(&pcm.len()),
                "{hint:?}: {} samples",
                pcm.len()
            );
            let f = frequency(&pcm, 8000);
            assert!((f - 440.0).abs() < 5.0, "{hint:?}: {f} Hz");
        }
    }

    #[test]
    fn mp3_stereo_44k() {
        let pcm = decode(
            &testdata("prompt-tone440-44100-stereo.mp3"),
            Some("audio/mpeg"),
        )
        .unwrap();
        assert!((8000..=9000).contains(&pcm.len()), "{} samples", pcm.len());
        let f = frequency(&pcm, 8000);
        assert!((f - 440.0).abs() < 5.0, "{f} Hz");
        assert!(rms(&pcm) > 5000.0, "rms {}", rms(&pcm));
    }

    #[test]
    fn mp3s_of_two_rates_back_to_back() {
        let mut bytes = testdata("prompt-tone440-44100-stereo.mp3");
        bytes.extend(testdata("prompt-tone440-22050-mono.mp3"));
        // symphonia's MP3 decoder refuses a change of rate or channels inside one stream.
        assert!(matches!(
            decode(&bytes, Some("mp3")),
            Err(PromptError::Malformed(_))
        ));
    }

    #[test]
    fn a_rate_change_mid_stream_starts_a_new_resampling_run() {
        let limits = DecodeLimits::default();
        let mut out = To8k::new(&limits);
        let part = |rate| -> Vec<f32> {
            tone(rate, 250, 440.0, 0.5)
                .iter()
                .map(|&x| x as f32)
                .collect()
        };
        out.push(16000, &part(16000)).unwrap();
        out.push(8000, &part(8000)).unwrap();
        out.push(44100, &part(44100)).unwrap();
        out.push(44100, &part(44100)).unwrap();
        let pcm = out.finish().unwrap();
        assert!(pcm.len().abs_diff(8000) <= 3, "{}", pcm.len());
        assert!((frequency(&pcm, 8000) - 440.0).abs() < 5.0);
    }

    #[test]
    fn hints_are_media_types_or_names() {
        let check = |hint: &str, want: &str| {
            let got = format!("{:?}", symphonia_hint(Some(hint)));
            assert!(got.contains(&format!("{want:?}")), "{hint}: {got}");
        };
        check("audio/mpeg", "audio/mpeg");
        check("Audio/X-WAV; charset=binary", "audio/x-wav");
        check("audio/vnd.wave", "audio/vnd.wave");
        check("mp3", "mp3");
        check(".WAV", "wav");
        check("prompt.mp3", "mp3");
        check("https://example.com/a.b/prompt.wav?v=1.2#x", "wav");
        assert_eq!(
            format!("{:?}", symphonia_hint(Some("  "))),
            format!("{:?}", Hint::new())
        );
        assert_eq!(
            format!("{:?}", symphonia_hint(None)),
            format!("{:?}", Hint::new())
        );
    }

    #[test]
    fn empty_input_is_refused() {
        assert!(matches!(decode(&[], None), Err(PromptError::Empty)));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut inputs: Vec<(String, Vec<u8>)> = vec![
            ("zeros".into(), vec![0; 10_000]),
            ("ones".into(), vec![0xff; 10_000]),
            (
                "html".into(),
                b"<html><body>404 Not Found</body></html>".to_vec(),
            ),
            ("riff only".into(), b"RIFF".to_vec()),
            ("one byte".into(), vec![0x49]),
            (
                "id3 only".into(),
                b"ID3\x03\x00\x00\x00\x00\x00\x10".to_vec(),
            ),
        ];
        for (seed, len) in [(1, 1), (2, 100), (3, 4096), (4, 100_000), (5, 1_000_000)] {
            inputs.push((format!("noise {len}"), noise(seed, len)));
        }
        for (name, bytes) in &inputs {
            for hint in [None, Some("audio/mpeg"), Some("wav")] {
                let got = decode(bytes, hint);
                assert!(
                    got.is_err(),
                    "{name} {hint:?}: decoded {} samples",
                    got.unwrap().len()
                );
            }
        }
    }

    #[test]
    fn truncated_files() {
        let wav = mono_wav(16000, &tone(16000, 1000, 440.0, 0.5));
        // Inside the header: nothing to play.
        for cut in [4, 12, 20, 36, 43] {
            assert!(decode(&wav[..cut], None).is_err(), "cut at {cut}");
        }
        // Inside the data: what is there.
        let pcm = decode(&wav[..44 + 16000], None).unwrap();
        assert!(pcm.len().abs_diff(4000) <= 2, "{} samples", pcm.len());

        let mp3 = testdata("prompt-tone440-44100-stereo.mp3");
        let pcm = decode(&mp3[..mp3.len() / 2], Some("mp3")).unwrap();
        assert!((3000..=5000).contains(&pcm.len()), "{} samples", pcm.len());
        assert!(decode(&mp3[..3], Some("mp3")).is_err());
    }

    #[test]
    fn damaged_files_never_panic() {
        // `decode` catches panics; this makes sure there are none to catch (a caught panic
        // would show as this exact error).
        let inputs = [
            mono_wav(44100, &tone(44100, 300, 440.0, 0.5)),
            g711_wav(7, &noise(9, 2000)),
            testdata("prompt-tone440-22050-mono.mp3"),
            testdata("prompt-tone440-44100-stereo.mp3"),
        ];
        for (n, original) in inputs.iter().enumerate() {
            for round in 0..80u64 {
                let mut bytes = original.clone();
                let flips = noise(round * 31 + n as u64, 24);
                for pair in flips.chunks(3) {
                    let at = (usize::from(pair[0]) << 8 | usize::from(pair[1])) % bytes.len();
                    bytes[at] = pair[2];
                }
                if let Err(PromptError::Malformed(m)) = decode(&bytes, None) {
                    assert_ne!(
                        m, "the decoder failed on this input",
                        "input {n} round {round}"
                    );
                }
            }
        }
    }

    #[test]
    fn absurd_headers_are_refused() {
        let good = mono_wav(8000, &tone(8000, 100, 440.0, 0.5));
        let mut zero_rate = good.clone();
        zero_rate[24..28].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode(&zero_rate, None).is_err());
        for rate in [1u32, 999, 400_000, u32::MAX] {
            let mut bad = good.clone();
            bad[24..28].copy_from_slice(&rate.to_le_bytes());
            let got = decode(&bad, None);
            assert!(got.is_err(), "{rate} Hz decoded");
        }
        let mut no_channels = good.clone();
        no_channels[22..24].copy_from_slice(&0u16.to_le_bytes());
        assert!(decode(&no_channels, None).is_err());
        // Headers written to a pipe claim more than there is (sox: 0x7ffff024): what is there.
        let claims = [
            (u32::MAX, u32::MAX),
            (0x7fff_f024, 0x7fff_f000),
            (u32::MAX, 0x7fff_ffff),
        ];
        for (riff, data) in claims {
            let mut long_claim = good.clone();
            long_claim[4..8].copy_from_slice(&riff.to_le_bytes());
            long_claim[40..44].copy_from_slice(&data.to_le_bytes());
            assert_eq!(
                decode(&long_claim, None).unwrap().len(),
                800,
                "{riff:x} {data:x}"
            );
        }
        // Zero sizes are taken at their word (symphonia refuses or finds nothing).
        for (riff, data) in [(0u32, 0u32), (36, 0)] {
            let mut zero_claim = good.clone();
            zero_claim[4..8].copy_from_slice(&riff.to_le_bytes());
            zero_claim[40..44].copy_from_slice(&data.to_le_bytes());
            assert!(decode(&zero_claim, None).is_err(), "{riff:x} {data:x}");
        }
    }

    #[test]
    fn input_and_output_are_bounded() {
        let wav = mono_wav(16000, &tone(16000, 1000, 440.0, 0.5));
        let small = DecodeLimits {
            max_input_bytes: 1000,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_with(&wav, None, &small),
            Err(PromptError::TooLarge { bytes, max: 1000 }) if bytes == wav.len()
        ));
        let short = DecodeLimits {
            max_duration_ms: 500,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_with(&wav, None, &short),
            Err(PromptError::TooLong { max_ms: 500 })
        ));
        let at_8k = mono_wav(8000, &tone(8000, 1000, 440.0, 0.5));
        assert!(matches!(
            decode_with(&at_8k, None, &short),
            Err(PromptError::TooLong { max_ms: 500 })
        ));
        let exact = DecodeLimits {
            max_duration_ms: 1000,
            ..DecodeLimits::default()
        };
        assert_eq!(decode_with(&at_8k, None, &exact).unwrap().len(), 8000);
        let mp3 = testdata("prompt-tone440-22050-mono.mp3");
        assert!(matches!(
            decode_with(&mp3, None, &short),
            Err(PromptError::TooLong { max_ms: 500 })
        ));
    }

    #[test]
    fn resample_to_8k_for_raw_pcm() {
        let src: Vec<i16> = tone(16000, 700, 440.0, 0.5)
            .iter()
            .map(|&x| (x * 32767.0) as i16)
            .collect();
        let pcm = resample_to_8k(&src, 16000).unwrap();
        assert!(pcm.len().abs_diff(5600) <= 1, "{}", pcm.len());
        assert!((frequency(&pcm, 8000) - 440.0).abs() < 5.0);
        assert_eq!(resample_to_8k(&src, 8000).unwrap(), src);
        assert!(resample_to_8k(&[], 16000).unwrap().is_empty());
        assert!(matches!(
            resample_to_8k(&src, 0),
            Err(PromptError::SampleRate { rate: 0 })
        ));
    }

    #[test]
    fn beep_is_half_a_second_of_1khz() {
        let pcm = beep_pcm();
        assert_eq!(pcm.len(), 4000);
        assert!((frequency(&pcm, 8000) - 1000.0).abs() < 1.0);
        assert!(pcm.iter().all(|s| s.abs() <= 8192));
        assert!(pcm[0].abs() < 100 && pcm[3999].abs() < 100, "no fade");
        assert!(rms(&pcm[400..3600]) > 5000.0);
        assert_eq!(beep().len(), 4000);
    }

    #[test]
    fn silence_lengths() {
        assert_eq!(silence(0).len(), 0);
        assert_eq!(silence(1).len(), 8);
        assert_eq!(silence(1500).len(), 12000);
        assert_eq!(silence(u64::MAX).len(), 28_800_000);
    }

    #[test]
    fn cache_control() {
        assert_eq!(max_age_from_cache_control("max-age=60"), Some(60_000));
        assert_eq!(
            max_age_from_cache_control("public, MAX-AGE = \"30\""),
            Some(30_000)
        );
        assert_eq!(
            max_age_from_cache_control("max-age=60, s-maxage=10"),
            Some(10_000)
        );
        assert_eq!(max_age_from_cache_control("no-cache"), Some(0));
        assert_eq!(max_age_from_cache_control("max-age=60, no-store"), Some(0));
        assert_eq!(max_age_from_cache_control("public"), None);
        assert_eq!(max_age_from_cache_control("max-age=soon"), None);
        assert_eq!(max_age_from_cache_control(""), None);
        // Past u64: "infinity" (then capped to MAX_MAX_AGE_MS by the cache).
        assert_eq!(
            max_age_from_cache_control("max-age=99999999999999999"),
            Some(u64::MAX)
        );
        assert_eq!(
            max_age_from_cache_control("max-age=999999999999999999999999"),
            Some(u64::MAX)
        );
        assert_eq!(max_age_from_cache_control("max-age=-1"), None);
    }

    fn audio(samples: usize) -> Arc<Audio> {
        Arc::new(Audio::from_pcm(&vec![0; samples]))
    }

    fn url(u: &str) -> CacheKey {
        CacheKey::Url(u.to_string())
    }

    fn speech(text: &str) -> SpeechKey {
        SpeechKey {
            voice: "flite/kal".into(),
            language: "en-US".into(),
            text: text.into(),
        }
    }

    fn fresh(l: Lookup) -> Option<Arc<Audio>> {
        match l {
            Lookup::Fresh(a) => Some(a),
            _ => None,
        }
    }

    #[test]
    fn cache_freshness_and_revalidation() {
        let cache = AudioCache::new(1_000_000);
        let v = Validators {
            etag: Some("\"v1\"".into()),
            last_modified: None,
        };
        let a = cache.insert_url("http://x/a.wav", audio(100), v.clone(), Some(60_000), 1_000);
        assert!(matches!(
            cache.lookup(&url("http://x/b.wav"), 1_000),
            Lookup::Missing
        ));
        let got = fresh(cache.lookup(&url("http://x/a.wav"), 60_999)).unwrap();
        assert!(Arc::ptr_eq(&got, &a));
        match cache.lookup(&url("http://x/a.wav"), 61_000) {
            Lookup::Stale { audio, validators } => {
                assert!(Arc::ptr_eq(&audio, &a));
                assert_eq!(validators, v);
            }
            other => panic!("{other:?}"),
        }
        // 304 Not Modified.
        let again = cache
            .refresh("http://x/a.wav", Some(10_000), 70_000)
            .unwrap();
        assert!(Arc::ptr_eq(&again, &a));
        assert!(fresh(cache.lookup(&url("http://x/a.wav"), 79_999)).is_some());
        assert!(matches!(
            cache.lookup(&url("http://x/a.wav"), 80_000),
            Lookup::Stale { .. }
        ));
        // 200 with new content replaces it.
        let b = cache.insert_url(
            "http://x/a.wav",
            audio(200),
            Validators::default(),
            None,
            80_000,
        );
        assert_eq!(cache.used_bytes(), 400);
        let got = fresh(cache.lookup(&url("http://x/a.wav"), 80_000 + DEFAULT_MAX_AGE_MS - 1));
        assert!(Arc::ptr_eq(&got.unwrap(), &b));
        match cache.lookup(&url("http://x/a.wav"), 80_000 + DEFAULT_MAX_AGE_MS) {
            Lookup::Stale { validators, .. } => assert_eq!(validators, Validators::default()),
            other => panic!("{other:?}"),
        }
        assert!(cache.refresh("http://x/gone.wav", None, 0).is_none());
    }

    #[test]
    fn cache_freshness_edges() {
        let cache = AudioCache::new(1_000_000);
        cache.insert_url("u0", audio(1), Validators::default(), Some(0), 5);
        assert!(matches!(cache.lookup(&url("u0"), 5), Lookup::Stale { .. }));
        cache.insert_url(
            "forever",
            audio(1),
            Validators::default(),
            Some(u64::MAX),
            u64::MAX - 1,
        );
        assert!(matches!(
            cache.lookup(&url("forever"), u64::MAX - 1),
            Lookup::Fresh(_)
        ));
        cache.insert_url("year", audio(1), Validators::default(), Some(u64::MAX), 0);
        assert!(matches!(
            cache.lookup(&url("year"), MAX_MAX_AGE_MS - 1),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            cache.lookup(&url("year"), MAX_MAX_AGE_MS),
            Lookup::Stale { .. }
        ));
        // Speech never goes stale; a URL key with the same text is another entry.
        cache.insert_speech(speech("hello"), audio(10));
        let key = CacheKey::Speech(speech("hello"));
        assert!(matches!(cache.lookup(&key, u64::MAX), Lookup::Fresh(_)));
        assert!(matches!(cache.lookup(&url("hello"), 0), Lookup::Missing));
        let other_voice = SpeechKey {
            voice: "flite/slt".into(),
            ..speech("hello")
        };
        assert!(matches!(
            cache.lookup(&CacheKey::Speech(other_voice), 0),
            Lookup::Missing
        ));
    }

    #[test]
    fn cache_evicts_least_recently_used_within_budget() {
        // Each entry: 100 samples = 200 bytes; room for three.
        let cache = AudioCache::new(600);
        for k in ["a", "b", "c"] {
            cache.insert_url(k, audio(100), Validators::default(), None, 0);
        }
        assert_eq!((cache.len(), cache.used_bytes()), (3, 600));
        // Use a, then b: c is now the least recently used... after the first insert order.
        assert!(fresh(cache.lookup(&url("a"), 1)).is_some());
        cache.insert_url("d", audio(100), Validators::default(), None, 2);
        assert!(matches!(cache.lookup(&url("b"), 3), Lookup::Missing));
        assert!(fresh(cache.lookup(&url("c"), 3)).is_some());
        // Order of use now: a (1), d (2), c (3). A 400-byte entry evicts a and d.
        cache.insert_speech(speech("big"), audio(200));
        assert!(matches!(cache.lookup(&url("a"), 4), Lookup::Missing));
        assert!(matches!(cache.lookup(&url("d"), 4), Lookup::Missing));
        assert!(fresh(cache.lookup(&url("c"), 4)).is_some());
        assert!(fresh(cache.lookup(&CacheKey::Speech(speech("big")), 4)).is_some());
        assert_eq!((cache.len(), cache.used_bytes()), (2, 600));
        // A stale hit counts as a use too.
        cache.insert_url("e", audio(0), Validators::default(), Some(0), 5);
        assert!(matches!(cache.lookup(&url("e"), 5), Lookup::Stale { .. }));
        assert_eq!(cache.used_bytes(), 600);
        cache.remove(&url("c"));
        assert_eq!((cache.len(), cache.used_bytes()), (2, 400));
    }

    #[test]
    fn cache_hands_back_but_does_not_keep_what_exceeds_the_budget() {
        let cache = AudioCache::new(500);
        cache.insert_url("a", audio(100), Validators::default(), None, 0);
        let huge = cache.insert_url("a", audio(300), Validators::default(), None, 0);
        assert_eq!(huge.len(), 300);
        // The old "a" is outdated and gone; nothing else was evicted for nothing.
        assert!(matches!(cache.lookup(&url("a"), 0), Lookup::Missing));
        cache.insert_url("b", audio(100), Validators::default(), None, 0);
        let huge = cache.insert_speech(speech("long"), audio(251));
        assert_eq!(huge.len(), 251);
        assert!(fresh(cache.lookup(&url("b"), 0)).is_some());
        assert_eq!((cache.len(), cache.used_bytes()), (1, 200));
        let zero = AudioCache::new(0);
        zero.insert_speech(speech("x"), audio(1));
        assert!(zero.is_empty());
        zero.insert_speech(speech("silence"), audio(0));
        assert_eq!(zero.len(), 1);
    }

    #[test]
    fn cache_is_shared_between_threads() {
        let cache = Arc::new(AudioCache::new(10 * 2 * 50));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        let key = format!("u{}", (i * 7 + t) % 25);
                        if let Lookup::Missing = cache.lookup(&url(&key), i) {
                            cache.insert_url(&key, audio(50), Validators::default(), None, i);
                        }
                        assert!(cache.used_bytes() <= 1000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(cache.len() <= 10);
        assert_eq!(cache.used_bytes(), cache.len() * 100);
    }
}
