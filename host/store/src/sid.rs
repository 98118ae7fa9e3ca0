//! Twilio-format resource identifiers: a two-letter prefix and 32 lowercase hex digits.

use std::fmt;

use rand::RngCore;

/// The kinds of resource callflow names, with Twilio's prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidKind {
    Account,
    Call,
    PhoneNumber,
    Recording,
    Plugin,
    PluginBinding,
    Callout,
    Participant,
    Trunk,
}

impl SidKind {
    pub fn prefix(self) -> &'static str {
        match self {
            SidKind::Account => "AC",
            SidKind::Call => "CA",
            SidKind::PhoneNumber => "PN",
            SidKind::Recording => "RE",
            SidKind::Plugin => "ZP",
            SidKind::PluginBinding => "ZB",
            SidKind::Callout => "CO",
            SidKind::Participant => "CP",
            SidKind::Trunk => "TK",
        }
    }
}

/// A validated SID string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sid(String);

impl Sid {
    /// A fresh random SID of `kind` (128 random bits, so SIDs are unguessable).
    pub fn generate(kind: SidKind) -> Sid {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let mut s = String::with_capacity(34);
        s.push_str(kind.prefix());
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Sid(s)
    }

    /// Parses `s` as a SID of `kind`; `None` if the prefix or the 32 hex digits are wrong.
    pub fn parse(kind: SidKind, s: &str) -> Option<Sid> {
        let rest = s.strip_prefix(kind.prefix())?;
        let ok = rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Sid(format!("{}{}", kind.prefix(), rest.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A random secret of 32 hex digits, Twilio's auth-token shape.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sids_parse_back() {
        for kind in [
            SidKind::Account,
            SidKind::Call,
            SidKind::PhoneNumber,
            SidKind::Recording,
            SidKind::Trunk,
        ] {
            let sid = Sid::generate(kind);
            assert_eq!(sid.as_str().len(), 34);
            assert_eq!(Sid::parse(kind, sid.as_str()), Some(sid));
        }
    }

    #[test]
    fn parse_rejects_wrong_prefix_length_and_digits() {
        let good = "CA0123456789abcdef0123456789abcdef";
        assert!(Sid::parse(SidKind::Call, good).is_some());
        assert!(Sid::parse(SidKind::Account, good).is_none());
        assert!(Sid::parse(SidKind::Call, &good[..33]).is_none());
        assert!(Sid::parse(SidKind::Call, "CA0123456789abcdef0123456789abcdeg").is_none());
        assert!(Sid::parse(SidKind::Call, "").is_none());
        // upper-case hex is accepted and normalised
        assert_eq!(
            Sid::parse(SidKind::Call, "CA0123456789ABCDEF0123456789ABCDEF")
                .unwrap()
                .as_str(),
            good
        );
    }

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
