//! Text to speech for `<Say>`: the [`Tts`] engines (flite loaded at run time, or an external
//! command) and the mapping of Twilio's `voice`/`language` onto the voices we have.
//!
//! Engines are blocking and return 8 kHz mono PCM; the engine crate calls them under
//! `spawn_blocking` and caches the result by [`speech_key`] in the
//! [`AudioCache`](crate::prompt::AudioCache).
//!
//! Architecture Invariant: nothing here is linked against a speech library. flite (BSD-style) is
//! opened with `libloading` when [`Flite::load`] is called, so the binary starts without it;
//! GPL engines such as espeak-ng are only ever run as a [`CommandTts`] subprocess.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::ptr::NonNull;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::SAMPLE_RATE;
use crate::prompt::{self, PromptError, SpeechKey};

/// Longest text spoken, in Unicode characters: Twilio's limit for `<Say>`. Longer text is
/// refused with [`TtsError::TextTooLong`] rather than cut, so that a truncated sentence is never
/// played silently; the engine reports the error like Twilio does.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Why speech could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("speech is unavailable: {0}")]
    Unavailable(String),
    #[error("text of {chars} characters is longer than the limit of {max}")]
    TextTooLong { chars: usize, max: usize },
    #[error("speech engine failed: {0}")]
    Engine(String),
    #[error("speech command `{program}` could not be started: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("speech command `{program}` did not finish within {timeout_ms} ms")]
    Timeout { program: String, timeout_ms: u128 },
    #[error("speech command `{program}` failed ({status}): {stderr}")]
    Exit {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("speech command `{program}` wrote more than {max} bytes")]
    OutputTooLarge { program: String, max: usize },
    #[error("speech output is not usable audio: {0}")]
    Audio(#[from] PromptError),
}

/// A speech engine. Blocking: call it under `spawn_blocking`.
pub trait Tts: Send + Sync {
    /// Speaks `text` (at most [`MAX_TEXT_CHARS`]) as 8 kHz mono PCM. Text with nothing to
    /// say (empty, blanks) gives no samples.
    fn synthesize(&self, voice: &VoiceChoice, text: &str) -> Result<Vec<i16>, TtsError>;
    /// Identifies the engine and its configuration in cache keys and logs.
    fn name(&self) -> &str;
}

/// The cache key of `text` spoken by `engine` with `voice`.
pub fn speech_key(engine: &dyn Tts, voice: &VoiceChoice, text: &str) -> SpeechKey {
    SpeechKey {
        voice: format!("{}/{}", engine.name(), voice.voice.as_str()),
        language: voice.language.clone(),
        text: text.to_string(),
    }
}

fn check_length(text: &str) -> Result<(), TtsError> {
    // Bytes bound chars from above: skip counting for short texts.
    if text.len() > MAX_TEXT_CHARS {
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(TtsError::TextTooLong {
                chars,
                max: MAX_TEXT_CHARS,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Voices

/// The local voices: the two of Twilio's basic `man` and `woman`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Voice {
    /// flite `cmu_us_kal` (diphone, 8 kHz native, fastest).
    #[default]
    Man,
    /// flite `cmu_us_slt` (16 kHz, decimated to 8 kHz).
    Woman,
}

impl Voice {
    pub fn as_str(self) -> &'static str {
        match self {
            Voice::Man => "man",
            Voice::Woman => "woman",
        }
    }
}

/// What a `<Say>` asked for, mapped onto what we can do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VoiceChoice {
    pub voice: Voice,
    /// BCP 47 tag as Twilio spells it (`en-US`). flite speaks only US English: other languages
    /// are read by the English voices; the tag still selects the voice of a [`CommandTts`].
    pub language: String,
}

impl Default for VoiceChoice {
    fn default() -> Self {
        VoiceChoice {
            voice: Voice::Man,
            language: DEFAULT_LANGUAGE.to_string(),
        }
    }
}

/// Twilio's default `language`.
pub const DEFAULT_LANGUAGE: &str = "en-US";

/// Amazon Polly voices that are female (Twilio's `Polly.<Name>`, with or without `-Neural`,
/// `-Generative`, `-LongForm`). Names in neither list map to the default voice.
const POLLY_FEMALE: &[&str] = &[
    "aditi",
    "amy",
    "aria",
    "arlet",
    "ayanda",
    "bianca",
    "camila",
    "carla",
    "carmen",
    "celine",
    "chantal",
    "conchita",
    "danielle",
    "dora",
    "elin",
    "emma",
    "ewa",
    "filiz",
    "gabrielle",
    "hala",
    "hannah",
    "hiujin",
    "ida",
    "ines",
    "isabelle",
    "ivy",
    "jasmine",
    "joanna",
    "jitka",
    "kajal",
    "kazuha",
    "kendra",
    "kimberly",
    "laura",
    "lea",
    "liv",
    "lotte",
    "lucia",
    "lupe",
    "mia",
    "marlene",
    "maja",
    "mizuki",
    "naja",
    "nicole",
    "niamh",
    "olivia",
    "penelope",
    "raveena",
    "ruth",
    "salli",
    "seoyeon",
    "sofie",
    "suvi",
    "tatyana",
    "tomoko",
    "vicki",
    "vitoria",
    "zeina",
    "zhiyu",
    "ayla",
    "lisa",
    "ola",
];

/// Amazon Polly voices that are male.
const POLLY_MALE: &[&str] = &[
    "adriano",
    "andres",
    "arthur",
    "brian",
    "cristiano",
    "daniel",
    "enrique",
    "geraint",
    "giorgio",
    "gregory",
    "hans",
    "jacek",
    "jan",
    "joey",
    "justin",
    "karl",
    "kevin",
    "liam",
    "mads",
    "mathieu",
    "matthew",
    "maxim",
    "miguel",
    "pedro",
    "remi",
    "ricardo",
    "ruben",
    "russell",
    "sergio",
    "stephen",
    "takumi",
    "thiago",
    "zayd",
    "lennart",
    "sebastian",
];

/// Google Chirp 3 HD voices (named after stars and moons) that are female.
const GOOGLE_FEMALE_NAMES: &[&str] = &[
    "achernar",
    "aoede",
    "autonoe",
    "callirrhoe",
    "despina",
    "erinome",
    "gacrux",
    "kore",
    "laomedeia",
    "leda",
    "pulcherrima",
    "sulafat",
    "vindemiatrix",
    "zephyr",
];

impl VoiceChoice {
    /// Maps Twilio's `voice` and `language` attributes (case-insensitive) onto a local voice:
    ///
    /// | `voice`                          | local voice                                      |
    /// |----------------------------------|--------------------------------------------------|
    /// | absent, `man`, unknown           | [`Voice::Man`]                                   |
    /// | `woman`, `alice`                 | [`Voice::Woman`]                                 |
    /// | `Polly.<Name>[-Neural…]`         | by the voice's sex (lists above); unknown: man   |
    /// | `Google.<lang>-<Model>-<Letter>` | C E F G H L O: woman (Google's en-US pattern)    |
    /// | `Google.<lang>-Chirp3-HD-<Star>` | by the star's voice (list above)                 |
    ///
    /// `language` defaults to the language of a `Google.` voice, else to `en-US`; an invalid
    /// tag is replaced by `en-US`.
    pub fn from_twilio(voice: Option<&str>, language: Option<&str>) -> VoiceChoice {
        let raw = voice.map(str::trim).unwrap_or("");
        let lower = raw.to_ascii_lowercase();
        let mut voice_language = None;
        let voice = if lower.is_empty() || lower == "man" {
            Voice::Man
        } else if lower == "woman" || lower == "alice" {
            Voice::Woman
        } else if let Some(name) = lower.strip_prefix("polly.") {
            let name = name.split('-').next().unwrap_or(name);
            if POLLY_FEMALE.contains(&name) {
                Voice::Woman
            } else {
                if !POLLY_MALE.contains(&name) {
                    tracing::debug!(voice = raw, "say: unknown Polly voice, using the default");
                }
                Voice::Man
            }
        } else if let Some(name) = lower.strip_prefix("google.") {
            let parts: Vec<&str> = name.split('-').collect();
            if parts.len() >= 2 {
                voice_language = Some(format!("{}-{}", parts[0], parts[1]));
            }
            match parts.last() {
                Some(star) if GOOGLE_FEMALE_NAMES.contains(star) => Voice::Woman,
                Some(&("c" | "e" | "f" | "g" | "h" | "l" | "o")) => Voice::Woman,
                _ => Voice::Man,
            }
        } else {
            tracing::debug!(voice = raw, "say: unknown voice, using the default");
            Voice::Man
        };
        let language = language
            .and_then(normalize_language)
            .or_else(|| voice_language.as_deref().and_then(normalize_language))
            .unwrap_or_else(|| DEFAULT_LANGUAGE.to_string());
        VoiceChoice { voice, language }
    }
}

/// `en-us` → `en-US`, `zh_hant_tw` → `zh-Hant-TW`; `None` if it is no plausible BCP 47 tag.
fn normalize_language(tag: &str) -> Option<String> {
    let tag = tag.trim();
    if tag.is_empty() || tag.len() > 35 {
        return None;
    }
    let mut out = Vec::new();
    for (i, part) in tag.split(['-', '_']).enumerate() {
        if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let part = if i == 0 {
            if !(2..=3).contains(&part.len()) || !part.bytes().all(|b| b.is_ascii_alphabetic()) {
                return None;
            }
            part.to_ascii_lowercase()
        } else if part.len() == 2 {
            part.to_ascii_uppercase()
        } else if part.len() == 4 {
            let lower = part.to_ascii_lowercase();
            lower[..1].to_ascii_uppercase() + &lower[1..]
        } else {
            part.to_ascii_lowercase()
        };
        out.push(part);
    }
    Some(out.join("-"))
}

// ---------------------------------------------------------------------------------------------
// flite

/// flite's `cst_wave` (flite 2.2, `include/flite/cst_wave.h`).
#[repr(C)]
struct CstWave {
    kind: *const c_char,
    sample_rate: c_int,
    num_samples: c_int,
    num_channels: c_int,
    samples: *mut i16,
}

type TextToWave = unsafe extern "C" fn(*const c_char, *mut c_void) -> *mut CstWave;
type DeleteWave = unsafe extern "C" fn(*mut CstWave);
type RegisterVoice = unsafe extern "C" fn(*const c_char) -> *mut c_void;
type FliteInit = unsafe extern "C" fn() -> c_int;

/// A flite `cst_voice *`.
#[derive(Clone, Copy)]
struct VoicePtr(NonNull<c_void>);

// SAFETY: the pointer is only handed to flite, always under `FLITE_LOCK`, so no two
// threads use the voice at once; flite never frees a registered voice.
#[allow(unsafe_code)]
unsafe impl Send for VoicePtr {}
// SAFETY: as above: shared references only copy the pointer; flite uses it under the lock.
#[allow(unsafe_code)]
unsafe impl Sync for VoicePtr {}

/// The flite libraries, loaded once per process and never unloaded (flite keeps global state,
/// and the function pointers below point into them).
struct FliteLib {
    text_to_wave: TextToWave,
    delete_wave: DeleteWave,
    kal: VoicePtr,
    slt: Option<VoicePtr>,
    _libraries: Vec<libloading::Library>,
}

/// Serialises every call into flite (loading, registering, synthesis): its thread safety with
/// a shared voice is not documented, and it keeps global state.
static FLITE_LOCK: Mutex<()> = Mutex::new(());

/// The sonames of Debian's `libflite1`. Each voice library pulls `libflite_usenglish` and
/// `libflite_cmulex` in itself (they are its `DT_NEEDED` entries).
const LIBFLITE: &str = "libflite.so.1";
const LIBKAL: &str = "libflite_cmu_us_kal.so.1";
const LIBSLT: &str = "libflite_cmu_us_slt.so.1";

/// Longest wave accepted from flite, in samples: one hour at 48 kHz. [`MAX_TEXT_CHARS`] of
/// spelt-out letters is about 15 minutes.
const MAX_WAVE_SAMPLES: i64 = 48_000 * 3600;

/// flite (CMU, BSD-style licence), loaded at run time from Debian's `libflite1`.
///
/// Voices: `cmu_us_kal` for [`Voice::Man`] (8 kHz native; about 1000 s of audio per CPU second
/// on the 2-vCPU test VM), `cmu_us_slt` for [`Voice::Woman`] (16 kHz resampled to 8 kHz; about
/// 80 s per CPU second; if its library is missing, kal speaks instead). One synthesis at a time
/// per process.
///
/// Text is cleaned before flite sees it: control characters become spaces, common Unicode
/// punctuation becomes its ASCII form, Latin letters lose their accents, and other characters
/// (which flite would spell out byte by byte or skip) become spaces.
#[derive(Clone, Copy)]
pub struct Flite {
    lib: &'static FliteLib,
}

impl std::fmt::Debug for Flite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flite")
            .field("slt", &self.lib.slt.is_some())
            .finish()
    }
}

impl Flite {
    /// Opens flite (once per process; later calls share it). Fails with
    /// [`TtsError::Unavailable`] saying what is missing when `libflite1` is not installed.
    pub fn load() -> Result<Flite, TtsError> {
        static LIB: OnceLock<Result<FliteLib, String>> = OnceLock::new();
        match LIB.get_or_init(|| load_flite(LIBFLITE, LIBKAL, LIBSLT)) {
            Ok(lib) => Ok(Flite { lib }),
            Err(e) => Err(TtsError::Unavailable(e.clone())),
        }
    }

    /// Whether the female voice (slt) is there.
    pub fn has_woman_voice(&self) -> bool {
        self.lib.slt.is_some()
    }
}

fn open(name: &str) -> Result<libloading::Library, String> {
    open_library(name).map_err(|e| {
        // libloading's message is generic ("dlopen failed"); the reason is its source.
        // The source names the file.
        let reason = std::error::Error::source(&e)
            .map_or_else(|| format!("{name}: {e}"), |source| source.to_string());
        format!("flite could not be loaded ({reason}); install Debian's libflite1 for <Say>")
    })
}

#[allow(unsafe_code)]
fn open_library(name: &str) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: loading runs the library's initialisers; flite's have no preconditions and
    // start no threads. The library is one of Debian's libflite1, found by its soname.
    unsafe { libloading::Library::new(name) }
}

/// Copies a function pointer out of `lib`; valid while `lib` stays loaded, which it does for
/// the process's life (see [`FliteLib`]).
#[allow(unsafe_code)]
fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    // SAFETY: `T` is the C signature of `name` as declared in flite 2.2's headers (flite.h,
    // cst_wave.h, the voices' register functions); see the type aliases above.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("flite library has no {name}: {e}"))
}

#[allow(unsafe_code)]
fn register(lib: &libloading::Library, function: &str) -> Result<VoicePtr, String> {
    let register: RegisterVoice = symbol(lib, function)?;
    // SAFETY: `register_cmu_us_*(const char *voxdir)` accepts NULL (the voice's data is
    // compiled in) and returns a new voice or NULL; called once per process, under the
    // `OnceLock` of `Flite::load`.
    let voice = unsafe { register(std::ptr::null()) };
    NonNull::new(voice)
        .map(VoicePtr)
        .ok_or_else(|| format!("flite: {function} returned no voice"))
}

#[allow(unsafe_code)]
fn load_flite(libflite: &str, libkal: &str, libslt: &str) -> Result<FliteLib, String> {
    let _serialised = FLITE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let flite = open(libflite)?;
    let init: FliteInit = symbol(&flite, "flite_init")?;
    let text_to_wave: TextToWave = symbol(&flite, "flite_text_to_wave")?;
    let delete_wave: DeleteWave = symbol(&flite, "delete_wave")?;
    // SAFETY: `int flite_init(void)` has no preconditions; it runs once, before any voice.
    unsafe { init() };
    let kal_lib = open(libkal)?;
    let kal = register(&kal_lib, "register_cmu_us_kal")?;
    let mut libraries = vec![flite, kal_lib];
    let slt = match open(libslt).and_then(|lib| {
        let voice = register(&lib, "register_cmu_us_slt")?;
        libraries.push(lib);
        Ok(voice)
    }) {
        Ok(voice) => Some(voice),
        Err(e) => {
            tracing::warn!(error = %e, "flite: no female voice (slt); kal speaks for both");
            None
        }
    };
    Ok(FliteLib {
        text_to_wave,
        delete_wave,
        kal,
        slt,
        _libraries: libraries,
    })
}

impl FliteLib {
    /// Synthesises cleaned, non-empty text; returns the samples, interleaved, and the wave's
    /// rate and channels.
    #[allow(unsafe_code)]
    fn wave(&self, voice: VoicePtr, text: &CString) -> Result<(Vec<i16>, u32, usize), TtsError> {
        let _serialised = FLITE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: `text` is a NUL-terminated string that outlives the call; `voice` was
        // returned by flite's register function and is never freed; the lock above keeps
        // other threads out of flite.
        let wave = unsafe { (self.text_to_wave)(text.as_ptr(), voice.0.as_ptr()) };
        if wave.is_null() {
            return Err(TtsError::Engine("flite returned no wave".to_string()));
        }
        // SAFETY: a non-null result of `flite_text_to_wave` points to a `cst_wave` (layout
        // checked against flite 2.2's cst_wave.h), owned by us until `delete_wave`; its
        // `samples` holds `num_samples * num_channels` shorts when both are positive.
        let copied = unsafe {
            let w = &*wave;
            let frames = i64::from(w.num_samples);
            let channels = i64::from(w.num_channels);
            let rate = w.sample_rate;
            if frames == 0 {
                Ok((Vec::new(), u32::try_from(rate).unwrap_or(SAMPLE_RATE), 1))
            } else if frames < 0
                || !(1..=8).contains(&channels)
                || frames * channels > MAX_WAVE_SAMPLES
                || w.samples.is_null()
                || rate <= 0
            {
                Err(TtsError::Engine(format!(
                    "flite returned an implausible wave ({frames} samples, {channels} channels, \
                     {rate} Hz)"
                )))
            } else {
                let len = (frames * channels) as usize;
                let samples = std::slice::from_raw_parts(w.samples, len).to_vec();
                Ok((samples, rate as u32, channels as usize))
            }
        };
        // SAFETY: `wave` came from `flite_text_to_wave` and is deleted exactly once, after
        // the samples were copied out.
        unsafe { (self.delete_wave)(wave) };
        copied
    }
}

impl Tts for Flite {
    fn synthesize(&self, voice: &VoiceChoice, text: &str) -> Result<Vec<i16>, TtsError> {
        check_length(text)?;
        let clean = speakable(text);
        if clean.trim().is_empty() {
            return Ok(Vec::new());
        }
        // `speakable` turned every control character, NUL included, into a space.
        let text = CString::new(clean).map_err(|e| TtsError::Engine(e.to_string()))?;
        let lib = self.lib;
        let ptr = match voice.voice {
            Voice::Woman => lib.slt.unwrap_or(lib.kal),
            Voice::Man => lib.kal,
        };
        let (samples, rate, channels) = lib.wave(ptr, &text)?;
        let mono: Vec<i16> = if channels > 1 {
            samples
                .chunks_exact(channels)
                .map(|f| (f.iter().map(|&s| i32::from(s)).sum::<i32>() / channels as i32) as i16)
                .collect()
        } else {
            samples
        };
        // Passes 8 kHz through unchanged; also bounds the length like any prompt.
        Ok(prompt::resample_to_8k(&mono, rate)?)
    }

    fn name(&self) -> &str {
        "flite"
    }
}

/// Text as flite can read it (see [`Flite`]).
fn speakable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' '..='~' => out.push(c),
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' | '\u{2032}' => out.push('\''),
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' | '\u{2033}' | '«' | '»' => {
                out.push('"')
            }
            '\u{2010}'..='\u{2015}' | '\u{2212}' => out.push('-'),
            '\u{2026}' => out.push_str("..."),
            'ß' => out.push_str("ss"),
            'Æ' => out.push_str("AE"),
            'æ' => out.push_str("ae"),
            'Œ' => out.push_str("OE"),
            'œ' => out.push_str("oe"),
            _ => out.push(unaccent(c).unwrap_or(' ')),
        }
    }
    out
}

/// The base letter of an accented Latin-1 letter.
fn unaccent(c: char) -> Option<char> {
    Some(match c {
        'À'..='Å' => 'A',
        'à'..='å' => 'a',
        'Ç' => 'C',
        'ç' => 'c',
        'È'..='Ë' => 'E',
        'è'..='ë' => 'e',
        'Ì'..='Ï' => 'I',
        'ì'..='ï' => 'i',
        'Ñ' => 'N',
        'ñ' => 'n',
        'Ò'..='Ö' | 'Ø' => 'O',
        'ò'..='ö' | 'ø' => 'o',
        'Ù'..='Ü' => 'U',
        'ù'..='ü' => 'u',
        'Ý' => 'Y',
        'ý' | 'ÿ' => 'y',
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// External command

/// Default [`CommandTts`] timeout.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Default cap on a [`CommandTts`]'s output: 32 MiB, about 12 minutes of 22.05 kHz 16-bit WAV.
pub const COMMAND_MAX_OUTPUT_BYTES: usize = 32 * 1024 * 1024;

/// Stderr kept for error messages.
const STDERR_KEEP: usize = 2048;

/// Speech from an external program, for engines that must not be linked in (espeak-ng is GPL):
/// the text is written to its stdin, it writes a WAV or MP3 to stdout, which is decoded like a
/// prompt ([`prompt::decode`]).
///
/// In the arguments, `{voice}` becomes `man` or `woman` and `{language}` the language tag;
/// the text never appears on the command line. For example
/// `CommandTts::new("espeak-ng", ["--stdout", "-v", "{language}", "--stdin"])`.
///
/// The program is killed when it runs longer than the timeout ([`COMMAND_TIMEOUT`] by
/// default) or writes more than [`COMMAND_MAX_OUTPUT_BYTES`]. Only the program itself is
/// killed: a shell wrapper should `exec` the engine so that no grandchild outlives it.
#[derive(Debug, Clone)]
pub struct CommandTts {
    name: String,
    program: String,
    args: Vec<String>,
    timeout: Duration,
    max_output_bytes: usize,
}

impl CommandTts {
    pub fn new<I, S>(program: impl Into<String>, args: I) -> CommandTts
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let program = program.into();
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        CommandTts {
            name: format!(
                "command:{}",
                [program.as_str()]
                    .into_iter()
                    .chain(args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            program,
            args,
            timeout: COMMAND_TIMEOUT,
            max_output_bytes: COMMAND_MAX_OUTPUT_BYTES,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> CommandTts {
        self.timeout = timeout;
        self
    }

    pub fn with_max_output_bytes(mut self, max: usize) -> CommandTts {
        self.max_output_bytes = max;
        self
    }

    fn run(&self, voice: &VoiceChoice, text: &str) -> Result<Vec<u8>, TtsError> {
        let program = || self.program.clone();
        let args = self.args.iter().map(|a| {
            a.replace("{voice}", voice.voice.as_str())
                .replace("{language}", &voice.language)
        });
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| TtsError::Spawn {
                program: program(),
                source,
            })?;

        // Three pipes, three threads, so that no full pipe blocks another. The readers stop
        // at their caps; after a kill they end when the pipe closes.
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TtsError::Engine("speech command without pipes".to_string()));
        };
        let input = text.as_bytes().to_vec();
        spawn_thread(&mut child, move || {
            // A program that exits without reading its input gives EPIPE: not our concern.
            let _ = stdin.write_all(&input);
        })?;
        let cap = self.max_output_bytes;
        let (out_tx, out_rx) = mpsc::channel();
        spawn_thread(&mut child, move || {
            let mut out = Vec::new();
            let result = stdout
                .take((cap as u64).saturating_add(1))
                .read_to_end(&mut out);
            let _ = out_tx.send(result.map(|_| out));
        })?;
        let (err_tx, err_rx) = mpsc::channel();
        spawn_thread(&mut child, move || {
            let mut kept = Vec::new();
            let mut stderr = stderr;
            let _ = (&mut stderr)
                .take(STDERR_KEEP as u64)
                .read_to_end(&mut kept);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            let _ = err_tx.send(kept);
        })?;

        let deadline = Instant::now() + self.timeout;
        let mut step = Duration::from_millis(1);
        let mut output: Option<Vec<u8>> = None;
        let mut status: Option<ExitStatus> = None;
        let kill = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        loop {
            if output.is_none() {
                match out_rx.try_recv() {
                    Ok(Ok(out)) if out.len() > cap => {
                        kill(&mut child);
                        return Err(TtsError::OutputTooLarge {
                            program: program(),
                            max: cap,
                        });
                    }
                    Ok(Ok(out)) => output = Some(out),
                    Ok(Err(e)) => {
                        kill(&mut child);
                        return Err(TtsError::Engine(format!("reading speech command: {e}")));
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => output = Some(Vec::new()),
                }
            }
            if status.is_none() {
                match child.try_wait() {
                    Ok(s) => status = s,
                    Err(e) => {
                        kill(&mut child);
                        return Err(TtsError::Engine(e.to_string()));
                    }
                }
            }
            if let Some(status) = status
                && output.is_some()
            {
                if !status.success() {
                    let kept = err_rx
                        .recv_timeout(Duration::from_millis(200))
                        .unwrap_or_default();
                    return Err(TtsError::Exit {
                        program: program(),
                        status: status.to_string(),
                        stderr: String::from_utf8_lossy(&kept).trim().to_string(),
                    });
                }
                return Ok(output.unwrap_or_default());
            }
            let now = Instant::now();
            if now >= deadline {
                kill(&mut child);
                return Err(TtsError::Timeout {
                    program: program(),
                    timeout_ms: self.timeout.as_millis(),
                });
            }
            std::thread::sleep(step.min(deadline - now));
            step = (step * 2).min(Duration::from_millis(20));
        }
    }
}

/// Starts a pipe thread; if the system has no thread to give, `child` is killed.
fn spawn_thread(
    child: &mut std::process::Child,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), TtsError> {
    match std::thread::Builder::new().name("tts-pipe".into()).spawn(f) {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(TtsError::Engine(format!(
                "no thread for the speech command's pipes: {e}"
            )))
        }
    }
}

impl Tts for CommandTts {
    fn synthesize(&self, voice: &VoiceChoice, text: &str) -> Result<Vec<i16>, TtsError> {
        check_length(text)?;
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let out = self.run(voice, text)?;
        Ok(prompt::decode(&out, None)?)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flite for the tests that need it. Without libflite1 they fail saying so, unless
    /// CALLFLOW_TTS_OPTIONAL=1 (then they pass without checking anything).
    fn flite() -> Option<Flite> {
        match Flite::load() {
            Ok(flite) => Some(flite),
            Err(e) if std::env::var("CALLFLOW_TTS_OPTIONAL").as_deref() == Ok("1") => {
                eprintln!("flite tests skipped (CALLFLOW_TTS_OPTIONAL=1): {e}");
                None
            }
            Err(e) => panic!(
                "these tests need flite: `apt-get install libflite1` \
                 (or set CALLFLOW_TTS_OPTIONAL=1 to skip them): {e}"
            ),
        }
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
    }

    fn choice(voice: Voice) -> VoiceChoice {
        VoiceChoice {
            voice,
            language: "en-US".into(),
        }
    }

    #[test]
    fn flite_says_hello_with_both_voices() {
        let Some(flite) = flite() else { return };
        assert!(
            flite.has_woman_voice(),
            "libflite_cmu_us_slt.so.1 is missing"
        );
        for voice in [Voice::Man, Voice::Woman] {
            let pcm = flite
                .synthesize(&choice(voice), "Hello from callflow")
                .unwrap();
            let seconds = pcm.len() as f64 / f64::from(SAMPLE_RATE);
            assert!((0.5..=3.0).contains(&seconds), "{voice:?}: {seconds} s");
            assert!(rms(&pcm) > 500.0, "{voice:?}: rms {}", rms(&pcm));
            // Speech, not a tone or noise: some 20 ms frames are much quieter than others.
            let frames: Vec<f64> = pcm.chunks(160).map(rms).collect();
            let loudest = frames.iter().cloned().fold(0.0, f64::max);
            assert!(
                frames.iter().any(|&f| f < loudest / 10.0),
                "{voice:?}: no pauses"
            );
        }
        // Different voices, different audio.
        let man = flite.synthesize(&choice(Voice::Man), "Hello").unwrap();
        let woman = flite.synthesize(&choice(Voice::Woman), "Hello").unwrap();
        assert_ne!(man, woman);
    }

    #[test]
    fn flite_is_deterministic_and_serialised_across_threads() {
        let Some(flite) = flite() else { return };
        let want = flite
            .synthesize(&choice(Voice::Man), "Press one for sales.")
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let voice = if i % 2 == 0 { Voice::Man } else { Voice::Woman };
                    let pcm = flite
                        .synthesize(&choice(voice), "Press one for sales.")
                        .unwrap();
                    (voice, pcm)
                })
            })
            .collect();
        for t in threads {
            let (voice, pcm) = t.join().unwrap();
            if voice == Voice::Man {
                assert_eq!(pcm, want);
            } else {
                assert!(!pcm.is_empty());
            }
        }
    }

    #[test]
    fn flite_takes_any_text() {
        let Some(flite) = flite() else { return };
        let man = choice(Voice::Man);
        assert!(flite.synthesize(&man, "").unwrap().is_empty());
        assert!(flite.synthesize(&man, " \n\t ").unwrap().is_empty());
        assert!(flite.synthesize(&man, "日本語 🎉").unwrap().is_empty());
        for text in [
            "nul\0inside, bell\u{7} and escape\u{1b}[31m",
            "Crème brûlée at the café — “quoted” ‘text’…",
            "$3.50 on 12/25/2024 at 3:45pm, call 555-1234 or a@b.com",
            "....!!!???---;;; x",
            &"9".repeat(300),
        ] {
            let pcm = flite.synthesize(&man, text).unwrap();
            assert!(!pcm.is_empty(), "{text:?}");
        }
        // The longest text allowed (kal: fast), and one character more.
        let long = "one two three four ".repeat(MAX_TEXT_CHARS / 19 + 1);
        let long = &long[..MAX_TEXT_CHARS];
        let pcm = flite.synthesize(&man, long).unwrap();
        assert!(pcm.len() > 60 * 8000, "{} samples", pcm.len());
        let too_long = format!("{long}x");
        assert!(matches!(
            flite.synthesize(&man, &too_long),
            Err(TtsError::TextTooLong {
                chars: 4097,
                max: 4096
            })
        ));
    }

    #[test]
    fn missing_flite_is_reported_clearly() {
        let err = load_flite("libflite-missing.so.1", LIBKAL, LIBSLT)
            .err()
            .unwrap();
        assert!(err.contains("libflite-missing.so.1"), "{err}");
        assert!(err.contains("install Debian's libflite1"), "{err}");
        let err = TtsError::Unavailable(err);
        assert!(
            err.to_string()
                .starts_with("speech is unavailable: flite could not be loaded")
        );
    }

    #[test]
    fn without_the_female_voice_kal_speaks_for_both() {
        if flite().is_none() {
            return;
        }
        let lib = load_flite(LIBFLITE, LIBKAL, "libflite_cmu_us_missing.so.1").unwrap();
        let flite = Flite {
            lib: Box::leak(Box::new(lib)),
        };
        assert!(!flite.has_woman_voice());
        let man = flite.synthesize(&choice(Voice::Man), "Hello").unwrap();
        assert_eq!(
            flite.synthesize(&choice(Voice::Woman), "Hello").unwrap(),
            man
        );
    }

    #[test]
    fn text_cleaning() {
        assert_eq!(speakable("Hello, world!"), "Hello, world!");
        assert_eq!(speakable("a\0b\nc\td\u{7f}e"), "a b c d e");
        assert_eq!(speakable("“Ça va?” — l’été…"), "\"Ca va?\" - l'ete...");
        assert_eq!(
            speakable("Straße Æsir œuvre Øre"),
            "Strasse AEsir oeuvre Ore"
        );
        assert_eq!(speakable("日本🎉"), "   ");
    }

    #[test]
    fn text_length_is_counted_in_characters() {
        // 4096 four-byte characters are within the limit.
        assert!(check_length(&"🎉".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(matches!(
            check_length(&"é".repeat(MAX_TEXT_CHARS + 1)),
            Err(TtsError::TextTooLong {
                chars: 4097,
                max: MAX_TEXT_CHARS
            })
        ));
        assert!(check_length("").is_ok());
    }

    #[test]
    fn twilio_voices_map_to_local_ones() {
        let cases: &[(Option<&str>, Option<&str>, Voice, &str)] = &[
            (None, None, Voice::Man, "en-US"),
            (Some("man"), Some("en-GB"), Voice::Man, "en-GB"),
            (Some("MAN"), None, Voice::Man, "en-US"),
            (Some("woman"), Some("fr-FR"), Voice::Woman, "fr-FR"),
            (Some(" alice "), Some("en-au"), Voice::Woman, "en-AU"),
            (Some("Polly.Joanna"), None, Voice::Woman, "en-US"),
            (Some("Polly.Joanna-Neural"), None, Voice::Woman, "en-US"),
            (
                Some("polly.amy-Generative"),
                Some("en-GB"),
                Voice::Woman,
                "en-GB",
            ),
            (Some("Polly.Matthew"), None, Voice::Man, "en-US"),
            (Some("Polly.Brian-Neural"), None, Voice::Man, "en-US"),
            (Some("Polly.Nobody"), None, Voice::Man, "en-US"),
            (Some("Google.en-US-Standard-C"), None, Voice::Woman, "en-US"),
            (Some("Google.en-US-Neural2-J"), None, Voice::Man, "en-US"),
            (Some("Google.en-GB-Wavenet-F"), None, Voice::Woman, "en-GB"),
            (
                Some("Google.de-DE-Chirp3-HD-Aoede"),
                None,
                Voice::Woman,
                "de-DE",
            ),
            (
                Some("Google.en-US-Chirp3-HD-Charon"),
                Some("en-IN"),
                Voice::Man,
                "en-IN",
            ),
            (Some("Google."), None, Voice::Man, "en-US"),
            (Some("robot"), Some("xx"), Voice::Man, "xx"),
            (Some(""), Some(""), Voice::Man, "en-US"),
            (None, Some("zh_hant_tw"), Voice::Man, "zh-Hant-TW"),
            (None, Some("es-419"), Voice::Man, "es-419"),
            (None, Some("english"), Voice::Man, "en-US"),
            (None, Some("e1-US"), Voice::Man, "en-US"),
            (None, Some("en--US"), Voice::Man, "en-US"),
            (None, Some("en-US; rm -rf /"), Voice::Man, "en-US"),
        ];
        for &(voice, language, want_voice, want_language) in cases {
            let got = VoiceChoice::from_twilio(voice, language);
            assert_eq!(
                (got.voice, got.language.as_str()),
                (want_voice, want_language),
                "{voice:?} {language:?}"
            );
        }
        assert_eq!(VoiceChoice::from_twilio(None, None), VoiceChoice::default());
    }

    struct Named;
    impl Tts for Named {
        fn synthesize(&self, _: &VoiceChoice, _: &str) -> Result<Vec<i16>, TtsError> {
            Ok(Vec::new())
        }
        fn name(&self) -> &str {
            "test"
        }
    }

    #[test]
    fn speech_keys_tell_engines_voices_and_languages_apart() {
        let key = speech_key(&Named, &VoiceChoice::from_twilio(Some("alice"), None), "Hi");
        assert_eq!(
            key,
            SpeechKey {
                voice: "test/woman".into(),
                language: "en-US".into(),
                text: "Hi".into()
            }
        );
        let cmd = CommandTts::new("espeak-ng", ["--stdout"]);
        assert_eq!(
            speech_key(&cmd, &VoiceChoice::default(), "Hi").voice,
            "command:espeak-ng --stdout/man"
        );
    }

    // ---- CommandTts

    fn write_wav(path: &std::path::Path, rate: u32, ms: u32) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..rate * ms / 1000 {
            let t = f64::from(i) / f64::from(rate);
            w.write_sample((8000.0 * (2.0 * std::f64::consts::PI * 300.0 * t).sin()) as i16)
                .unwrap();
        }
        w.finalize().unwrap();
    }

    fn sh(script: &str, extra: &[&str]) -> CommandTts {
        let mut args = vec!["-c".to_string(), script.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        CommandTts::new("sh", args)
    }

    #[test]
    fn command_output_is_decoded_and_gets_text_voice_and_language() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("tts-out.wav");
        write_wav(&wav, 22050, 600);
        let seen = dir.path().join("seen.txt");
        let tts = sh(
            r#"cat > "$0"; printf ' %s %s' "$1" "$2" >> "$0"; exec cat "$3""#,
            &[
                seen.to_str().unwrap(),
                "{voice}",
                "{language}",
                wav.to_str().unwrap(),
            ],
        );
        let voice = VoiceChoice::from_twilio(Some("woman"), Some("de-DE"));
        let pcm = tts.synthesize(&voice, "Grüß Gott; $(not run)").unwrap();
        assert!(pcm.len().abs_diff(4800) <= 2, "{} samples", pcm.len());
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap(),
            "Grüß Gott; $(not run) woman de-DE"
        );
        // Nothing to say: the command does not run.
        assert!(tts.synthesize(&voice, "  ").unwrap().is_empty());
    }

    #[test]
    fn command_that_ignores_its_input_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("tts-out.wav");
        write_wav(&wav, 8000, 250);
        let tts = CommandTts::new("cat", [wav.to_str().unwrap()]);
        let text = "word ".repeat(800);
        assert_eq!(
            tts.synthesize(&VoiceChoice::default(), &text)
                .unwrap()
                .len(),
            2000
        );
    }

    #[test]
    fn command_failures_are_errors() {
        let voice = VoiceChoice::default();
        match sh("echo 'no voice here' >&2; exit 3", &[]).synthesize(&voice, "hi") {
            Err(TtsError::Exit { status, stderr, .. }) => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "no voice here");
            }
            other => panic!("{other:?}"),
        }
        match sh("echo this is not audio", &[]).synthesize(&voice, "hi") {
            Err(TtsError::Audio(_)) => {}
            other => panic!("{other:?}"),
        }
        match sh("head -c 200000 /dev/urandom", &[]).synthesize(&voice, "hi") {
            Err(TtsError::Audio(_)) => {}
            other => panic!("{other:?}"),
        }
        match sh("exit 0", &[]).synthesize(&voice, "hi") {
            Err(TtsError::Audio(PromptError::Empty)) => {}
            other => panic!("{other:?}"),
        }
        match CommandTts::new("/nonexistent/tts-engine", Vec::<String>::new())
            .synthesize(&voice, "hi")
        {
            Err(e @ TtsError::Spawn { .. }) => {
                assert!(e.to_string().contains("/nonexistent/tts-engine"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        assert!(matches!(
            CommandTts::new("/nonexistent/tts-engine", Vec::<String>::new())
                .synthesize(&voice, &long),
            Err(TtsError::TextTooLong { .. })
        ));
    }

    /// The error `tts` gives for "hi", which must come within 5 s.
    fn fails_quickly(tts: &CommandTts) -> TtsError {
        let start = Instant::now();
        let err = tts
            .synthesize(&VoiceChoice::default(), "hi")
            .expect_err("speech from a broken command");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        err
    }

    #[test]
    fn command_that_hangs_is_killed() {
        for tts in [
            CommandTts::new("sleep", ["30"]),
            // Closes stdout, then hangs.
            sh("exec >&-; exec sleep 30", &[]),
            // Writes part of a WAV, then hangs.
            sh("printf 'RIFF....WAVEfmt '; exec sleep 30", &[]),
        ] {
            match fails_quickly(&tts.with_timeout(Duration::from_millis(300))) {
                TtsError::Timeout {
                    timeout_ms: 300, ..
                } => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn command_output_is_capped() {
        for tts in [
            CommandTts::new("yes", ["RIFF"]),
            sh("exec head -c 300000 /dev/zero", &[]),
        ] {
            match fails_quickly(&tts.with_max_output_bytes(100_000)) {
                TtsError::OutputTooLarge { max: 100_000, .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn engines_are_usable_as_trait_objects() {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("tts-out.wav");
        write_wav(&wav, 16000, 100);
        let engines: Vec<std::sync::Arc<dyn Tts>> = vec![std::sync::Arc::new(CommandTts::new(
            "cat",
            [wav.to_str().unwrap()],
        ))];
        for engine in engines {
            let pcm = engine.synthesize(&VoiceChoice::default(), "hi").unwrap();
            assert!(pcm.len().abs_diff(800) <= 1);
        }
    }
}
