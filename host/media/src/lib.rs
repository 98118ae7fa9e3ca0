//! Media for answered calls: RTP in and out, G.711, DTMF, prompts, speech and recordings.
//!
//! The pure pieces (codecs, DTMF, level detection, the recorder, the RTP stream, and one
//! call's whole media in `session`) take time as an argument; the workers (`worker`) own the
//! sockets and drive every call's session from one tick, so an idle call costs nothing and no
//! call has its own timer.

pub mod amd;
pub mod dtmf;
pub mod files;
pub mod g711;
pub mod level;
pub mod prompt;
pub mod record;
pub mod rtp;
pub mod session;
pub mod spool;
pub mod tts;
pub mod worker;

use std::sync::Arc;

/// The sample rate of everything in this crate: telephony audio, 8 kHz mono.
pub const SAMPLE_RATE: u32 = 8000;

/// A piece of audio ready to send: 8 kHz mono, already encoded in both G.711 laws, so that any
/// number of calls playing it share these buffers and sending costs only packetising.
#[derive(Debug, Clone)]
pub struct Audio {
    mu: Arc<[u8]>,
    a: Arc<[u8]>,
}

impl Audio {
    /// Encodes 8 kHz mono PCM once into both laws.
    pub fn from_pcm(pcm: &[i16]) -> Audio {
        Audio {
            mu: pcm
                .iter()
                .map(|&s| g711::encode_sample(g711::Law::Mu, s))
                .collect(),
            a: pcm
                .iter()
                .map(|&s| g711::encode_sample(g711::Law::A, s))
                .collect(),
        }
    }

    /// The encoded samples (one byte each) in `law`.
    pub fn samples(&self, law: g711::Law) -> &Arc<[u8]> {
        match law {
            g711::Law::Mu => &self.mu,
            g711::Law::A => &self.a,
        }
    }

    /// Length in samples (= 1/8 ms).
    pub fn len(&self) -> usize {
        self.mu.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mu.is_empty()
    }

    /// Bytes held (both laws), for cache accounting.
    pub fn bytes(&self) -> usize {
        self.mu.len() + self.a.len()
    }
}
