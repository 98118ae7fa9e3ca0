//! Where an outbound leg goes: through a configured trunk (its number rules, credentials and
//! channels), or, for a `<Dial><Sip>` URI, straight to the URI's host under the egress policy.
//! [`Route::outgoing`] turns a route and a call into the INVITE the SIP stack sends.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use callflow_sip::rsip;
use callflow_sip::sdp::LocalMedia;
use callflow_sip::trunk::{TrunkSpec, TrunkTransport};
use callflow_sip::ua::{Auth, Outgoing};
use callflow_store::Call;

use crate::webhook::EgressPolicy;

/// Where an outbound leg is sent.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// Through a configured trunk.
    Trunk(TrunkSpec),
    /// A `<Sip>` URI, called as written at the address its host resolved to (checked against
    /// the egress policy when routed; the INVITE goes to that address, not a second lookup).
    SipUri {
        uri: String,
        address: SocketAddr,
        transport: TrunkTransport,
        /// Our host in the `From` URI.
        from_host: String,
    },
}

impl Route {
    /// The trunk whose channels the leg takes, if it goes through one.
    pub(crate) fn trunk(&self) -> Option<&TrunkSpec> {
        match self {
            Route::Trunk(t) => Some(t),
            Route::SipUri { .. } => None,
        }
    }

    /// A name for logs.
    pub(crate) fn name(&self) -> &str {
        match self {
            Route::Trunk(t) => &t.name,
            Route::SipUri { .. } => "sip-uri",
        }
    }

    /// The route of a `<Dial><Sip>` URI: its host resolved, every address allowed by `policy`.
    pub(crate) async fn sip_uri(
        uri: &str,
        policy: EgressPolicy,
        our_ip: IpAddr,
    ) -> Result<Route, String> {
        let target = SipTarget::parse(uri)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} has no address", target.host));
        }
        if let Some(refused) = addrs.iter().find(|a| !policy.allows(a.ip())) {
            return Err(format!(
                "the egress policy refuses {} ({}): private addresses are not allowed for <Sip>",
                target.host,
                refused.ip()
            ));
        }
        Ok(Route::SipUri {
            uri: uri.to_owned(),
            address: addrs[0],
            transport: target.transport,
            from_host: match our_ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            },
        })
    }

    /// The INVITE for `call` along this route, offering `media`.
    pub(crate) async fn outgoing(
        &self,
        call: &Call,
        media: LocalMedia,
    ) -> Result<Outgoing, String> {
        let ring_timeout = Duration::from_secs(call.instructions.timeout.clamp(1, 600) as u64);
        match self {
            Route::SipUri {
                uri,
                address,
                transport,
                from_host,
            } => Ok(Outgoing {
                gateway: *address,
                transport: sip_transport(*transport),
                uri: uri.clone(),
                from: format!("sip:{}@{from_host}", escape_user(&call.from_number)),
                auth: None,
                media,
                ring_timeout,
            }),
            Route::Trunk(trunk) => {
                let gateway: SocketAddr =
                    tokio::net::lookup_host((trunk.host.as_str(), trunk.port))
                        .await
                        .map_err(|e| {
                            format!(
                                "cannot resolve trunk {} host {}: {e}",
                                trunk.name, trunk.host
                            )
                        })?
                        .next()
                        .ok_or_else(|| {
                            format!("trunk {} host {} has no address", trunk.name, trunk.host)
                        })?;
                let host = if trunk.port == 5060 {
                    trunk.host.clone()
                } else {
                    format!("{}:{}", trunk.host, trunk.port)
                };
                let caller = trunk.caller_id.apply(&call.from_number);
                let auth = match (&trunk.username, &trunk.password) {
                    (Some(u), Some(p)) => Some(Auth {
                        username: u.clone(),
                        password: p.clone(),
                        realm: trunk.realm.clone(),
                    }),
                    _ => None,
                };
                Ok(Outgoing {
                    gateway,
                    transport: sip_transport(trunk.transport),
                    uri: format!(
                        "sip:{}@{host}",
                        escape_user(&trunk.dial.apply(&call.to_number))
                    ),
                    from: format!("sip:{}@{}", escape_user(&caller), trunk.from_host()),
                    auth,
                    media,
                    ring_timeout,
                })
            }
        }
    }
}

fn sip_transport(t: TrunkTransport) -> rsip::common::Transport {
    match t {
        TrunkTransport::Udp => rsip::common::Transport::Udp,
        TrunkTransport::Tcp => rsip::common::Transport::Tcp,
    }
}

/// Whether a `<Dial>` target is a SIP URI (else a number, through the trunk).
pub(crate) fn is_sip_uri(target: &str) -> bool {
    target
        .get(..4)
        .is_some_and(|s| s.eq_ignore_ascii_case("sip:"))
}

/// Where a `<Sip>` noun's URI says to call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SipTarget {
    host: String,
    port: u16,
    transport: TrunkTransport,
}

impl SipTarget {
    /// `sip:[user@]host[:port][;params]`; `transport=udp|tcp` is honoured, `sips:` and other
    /// transports are refused (no TLS here), and so is anything that could break the message.
    fn parse(uri: &str) -> Result<SipTarget, String> {
        let bad = |why: &str| format!("<Sip>{uri}</Sip>: {why}");
        if uri.len() > 512
            || uri
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>\"".contains(c))
        {
            return Err(bad("not a usable SIP URI"));
        }
        if !is_sip_uri(uri) {
            return Err(bad(
                "only sip: URIs can be dialled (sips: needs TLS, which callflow does not speak)",
            ));
        }
        let rest = &uri[4..];
        if rest.contains('?') {
            return Err(bad("URI headers (`?…`) cannot be sent in a request URI"));
        }
        let (addr, params) = rest.split_once(';').unwrap_or((rest, ""));
        let hostport = addr.rsplit_once('@').map_or(addr, |(_, h)| h);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
            None => 5060,
        };
        let mut transport = TrunkTransport::Udp;
        for param in params.split(';') {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if name.eq_ignore_ascii_case("transport") {
                transport = match value.to_ascii_lowercase().as_str() {
                    "udp" => TrunkTransport::Udp,
                    "tcp" => TrunkTransport::Tcp,
                    other => {
                        return Err(bad(&format!(
                            "transport {other} is not supported (udp or tcp)"
                        )));
                    }
                };
            }
        }
        Ok(SipTarget {
            host: host.to_owned(),
            port,
            transport,
        })
    }
}

/// Keeps a SIP URI user part to the characters RFC 3261 allows unescaped that numbers use.
fn escape_user(user: &str) -> String {
    user.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '*' | '#' | '-' | '.' | '_'))
        .map(|c| {
            if c == '#' {
                "%23".to_owned()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_targets_parse_and_refuse_what_cannot_be_called() {
        let t = SipTarget::parse("sip:alice@example.org").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("example.org", 5060, TrunkTransport::Udp)
        );
        let t = SipTarget::parse("SIP:+1555@10.0.0.2:5070;transport=TCP;x=y").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("10.0.0.2", 5070, TrunkTransport::Tcp)
        );
        let t = SipTarget::parse("sip:[2001:db8::1]:5062").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("2001:db8::1", 5062));
        for bad in [
            "sips:alice@example.org",
            "tel:+15551234",
            "sip:alice@",
            "sip:alice@host:0",
            "sip:alice@host:99999",
            "sip:alice@host;transport=tls",
            "sip:alice@host\r\nVia: x",
            "sip:al ice@host",
            "sip:<alice@host>",
            "sip:bob@pbx.example?X-Header=1",
        ] {
            assert!(SipTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_keep_only_what_a_uri_user_may_hold() {
        assert_eq!(escape_user("+1 555#"), "+1555%23");
        assert!(is_sip_uri("SIP:bob@host") && !is_sip_uri("+1555"));
    }

    #[tokio::test]
    async fn a_sip_uri_route_is_called_as_written_at_the_checked_address() {
        let allow = EgressPolicy {
            allow_private: true,
        };
        let ip: IpAddr = "::1".parse().unwrap();
        let route = Route::sip_uri("sip:bob@127.0.0.1:5070", allow, ip)
            .await
            .unwrap();
        assert!(route.trunk().is_none());
        let call = crate::test_support::call(callflow_store::CallStatus::Queued, "completed");
        let media = LocalMedia {
            ip,
            port: 4000,
            session_id: 1,
            session_version: 1,
        };
        let out = route.outgoing(&call, media).await.unwrap();
        assert_eq!(out.uri, "sip:bob@127.0.0.1:5070");
        assert_eq!(out.gateway, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(out.from, "sip:+15552@[::1]");
        let deny = EgressPolicy {
            allow_private: false,
        };
        let err = Route::sip_uri("sip:bob@127.0.0.1", deny, ip)
            .await
            .unwrap_err();
        assert!(err.contains("egress policy"), "{err}");
    }
}
