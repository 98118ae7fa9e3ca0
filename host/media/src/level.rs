//! Audio level of 8 kHz PCM: RMS in dBFS, a silence test, and trimming silence off both ends of a
//! recording.

use std::ops::Range;

/// Samples per 20 ms frame at 8 kHz: the unit of silence decisions and of trimming.
pub const FRAME_SAMPLES: usize = 160;

/// What [`rms_dbfs`] returns for empty input or digital silence, instead of minus infinity.
/// One least significant bit of 16-bit audio is -90.3 dBFS, so nothing real reads lower.
pub const FLOOR_DBFS: f32 = -100.0;

/// Below this RMS level a frame counts as silence.
///
/// Why -45 dBFS: speech on a telephone line is nominally at -26 dBov (the level ITU-T tests use
/// for the P.56 active speech level), about 20 dB above this, while a quiet line (G.711 idle
/// channel, comfort noise) reads below -60. Asterisk's default silence threshold, a mean amplitude
/// of 256, is about -41 dBFS RMS; we sit a little lower so that a soft talker on a weak line is
/// not cut off, and still well above line noise.
pub const SILENCE_THRESHOLD_DBFS: f32 = -45.0;

/// Audio kept on each side of the sound when trimming, so that soft onsets and word endings
/// (which often read as silence frame by frame) are not clipped.
pub const TRIM_MARGIN_MS: u64 = 100;

pub(crate) const TRIM_MARGIN_FRAMES: usize = (TRIM_MARGIN_MS as usize * 8) / FRAME_SAMPLES;

/// RMS level in dBFS, relative to a full-scale square wave (so a full-scale sine reads -3 dB).
/// Empty input and digital silence read [`FLOOR_DBFS`].
pub fn rms_dbfs(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return FLOOR_DBFS;
    }
    // i16² <= 2^30, so a u64 sum cannot overflow below 2^34 samples (almost 25 days).
    let sum: u64 = pcm
        .iter()
        .map(|&s| (i64::from(s) * i64::from(s)) as u64)
        .sum();
    if sum == 0 {
        return FLOOR_DBFS;
    }
    let mean_square = sum as f64 / pcm.len() as f64;
    // 10·log10(ms / 32768²) = 10·log10(ms) - 90.309
    let db = 10.0 * mean_square.log10() - 20.0 * 32768f64.log10();
    (db as f32).max(FLOOR_DBFS)
}

/// Whether `pcm` (typically one 20 ms frame) is below [`SILENCE_THRESHOLD_DBFS`]. Empty input is
/// silent.
pub fn is_silent(pcm: &[i16]) -> bool {
    rms_dbfs(pcm) < SILENCE_THRESHOLD_DBFS
}

/// `pcm` without its leading and trailing silence, decided per 20 ms frame, keeping
/// [`TRIM_MARGIN_MS`] of audio on each side of the sound. All silence trims to empty.
pub fn trim_silence(pcm: &[i16]) -> &[i16] {
    &pcm[trim_silence_range(pcm)]
}

/// The range of `pcm` that [`trim_silence`] keeps, for callers that trim a `Vec` in place.
pub fn trim_silence_range(pcm: &[i16]) -> Range<usize> {
    // The last frame may be short; it is judged on what it has.
    let mut frames = pcm.chunks(FRAME_SAMPLES);
    let Some(first) = frames.position(|f| !is_silent(f)) else {
        return 0..0;
    };
    let trailing = pcm
        .chunks(FRAME_SAMPLES)
        .rev()
        .take_while(|f| is_silent(f))
        .count();
    let total = pcm.len().div_ceil(FRAME_SAMPLES);
    let last = total - trailing; // one past the last loud frame; > first
    let start = first.saturating_sub(TRIM_MARGIN_FRAMES) * FRAME_SAMPLES;
    let end = ((last + TRIM_MARGIN_FRAMES) * FRAME_SAMPLES).min(pcm.len());
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(amplitude: f64, freq: f64, samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|n| {
                let t = n as f64 / 8000.0;
                (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
            })
            .collect()
    }

    /// A sine whose RMS is `dbfs`.
    fn sine_at_dbfs(dbfs: f64, samples: usize) -> Vec<i16> {
        let amplitude = 32768.0 * 10f64.powf(dbfs / 20.0) * std::f64::consts::SQRT_2;
        sine(amplitude, 440.0, samples)
    }

    #[test]
    fn rms_of_known_signals() {
        assert_eq!(rms_dbfs(&[]), FLOOR_DBFS);
        assert_eq!(rms_dbfs(&[0; 160]), FLOOR_DBFS);
        // Full-scale square wave: 0 dB (32767 and -32768 are a hair under and over).
        let square: Vec<i16> = (0..160)
            .map(|n| if n % 2 == 0 { 32767 } else { -32768 })
            .collect();
        assert!(rms_dbfs(&square).abs() < 0.01, "{}", rms_dbfs(&square));
        // Full-scale sine: -3.01 dB.
        let full_sine = sine(32767.0, 1000.0, 8000);
        assert!(
            (rms_dbfs(&full_sine) + 3.01).abs() < 0.01,
            "{}",
            rms_dbfs(&full_sine)
        );
        for db in [-10.0, -30.0, -45.0, -60.0] {
            let got = rms_dbfs(&sine_at_dbfs(db, 8000));
            assert!((f64::from(got) - db).abs() < 0.1, "{db}: {got}");
        }
        // One LSB DC: -90.3 dB, above the floor.
        assert!((rms_dbfs(&[1; 160]) + 90.31).abs() < 0.01);
        assert!((rms_dbfs(&[i16::MIN; 160])).abs() < 0.001);
    }

    #[test]
    fn silence_threshold() {
        assert!(is_silent(&[]));
        assert!(is_silent(&[0; 160]));
        assert!(is_silent(&sine_at_dbfs(-50.0, 160)));
        assert!(is_silent(&sine_at_dbfs(-46.0, 160)));
        assert!(!is_silent(&sine_at_dbfs(-44.0, 160)));
        assert!(!is_silent(&sine_at_dbfs(-26.0, 160)));
    }

    /// Silence, a loud stretch, silence, with lengths in samples.
    fn sandwich(lead: usize, loud: usize, tail: usize) -> Vec<i16> {
        let mut pcm = vec![0; lead];
        pcm.extend(sine_at_dbfs(-20.0, loud));
        pcm.extend(vec![0; tail]);
        pcm
    }

    #[test]
    fn trim_keeps_the_sound_and_a_margin() {
        let margin = TRIM_MARGIN_FRAMES * FRAME_SAMPLES;
        assert_eq!(margin, 800);
        // 1 s silence, 1 s tone, 1 s silence, all frame-aligned.
        let pcm = sandwich(8000, 8000, 8000);
        assert_eq!(trim_silence_range(&pcm), 8000 - margin..16000 + margin);
        assert_eq!(trim_silence(&pcm).len(), 8000 + 2 * margin);
    }

    #[test]
    fn trim_works_at_frame_granularity() {
        // The tone starts 10 samples into frame 50 and ends 10 samples into frame 100: both
        // partly loud frames are kept whole.
        let pcm = sandwich(8010, 8000, 7990);
        let r = trim_silence_range(&pcm);
        assert_eq!(r, 50 * 160 - 800..101 * 160 + 800);
    }

    #[test]
    fn trim_clamps_margins_at_the_edges() {
        // Sound from the first sample to the last: nothing to trim.
        let pcm = sine_at_dbfs(-20.0, 4000);
        assert_eq!(trim_silence_range(&pcm), 0..4000);
        // Less silence than the margin on each side: kept.
        let pcm = sandwich(320, 1600, 320);
        assert_eq!(trim_silence(&pcm).len(), pcm.len());
        // A short last frame (100 samples) that is loud.
        let mut pcm = vec![0; 8000];
        pcm.extend(sine_at_dbfs(-20.0, 100));
        assert_eq!(trim_silence_range(&pcm), 8000 - 800..8100);
    }

    #[test]
    fn trim_of_silence_is_empty() {
        assert!(trim_silence(&[]).is_empty());
        assert!(trim_silence(&[0; 8000]).is_empty());
        assert!(trim_silence(&sine_at_dbfs(-60.0, 8000)).is_empty());
        assert!(trim_silence(&[5; 7]).is_empty());
    }

    #[test]
    fn trim_keeps_silence_between_sounds() {
        let mut pcm = sandwich(8000, 1600, 16000);
        pcm.extend(sandwich(0, 1600, 8000));
        let trimmed = trim_silence(&pcm);
        assert_eq!(trimmed.len(), 1600 + 16000 + 1600 + 2 * 800);
    }
}
