//! Recording files: 8 kHz mono PCM to WAV (16-bit) or MP3 bytes, or files written atomically
//! (a temporary file in the same directory, synced, then renamed), so a reader never sees half a
//! file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mp3lame_encoder::{Bitrate, Builder, FlushGap, InterleavedPcm, Mode, MonoPcm, Quality};

use crate::SAMPLE_RATE;

/// MP3 bitrate for recordings: 32 kbit/s is clean for 8 kHz speech (half of G.711's 64) at
/// 14 MB per hour; 16 kbit/s is audibly lossy.
const MP3_BITRATE: Bitrate = Bitrate::Kbps32;

/// Samples handed to LAME per call, which bounds its output buffer (about 12 KB).
const MP3_CHUNK: usize = 4096;

/// A WAV data chunk has a 32-bit length: at 16 KB/s that is 74 hours, far beyond any recording.
const MAX_WAV_SAMPLES: usize = (u32::MAX as usize - 44) / 2;

/// Errors writing an MP3 recording.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("MP3 encoder setup failed: {0}")]
    Mp3Setup(String),
    #[error("MP3 encoding failed: {0}")]
    Mp3Encode(mp3lame_encoder::EncodeError),
}

/// Writes `pcm` (8 kHz mono) to `path` as a 16-bit PCM WAV file, replacing any file there.
pub fn write_wav(path: &Path, pcm: &[i16]) -> io::Result<()> {
    let wav = wav_bytes(pcm)?;
    write_atomically(path, |file| {
        use std::io::Write;
        file.write_all(&wav)
    })
}

/// `pcm` (8 kHz mono) as the bytes of a 16-bit PCM WAV file.
pub fn wav_bytes(pcm: &[i16]) -> io::Result<Vec<u8>> {
    wav_bytes_of(pcm, 1)
}

/// `pcm` (8 kHz, `channels` interleaved: 1 or 2) as the bytes of a 16-bit PCM WAV file.
pub fn wav_bytes_of(pcm: &[i16], channels: u16) -> io::Result<Vec<u8>> {
    if pcm.len() > MAX_WAV_SAMPLES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too long for a WAV file",
        ));
    }
    let spec = hound::WavSpec {
        channels,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = io::Cursor::new(Vec::with_capacity(44 + pcm.len() * 2));
    let mut wav = hound::WavWriter::new(&mut out, spec).map_err(hound_to_io)?;
    for &s in pcm {
        wav.write_sample(s).map_err(hound_to_io)?;
    }
    // Writes the lengths into the header.
    wav.finalize().map_err(hound_to_io)?;
    Ok(out.into_inner())
}

/// Writes `pcm` (8 kHz mono) to `path` as an MP3 file ([`mp3_bytes`]), replacing any file there.
pub fn write_mp3(path: &Path, pcm: &[i16]) -> Result<(), FileError> {
    let mp3 = mp3_bytes(pcm)?;
    write_atomically(path, |file| {
        use std::io::Write;
        file.write_all(&mp3).map_err(FileError::from)
    })
}

/// `pcm` (8 kHz mono) as the bytes of an MP3 file (MPEG-2.5 layer III, 32 kbit/s CBR, with a
/// LAME tag giving the encoder delay and padding, so decoders can restore the exact length).
pub fn mp3_bytes(pcm: &[i16]) -> Result<Vec<u8>, FileError> {
    mp3_bytes_of(pcm, 1)
}

/// As [`mp3_bytes`], of `channels` interleaved channels (2: joint stereo at twice the rate).
pub fn mp3_bytes_of(pcm: &[i16], channels: u16) -> Result<Vec<u8>, FileError> {
    let stereo = channels == 2;
    let setup = |e: mp3lame_encoder::BuildError| FileError::Mp3Setup(e.to_string());
    let mut builder =
        Builder::new().ok_or_else(|| FileError::Mp3Setup("LAME could not allocate".into()))?;
    builder
        .set_num_channels(if stereo { 2 } else { 1 })
        .map_err(setup)?;
    builder.set_sample_rate(SAMPLE_RATE).map_err(setup)?;
    builder
        .set_output_sample_rate(std::num::NonZeroU32::new(SAMPLE_RATE))
        .map_err(setup)?;
    builder
        .set_mode(if stereo {
            Mode::JointStereo
        } else {
            Mode::Mono
        })
        .map_err(setup)?;
    builder
        .set_brate(if stereo { Bitrate::Kbps64 } else { MP3_BITRATE })
        .map_err(setup)?;
    builder.set_quality(Quality::Good).map_err(setup)?;
    builder.set_to_write_vbr_tag(true).map_err(setup)?;
    let mut encoder = builder.build().map_err(setup)?;

    // 32 kbit/s is 4 bytes per ms, 0.5 byte per sample; plus a frame or two of slack.
    let mut out = Vec::with_capacity(pcm.len() / 2 + 8192);
    for chunk in pcm.chunks(MP3_CHUNK * usize::from(channels.max(1))) {
        out.reserve(mp3lame_encoder::max_required_buffer_size(chunk.len()));
        if stereo {
            encoder.encode_to_vec(InterleavedPcm(chunk), &mut out)
        } else {
            encoder.encode_to_vec(MonoPcm(chunk), &mut out)
        }
        .map_err(FileError::Mp3Encode)?;
    }
    out.reserve(mp3lame_encoder::max_required_buffer_size(0));
    encoder
        .flush_to_vec::<FlushGap>(&mut out)
        .map_err(FileError::Mp3Encode)?;

    // LAME put an empty frame first (after any ID3v2 tag, of which we write none) as room for
    // the LAME/Info tag, which it can only fill in now that it knows the totals.
    let tag_at = encoder.id3v2_tag_size();
    let mut tag = Vec::with_capacity(encoder.lame_tag_size());
    if encoder.lame_tag_encode_to_vec(&mut tag).is_some() {
        let room = out
            .get_mut(tag_at..tag_at + tag.len())
            .ok_or_else(|| FileError::Mp3Setup("no room for the LAME tag".into()))?;
        room.copy_from_slice(&tag);
    }
    Ok(out)
}

fn hound_to_io(e: hound::Error) -> io::Error {
    match e {
        hound::Error::IoError(e) => e,
        other => io::Error::other(other),
    }
}

/// Distinguishes temporary files of concurrent writes in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `write` on a new temporary file next to `path`, syncs it, and renames it to `path`. On
/// any error the temporary file is removed and `path` is left as it was.
fn write_atomically<E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_path(path)?;
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let result = write(&mut file)
        .and_then(|()| file.sync_all().map_err(E::from))
        .and_then(|()| fs::rename(&tmp, path).map_err(E::from));
    if result.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.<pid>.<n>.tmp` for `dir/name`: the same directory, so the rename stays on one
/// filesystem and is atomic; hidden, so directory listings skip it.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a file path: {}", path.display()),
        )
    })?;
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;

    /// `ms` of a 440 Hz tone at about -10 dBFS.
    fn tone(ms: usize) -> Vec<i16> {
        (0..ms * 8)
            .map(|n| {
                let t = n as f64 / 8000.0;
                (10_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect()
    }

    /// Decodes an MP3 file with symphonia: (sample rate, mono samples).
    fn decode_mp3(path: &Path) -> (u32, Vec<i16>) {
        let file = File::open(path).unwrap();
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        hint.with_extension("mp3");
        let mut format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .unwrap();
        let track = format.default_track(TrackType::Audio).unwrap();
        let params = track
            .codec_params
            .as_ref()
            .unwrap()
            .audio()
            .unwrap()
            .clone();
        let track_id = track.id;
        let mut decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .unwrap();
        let mut samples = Vec::new();
        let mut packet_samples: Vec<i16> = Vec::new();
        while let Some(packet) = format.next_packet().unwrap() {
            if packet.track_id != track_id {
                continue;
            }
            let audio = decoder.decode(&packet).unwrap();
            assert_eq!(audio.num_planes(), 1, "mono");
            audio.copy_to_vec_interleaved(&mut packet_samples);
            samples.extend_from_slice(&packet_samples);
        }
        (params.sample_rate.unwrap(), samples)
    }

    #[test]
    fn wav_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.wav");
        let pcm = tone(2_500);
        write_wav(&path, &pcm).unwrap();

        let mut reader = hound::WavReader::open(&path).unwrap();
        let spec = reader.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (1, 8000, 16)
        );
        assert_eq!(spec.sample_format, hound::SampleFormat::Int);
        assert_eq!(reader.duration(), 20_000);
        let back: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().unwrap();
        assert_eq!(back, pcm);
        assert_eq!(fs::metadata(&path).unwrap().len(), 44 + 40_000);
    }

    #[test]
    fn mp3_round_trip_keeps_length_and_sound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.mp3");
        let pcm = tone(2_500);
        write_mp3(&path, &pcm).unwrap();

        let size = fs::metadata(&path).unwrap().len();
        // 32 kbit/s for 2.5 s is 10 KB, plus the tag frame and padding.
        assert!((9_000..13_000).contains(&size), "{size} bytes");

        // The first frame carries the LAME "Info" tag (CBR), not silence.
        let bytes = fs::read(&path).unwrap();
        assert!(bytes[..200].windows(4).any(|w| w == b"Info"), "no LAME tag");

        let (rate, decoded) = decode_mp3(&path);
        assert_eq!(rate, 8000);
        // LAME adds its encoder delay (about 140 ms here) and pads the end to whole frames; the
        // tag tells the decoder how much to drop, so the length comes back exact.
        let ms = decoded.len() as i64 / 8;
        assert!((ms - 2_500).abs() <= 100, "decoded {ms} ms");
        assert_eq!(decoded.len(), pcm.len());
        // Not silent, and about the level that went in (-13 dBFS).
        let db = crate::level::rms_dbfs(&decoded);
        assert!((db + 13.3).abs() < 2.0, "decoded level {db} dBFS");
    }

    #[test]
    fn short_and_empty_recordings() {
        let dir = tempfile::tempdir().unwrap();
        for ms in [0, 1, 20, 100] {
            let pcm = tone(ms);
            let wav = dir.path().join(format!("{ms}.wav"));
            write_wav(&wav, &pcm).unwrap();
            assert_eq!(
                hound::WavReader::open(&wav).unwrap().duration() as usize,
                pcm.len()
            );
            let mp3 = dir.path().join(format!("{ms}.mp3"));
            write_mp3(&mp3, &pcm).unwrap();
            assert!(mp3.exists());
            let (_, decoded) = decode_mp3(&mp3);
            assert_eq!(decoded.len(), pcm.len(), "{ms} ms");
        }
    }

    #[test]
    fn replaces_an_existing_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.wav");
        fs::write(&path, b"old").unwrap();
        write_wav(&path, &tone(100)).unwrap();
        assert_eq!(hound::WavReader::open(&path).unwrap().duration(), 800);
        let mp3 = dir.path().join("rec.mp3");
        write_mp3(&mp3, &tone(100)).unwrap();
        write_mp3(&mp3, &tone(200)).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn errors_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        // Missing directory.
        let path = dir.path().join("missing").join("rec.wav");
        assert_eq!(
            write_wav(&path, &tone(20)).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let path = dir.path().join("missing").join("rec.mp3");
        assert!(matches!(write_mp3(&path, &tone(20)), Err(FileError::Io(_))));
        // No file name.
        assert_eq!(
            write_wav(Path::new("/"), &[]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(matches!(
            write_mp3(Path::new(".."), &[]),
            Err(FileError::Io(_))
        ));
        // A directory in the way: the rename fails, the temporary file goes.
        let path = dir.path().join("taken");
        fs::create_dir(path.join("")).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_wav(&path, &tone(20)).is_err());
        assert!(write_mp3(&path, &tone(20)).is_err());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
