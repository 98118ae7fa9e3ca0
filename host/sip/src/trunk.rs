//! Trunks: the SIP gateways outbound calls leave through and the peers inbound calls may come
//! from, as configured (`[[trunks]]`). Pure rules only: validation, number rewriting, the
//! inbound source allowlist and the choice of trunk. Resolving a gateway's host name, sending
//! and rate limiting are the driver's and the dispatcher's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize};

/// Errors in trunk configuration. Every variant about one trunk names it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrunkError {
    #[error("trunk name {name:?} must be non-empty and use only letters, digits, '_', '.' and '-'")]
    BadName { name: String },
    #[error("trunk {trunk:?}: host must not be empty")]
    EmptyHost { trunk: String },
    #[error("trunk {trunk:?}: host {host:?} is not a host name or IP address{hint}")]
    BadHost {
        trunk: String,
        host: String,
        hint: &'static str,
    },
    #[error("trunk {trunk:?}: port must not be 0")]
    ZeroPort { trunk: String },
    #[error("trunk {trunk:?}: cps must be a finite number above 0, not {cps}")]
    BadCps { trunk: String, cps: f64 },
    #[error("trunk {trunk:?}: set both username and password, or neither")]
    HalfCredentials { trunk: String },
    #[error(
        "trunk {trunk:?}: a rewrite in `{rule}` has an empty prefix, which would match every number"
    )]
    EmptyRewritePrefix { trunk: String, rule: &'static str },
    /// From [`Allowlist::parse`], which does not know the trunk.
    #[error("inbound source {entry:?}: {reason}")]
    BadSource { entry: String, reason: String },
    #[error("trunk {trunk:?}: inbound_sources entry {entry:?}: {reason}")]
    BadTrunkSource {
        trunk: String,
        entry: String,
        reason: String,
    },
    #[error("two trunks are named {name:?}; names must be unique")]
    DuplicateName { name: String },
    #[error("trunks {first:?} and {second:?} are both marked default; at most one may be")]
    SeveralDefaults { first: String, second: String },
}

/// The transport towards a trunk's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    #[default]
    Udp,
    Tcp,
}

impl TrunkTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkTransport::Udp => "udp",
            TrunkTransport::Tcp => "tcp",
        }
    }
}

/// One trunk, as configured. Validate with [`TrunkSpec::validate`] (or [`Trunks::new`]).
///
/// `Debug` never shows the password; [`TrunkSpec::redacted`] gives a copy fit for printing.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkSpec {
    /// Unique; letters, digits, `_`, `.` and `-`.
    pub name: String,
    /// The gateway's host name or IP address (without port).
    pub host: String,
    pub port: u16,
    pub transport: TrunkTransport,
    /// Digest credentials, used to answer 401/407 challenges from the gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// When set, only challenges for this realm are answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// The host of our From URI; the gateway host when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_domain: Option<String>,
    /// Applied to the From user of outbound calls.
    pub caller_id: NumberRule,
    /// Applied to the Request-URI and To user of outbound calls.
    pub dial: NumberRule,
    /// Applied to the called and calling numbers of inbound calls, to get back to E.164 as
    /// stored. A missing `plus` means `add` here (not `keep` as in the other rules).
    #[serde(deserialize_with = "inbound_rule")]
    pub inbound: NumberRule,
    /// Outbound calls per second through this trunk.
    pub cps: f64,
    /// Concurrent calls, inbound and outbound together; 0 = unlimited.
    pub max_channels: u32,
    /// IP addresses or CIDR ranges (v4 or v6) inbound calls may come from. Empty means only the
    /// gateway host's address, if `host` is an IP literal (a host name is resolved by nobody
    /// here, so such a trunk takes no inbound calls unless sources are listed).
    pub inbound_sources: Vec<String>,
    /// The trunk outbound calls use; when no trunk is marked, the first one.
    pub default: bool,
}

impl Default for TrunkSpec {
    fn default() -> Self {
        TrunkSpec {
            name: String::new(),
            host: String::new(),
            port: 5060,
            transport: TrunkTransport::Udp,
            username: None,
            password: None,
            realm: None,
            from_domain: None,
            caller_id: NumberRule::default(),
            dial: NumberRule::default(),
            inbound: NumberRule::inbound_default(),
            cps: 10.0,
            max_channels: 100,
            inbound_sources: Vec::new(),
            default: false,
        }
    }
}

impl fmt::Debug for TrunkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // destructured without `..`, so a new field cannot be forgotten here
        let TrunkSpec {
            name,
            host,
            port,
            transport,
            username,
            password,
            realm,
            from_domain,
            caller_id,
            dial,
            inbound,
            cps,
            max_channels,
            inbound_sources,
            default,
        } = self;
        f.debug_struct("TrunkSpec")
            .field("name", name)
            .field("host", host)
            .field("port", port)
            .field("transport", transport)
            .field("username", username)
            .field("password", &password.as_ref().map(|_| REDACTED))
            .field("realm", realm)
            .field("from_domain", from_domain)
            .field("caller_id", caller_id)
            .field("dial", dial)
            .field("inbound", inbound)
            .field("cps", cps)
            .field("max_channels", max_channels)
            .field("inbound_sources", inbound_sources)
            .field("default", default)
            .finish()
    }
}

/// What a password is replaced by in printed configuration.
pub const REDACTED: &str = "***";

impl TrunkSpec {
    /// A copy with the password (if any) replaced by `***`, for printing configuration.
    pub fn redacted(&self) -> TrunkSpec {
        TrunkSpec {
            password: self.password.as_ref().map(|_| REDACTED.to_owned()),
            ..self.clone()
        }
    }

    /// The host of our From URI: `from_domain`, else the gateway host.
    pub fn from_host(&self) -> &str {
        self.from_domain.as_deref().unwrap_or(&self.host)
    }

    /// Checks the fields that can be checked without the network.
    pub fn validate(&self) -> Result<(), TrunkError> {
        let trunk = || self.name.clone();
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(TrunkError::BadName {
                name: self.name.clone(),
            });
        }
        if self.host.is_empty() {
            return Err(TrunkError::EmptyHost { trunk: trunk() });
        }
        if host_ip(&self.host).is_none() {
            let hint = if self.host.contains(':') {
                " (put the port in `port`, and an IPv6 address as it is or in brackets)"
            } else {
                ""
            };
            let name_like = self
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !name_like {
                return Err(TrunkError::BadHost {
                    trunk: trunk(),
                    host: self.host.clone(),
                    hint,
                });
            }
        }
        if self.port == 0 {
            return Err(TrunkError::ZeroPort { trunk: trunk() });
        }
        if !(self.cps.is_finite() && self.cps > 0.0) {
            return Err(TrunkError::BadCps {
                trunk: trunk(),
                cps: self.cps,
            });
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(TrunkError::HalfCredentials { trunk: trunk() });
        }
        for (rule, r) in [
            ("caller_id", &self.caller_id),
            ("dial", &self.dial),
            ("inbound", &self.inbound),
        ] {
            if r.rewrite.iter().any(|w| w.prefix.is_empty()) {
                return Err(TrunkError::EmptyRewritePrefix {
                    trunk: trunk(),
                    rule,
                });
            }
        }
        self.allowlist().map(|_| ())
    }

    /// The addresses inbound calls may come from: `inbound_sources`, or when that is empty the
    /// gateway host if it is an IP literal (otherwise nothing).
    pub fn allowlist(&self) -> Result<Allowlist, TrunkError> {
        if self.inbound_sources.is_empty() {
            let nets = host_ip(&self.host).map(Net::host).into_iter().collect();
            return Ok(Allowlist { nets });
        }
        Allowlist::parse(&self.inbound_sources).map_err(|e| match e {
            TrunkError::BadSource { entry, reason } => TrunkError::BadTrunkSource {
                trunk: self.name.clone(),
                entry,
                reason,
            },
            other => other,
        })
    }
}

/// `host` as an IP address, bare or (IPv6) in brackets.
fn host_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// What to do with a leading `+`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlusRule {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Remove a leading `+`.
    Strip,
    /// Add a leading `+` to a number of digits only.
    Add,
}

/// Replace `prefix` at the start of a number with `replace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub prefix: String,
    /// Empty (the default) removes the prefix.
    #[serde(default)]
    pub replace: String,
}

/// How a trunk wants numbers written. See [`NumberRule::apply`] for the order of the steps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NumberRule {
    pub plus: PlusRule,
    /// Tried in order; the first whose prefix matches is applied, the rest are not.
    pub rewrite: Vec<Rewrite>,
}

/// Characters people put in numbers to make them readable.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')
}

impl NumberRule {
    /// The default rule for inbound numbers: add a `+` where it is missing.
    pub fn inbound_default() -> NumberRule {
        NumberRule {
            plus: PlusRule::Add,
            rewrite: Vec::new(),
        }
    }

    /// Rewrites `number` in three steps, in this order:
    ///
    /// 1. trim surrounding whitespace and, if the number is made only of digits, `+`, `*`, `#`
    ///    and visual separators (spaces, `-`, `.`, `(`, `)`), remove the separators (a SIP user
    ///    name such as `john.doe` is left alone);
    /// 2. apply the first rewrite whose prefix starts the result, replacing that prefix;
    /// 3. apply the plus rule: `strip` removes a leading `+`, `add` puts one in front of a
    ///    result made only of digits, `keep` does nothing.
    pub fn apply(&self, number: &str) -> String {
        let trimmed = number.trim();
        let phone_like = trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '*' | '#') || is_separator(c));
        let mut n: String = if phone_like {
            trimmed.chars().filter(|&c| !is_separator(c)).collect()
        } else {
            trimmed.to_owned()
        };
        if let Some(w) = self.rewrite.iter().find(|w| n.starts_with(&w.prefix)) {
            n = format!("{}{}", w.replace, &n[w.prefix.len()..]);
        }
        match self.plus {
            PlusRule::Keep => n,
            PlusRule::Strip => match n.strip_prefix('+') {
                Some(rest) => rest.to_owned(),
                None => n,
            },
            PlusRule::Add if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                format!("+{n}")
            }
            PlusRule::Add => n,
        }
    }
}

/// Deserialises `inbound`, whose `plus` defaults to `add` when the table leaves it out.
fn inbound_rule<'de, D: Deserializer<'de>>(d: D) -> Result<NumberRule, D::Error> {
    #[derive(Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Raw {
        plus: Option<PlusRule>,
        rewrite: Vec<Rewrite>,
    }
    let raw = Raw::deserialize(d)?;
    Ok(NumberRule {
        plus: raw.plus.unwrap_or(PlusRule::Add),
        rewrite: raw.rewrite,
    })
}

/// One address range: the network's bits and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    /// The range holding just `ip` (an IPv4-mapped IPv6 address is stored as IPv4).
    fn host(ip: IpAddr) -> Net {
        match canonical(ip) {
            IpAddr::V4(a) => Net::V4(u32::from(a), 32),
            IpAddr::V6(a) => Net::V6(u128::from(a), 128),
        }
    }

    fn contains(self, ip: IpAddr) -> bool {
        match (self, canonical(ip)) {
            (Net::V4(net, len), IpAddr::V4(a)) => u32::from(a) & mask4(len) == net,
            (Net::V4(..), IpAddr::V6(_)) => false,
            // an IPv6 range holds an IPv4 address if it holds its mapped form (`::/0` does)
            (Net::V6(net, len), IpAddr::V4(a)) => {
                u128::from(a.to_ipv6_mapped()) & mask6(len) == net
            }
            (Net::V6(net, len), IpAddr::V6(a)) => u128::from(a) & mask6(len) == net,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Net::V4(n, len) => write!(f, "{}/{len}", Ipv4Addr::from(n)),
            Net::V6(n, len) => write!(f, "{}/{len}", Ipv6Addr::from(n)),
        }
    }
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as their IPv4 form, so they match IPv4 ranges.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IP addresses and CIDR ranges (v4 and v6) a trunk's inbound calls may come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowlist {
    nets: Vec<Net>,
}

impl Allowlist {
    /// Parses addresses (`192.0.2.7`, `2001:db8::1`) and ranges (`192.0.2.0/24`, `2001:db8::/32`).
    /// A range with host bits set (`192.0.2.7/24`) is refused rather than guessed at.
    pub fn parse(entries: &[String]) -> Result<Allowlist, TrunkError> {
        let nets = entries
            .iter()
            .map(|e| {
                parse_net(e.trim()).map_err(|reason| TrunkError::BadSource {
                    entry: e.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { nets })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

fn parse_net(s: &str) -> Result<Net, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(l) if l <= max => l,
            _ => {
                return Err(format!(
                    "prefix length {l:?} is not a number from 0 to {max}"
                ));
            }
        },
    };
    // a range with host bits set is refused: the operator may have meant either
    let bad = |net: Net| {
        Err(format!(
            "has bits set after the prefix; did you mean {net}?"
        ))
    };
    match ip {
        IpAddr::V4(a) => {
            let net = u32::from(a) & mask4(len);
            if net != u32::from(a) {
                return bad(Net::V4(net, len));
            }
            Ok(Net::V4(net, len))
        }
        IpAddr::V6(a) => {
            let net = u128::from(a) & mask6(len);
            if net != u128::from(a) {
                return bad(Net::V6(net, len));
            }
            match a.to_ipv4_mapped() {
                // a mapped range covers IPv4 addresses: keep it as the IPv4 range it is
                Some(v4) if len >= 96 => Ok(Net::V4(u32::from(v4), len - 96)),
                _ => Ok(Net::V6(net, len)),
            }
        }
    }
}

/// The configured trunks, validated: names unique, at most one marked default.
#[derive(Debug, Clone, Default)]
pub struct Trunks {
    trunks: Vec<(TrunkSpec, Allowlist)>,
}

impl Trunks {
    /// Validates every trunk and the set as a whole.
    pub fn new(specs: Vec<TrunkSpec>) -> Result<Trunks, TrunkError> {
        let mut trunks: Vec<(TrunkSpec, Allowlist)> = Vec::with_capacity(specs.len());
        for spec in specs {
            spec.validate()?;
            if trunks.iter().any(|(t, _)| t.name == spec.name) {
                return Err(TrunkError::DuplicateName { name: spec.name });
            }
            if spec.default
                && let Some((first, _)) = trunks.iter().find(|(t, _)| t.default)
            {
                return Err(TrunkError::SeveralDefaults {
                    first: first.name.clone(),
                    second: spec.name,
                });
            }
            let allow = spec.allowlist()?;
            trunks.push((spec, allow));
        }
        Ok(Trunks { trunks })
    }

    /// The first trunk (in configuration order) whose allowlist holds `ip`.
    pub fn by_source(&self, ip: IpAddr) -> Option<&TrunkSpec> {
        self.trunks
            .iter()
            .find(|(_, allow)| allow.contains(ip))
            .map(|(t, _)| t)
    }

    /// The trunk marked `default`, else the first one.
    pub fn default_trunk(&self) -> Option<&TrunkSpec> {
        self.iter()
            .find(|t| t.default)
            .or_else(|| self.iter().next())
    }

    pub fn get(&self, name: &str) -> Option<&TrunkSpec> {
        self.iter().find(|t| t.name == name)
    }

    /// In configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &TrunkSpec> {
        self.trunks.iter().map(|(t, _)| t)
    }

    pub fn len(&self) -> usize {
        self.trunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, host: &str) -> TrunkSpec {
        TrunkSpec {
            name: name.into(),
            host: host.into(),
            ..TrunkSpec::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(entries: &[&str]) -> Result<Allowlist, TrunkError> {
        Allowlist::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn dial_rule_rewrites_then_strips_the_plus() {
        let dial = NumberRule {
            plus: PlusRule::Strip,
            rewrite: vec![Rewrite {
                prefix: "+855".into(),
                replace: "0".into(),
            }],
        };
        assert_eq!(dial.apply("+85512345678"), "012345678");
        assert_eq!(dial.apply(" +855 (12) 345-678 "), "012345678");
        assert_eq!(
            dial.apply("+15005550006"),
            "15005550006",
            "no rewrite matches"
        );
        let caller = NumberRule {
            plus: PlusRule::Strip,
            rewrite: vec![],
        };
        assert_eq!(caller.apply("+15005550006"), "15005550006");
    }

    #[test]
    fn only_the_first_matching_rewrite_applies() {
        let r = NumberRule {
            plus: PlusRule::Keep,
            rewrite: vec![
                Rewrite {
                    prefix: "00".into(),
                    replace: "+".into(),
                },
                Rewrite {
                    prefix: "0".into(),
                    replace: "+855".into(),
                },
                Rewrite {
                    prefix: "+".into(),
                    replace: "x".into(),
                },
            ],
        };
        assert_eq!(r.apply("0044 20 7946 0000"), "+442079460000");
        assert_eq!(r.apply("012.345.678"), "+85512345678");
        assert_eq!(r.apply("+1"), "x1");
        assert_eq!(r.apply("123"), "123");
    }

    #[test]
    fn plus_rules() {
        let rule = |plus| NumberRule {
            plus,
            rewrite: vec![],
        };
        let add = rule(PlusRule::Add);
        assert_eq!(add.apply("15005550006"), "+15005550006");
        assert_eq!(add.apply("+15005550006"), "+15005550006");
        assert_eq!(add.apply("1 (500) 555-0006"), "+15005550006");
        assert_eq!(add.apply("*67"), "*67", "not all digits");
        assert_eq!(add.apply("alice"), "alice");
        assert_eq!(add.apply(""), "");
        assert_eq!(rule(PlusRule::Keep).apply(" +1 500 "), "+1500");
        assert_eq!(rule(PlusRule::Strip).apply("1500"), "1500");
        // a SIP user name keeps its dots
        assert_eq!(rule(PlusRule::Keep).apply(" john.doe "), "john.doe");
    }

    #[test]
    fn allowlist_v4_ranges_and_addresses() {
        let a = list(&["192.0.2.0/24", "198.51.100.7", "10.0.0.0/8"]).unwrap();
        assert!(a.contains(ip("192.0.2.1")));
        assert!(a.contains(ip("192.0.2.255")));
        assert!(!a.contains(ip("192.0.3.1")));
        assert!(a.contains(ip("198.51.100.7")));
        assert!(!a.contains(ip("198.51.100.8")));
        assert!(a.contains(ip("10.200.1.1")));
        assert!(!a.contains(ip("2001:db8::1")));
        assert!(list(&["0.0.0.0/0"]).unwrap().contains(ip("203.0.113.9")));
        assert!(!list(&[]).unwrap().contains(ip("203.0.113.9")));
    }

    #[test]
    fn allowlist_v6_and_mapped_addresses() {
        let a = list(&["2001:db8::/32", "fe80::1"]).unwrap();
        assert!(a.contains(ip("2001:db8:ffff::1")));
        assert!(!a.contains(ip("2001:db9::1")));
        assert!(a.contains(ip("fe80::1")));
        assert!(!a.contains(ip("fe80::2")));
        assert!(!a.contains(ip("192.0.2.1")));
        assert!(list(&["::/0"]).unwrap().contains(ip("::1")));
        assert!(
            list(&["::/0"]).unwrap().contains(ip("192.0.2.1")),
            "an IPv6 range holds the mapped form of IPv4 addresses"
        );

        // a mapped address matches its IPv4 range, and a mapped range its IPv4 addresses
        let v4 = list(&["192.0.2.0/24"]).unwrap();
        assert!(v4.contains(ip("::ffff:192.0.2.10")));
        assert!(!v4.contains(ip("::ffff:192.0.3.10")));
        let mapped = list(&["::ffff:192.0.2.0/120"]).unwrap();
        assert!(mapped.contains(ip("192.0.2.10")));
        assert!(mapped.contains(ip("::ffff:192.0.2.10")));
        assert!(!mapped.contains(ip("192.0.3.10")));
    }

    #[test]
    fn allowlist_refuses_what_it_cannot_read() {
        let err = |e: &str| list(&[e]).unwrap_err().to_string();
        assert_eq!(
            err("192.0.2.7/24"),
            "inbound source \"192.0.2.7/24\": has bits set after the prefix; did you mean 192.0.2.0/24?"
        );
        assert!(
            err("192.0.2.0/33").contains("from 0 to 32"),
            "{}",
            err("192.0.2.0/33")
        );
        assert!(err("2001:db8::/129").contains("from 0 to 128"));
        assert!(err("2001:db8::1/32").contains("did you mean 2001:db8::/32?"));
        assert!(err("gw.example.net").contains("not an IPv4 or IPv6 address"));
        assert!(err("10.0.0.0/").contains("prefix length"));
        assert!(err("").contains("not an IPv4"));
    }

    #[test]
    fn empty_sources_mean_the_gateway_address_if_it_is_one() {
        let t = spec("a", "192.0.2.5");
        assert!(t.allowlist().unwrap().contains(ip("192.0.2.5")));
        assert!(!t.allowlist().unwrap().contains(ip("192.0.2.6")));
        let t6 = spec("b", "[2001:db8::5]");
        assert!(t6.allowlist().unwrap().contains(ip("2001:db8::5")));
        assert!(spec("c", "gw.example.net").allowlist().unwrap().is_empty());
        let listed = TrunkSpec {
            inbound_sources: vec!["198.51.100.0/24".into()],
            ..spec("d", "192.0.2.5")
        };
        assert!(
            !listed.allowlist().unwrap().contains(ip("192.0.2.5")),
            "listed sources replace the gateway address"
        );
    }

    #[test]
    fn validation_errors_name_the_trunk_and_the_problem() {
        let check = |t: TrunkSpec| t.validate().unwrap_err().to_string();
        assert!(spec("ok_1.a-b", "gw.example.net").validate().is_ok());
        assert!(spec("v6", "2001:db8::1").validate().is_ok());
        assert_eq!(
            check(spec("", "h")),
            "trunk name \"\" must be non-empty and use only letters, digits, '_', '.' and '-'"
        );
        assert!(check(spec("a b", "h")).starts_with("trunk name \"a b\""));
        assert_eq!(check(spec("t", "")), "trunk \"t\": host must not be empty");
        assert!(check(spec("t", "gw:5061")).contains("put the port in `port`"));
        assert!(check(spec("t", "gw example")).contains("not a host name"));
        assert_eq!(
            check(TrunkSpec {
                port: 0,
                ..spec("t", "h")
            }),
            "trunk \"t\": port must not be 0"
        );
        for cps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                check(TrunkSpec {
                    cps,
                    ..spec("t", "h")
                })
                .starts_with("trunk \"t\": cps must be a finite number above 0")
            );
        }
        assert_eq!(
            check(TrunkSpec {
                username: Some("u".into()),
                ..spec("t", "h")
            }),
            "trunk \"t\": set both username and password, or neither"
        );
        assert!(
            check(TrunkSpec {
                password: Some("p".into()),
                ..spec("t", "h")
            })
            .contains("both username and password")
        );
        assert_eq!(
            check(TrunkSpec {
                inbound_sources: vec!["10.0.0.0/40".into()],
                ..spec("t", "h")
            }),
            "trunk \"t\": inbound_sources entry \"10.0.0.0/40\": prefix length \"40\" is not a number from 0 to 32"
        );
        assert!(
            check(TrunkSpec {
                dial: NumberRule {
                    plus: PlusRule::Keep,
                    rewrite: vec![Rewrite {
                        prefix: String::new(),
                        replace: "9".into()
                    }]
                },
                ..spec("t", "h")
            })
            .contains("a rewrite in `dial` has an empty prefix")
        );
    }

    #[test]
    fn trunks_pick_by_source_name_and_default() {
        let a = TrunkSpec {
            inbound_sources: vec!["192.0.2.0/24".into()],
            ..spec("a", "gw-a.example.net")
        };
        let b = TrunkSpec {
            default: true,
            inbound_sources: vec!["192.0.2.0/25".into(), "2001:db8::/32".into()],
            ..spec("b", "gw-b.example.net")
        };
        let c = spec("c", "198.51.100.1");
        let trunks = Trunks::new(vec![a, b, c]).unwrap();
        assert_eq!(trunks.len(), 3);
        let name = |t: Option<&TrunkSpec>| t.map(|t| t.name.clone());
        assert_eq!(
            name(trunks.by_source(ip("192.0.2.1"))),
            Some("a".into()),
            "first wins"
        );
        assert_eq!(name(trunks.by_source(ip("2001:db8::9"))), Some("b".into()));
        assert_eq!(name(trunks.by_source(ip("198.51.100.1"))), Some("c".into()));
        assert_eq!(
            name(trunks.by_source(ip("::ffff:198.51.100.1"))),
            Some("c".into())
        );
        assert_eq!(trunks.by_source(ip("203.0.113.1")), None);
        assert_eq!(name(trunks.default_trunk()), Some("b".into()));
        assert_eq!(name(trunks.get("c")), Some("c".into()));
        assert!(trunks.get("d").is_none());
        assert_eq!(
            trunks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );

        let unmarked = Trunks::new(vec![spec("x", "h"), spec("y", "h")]).unwrap();
        assert_eq!(
            name(unmarked.default_trunk()),
            Some("x".into()),
            "the first"
        );
        let none = Trunks::new(vec![]).unwrap();
        assert!(none.is_empty() && none.default_trunk().is_none());
    }

    #[test]
    fn trunks_refuse_duplicates_two_defaults_and_invalid_members() {
        let err = |specs| Trunks::new(specs).unwrap_err().to_string();
        assert_eq!(
            err(vec![spec("a", "h"), spec("a", "i")]),
            "two trunks are named \"a\"; names must be unique"
        );
        let d = |n: &str| TrunkSpec {
            default: true,
            ..spec(n, "h")
        };
        assert_eq!(
            err(vec![d("a"), spec("b", "h"), d("c")]),
            "trunks \"a\" and \"c\" are both marked default; at most one may be"
        );
        assert_eq!(
            err(vec![spec("a", "h"), spec("b", "")]),
            "trunk \"b\": host must not be empty"
        );
    }

    #[test]
    fn debug_and_redacted_hide_the_password() {
        let t = TrunkSpec {
            username: Some("acct".into()),
            password: Some("s3cret-pw".into()),
            ..spec("t", "h")
        };
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("s3cret-pw"), "{dbg}");
        assert!(
            dbg.contains("password: Some(\"***\")") && dbg.contains("acct"),
            "{dbg}"
        );
        assert!(!format!("{t:#?}").contains("s3cret-pw"));
        let r = t.redacted();
        assert_eq!(r.password.as_deref(), Some("***"));
        assert_eq!(r.username.as_deref(), Some("acct"));
        assert!(!toml::to_string(&r).unwrap().contains("s3cret-pw"));
        assert_eq!(spec("t", "h").redacted().password, None);
    }

    #[test]
    fn toml_defaults_and_round_trip() {
        #[derive(Deserialize, Serialize)]
        struct File {
            trunks: Vec<TrunkSpec>,
        }
        let text = r#"
            [[trunks]]
            name = "carrier"
            host = "sip.carrier.example"
            transport = "tcp"
            username = "acct"
            password = "pw"
            realm = "carrier.example"
            cps = 2.5
            max_channels = 30
            inbound_sources = ["192.0.2.0/24", "2001:db8::/32"]
            default = true
            caller_id = { plus = "strip" }
            dial = { plus = "strip", rewrite = [{ prefix = "+855", replace = "0" }] }
            inbound = { rewrite = [{ prefix = "0", replace = "855" }] }

            [[trunks]]
            name = "pbx"
            host = "10.0.0.2"
        "#;
        let file: File = toml::from_str(text).unwrap();
        let [carrier, pbx] = &file.trunks[..] else {
            panic!("two trunks expected")
        };
        assert_eq!(carrier.transport, TrunkTransport::Tcp);
        assert_eq!(carrier.port, 5060);
        assert_eq!(carrier.cps, 2.5);
        assert_eq!(carrier.dial.apply("+85512345678"), "012345678");
        assert_eq!(carrier.caller_id.apply("+15005550006"), "15005550006");
        assert_eq!(
            carrier.inbound.plus,
            PlusRule::Add,
            "inbound's plus defaults to add even when the table is given"
        );
        assert_eq!(carrier.inbound.apply("012345678"), "+85512345678");
        assert_eq!(pbx, &spec("pbx", "10.0.0.2"), "every other field defaults");
        assert_eq!(pbx.inbound, NumberRule::inbound_default());
        assert_eq!(pbx.dial, NumberRule::default());
        assert_eq!(
            (pbx.cps, pbx.max_channels, pbx.transport, pbx.default),
            (10.0, 100, TrunkTransport::Udp, false)
        );
        Trunks::new(file.trunks.clone()).unwrap();

        let again: File = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
        assert!(again.trunks == file.trunks);

        let unknown = "[[trunks]]\nname = \"a\"\nhost = \"h\"\npasword = \"x\"\n";
        let e = toml::from_str::<File>(unknown).err().unwrap().to_string();
        assert!(e.contains("pasword"), "{e}");
        let bad_plus = "[[trunks]]\nname = \"a\"\ndial = { plus = \"drop\" }\n";
        assert!(toml::from_str::<File>(bad_plus).is_err());
        let bad_inbound = "[[trunks]]\nname = \"a\"\ninbound = { plux = \"add\" }\n";
        assert!(toml::from_str::<File>(bad_inbound).is_err());
    }
}
