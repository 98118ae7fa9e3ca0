//! G.711 µ-law and A-law (being written).

/// Which G.711 law a call uses (PCMU = µ-law, static payload type 0; PCMA = A-law, 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    Mu,
    A,
}

pub fn encode_sample(_law: Law, _s: i16) -> u8 {
    0xff
}
