//! The egress policy: which addresses an http step may connect to.
//!
//! A tenant writes the URL an http step requests (or has a run's input
//! fill it in), so without a policy a step reaches whatever the node can:
//! loopback services such as etcd's HTTP gateway, the cluster's private
//! network, a cloud's metadata service at 169.254.169.254. Under
//! [`EgressPolicy::public_only`] a step may connect only to public
//! addresses, plus the networks and host names the operator allows (for
//! every tenant, or for one).
//!
//! The check is made where the connection is made, on the addresses a name
//! resolves to ([`Resolver`], reqwest's resolver for every connection,
//! redirects included), so a name that resolves to a public address when
//! checked and a private one when used (DNS rebinding) cannot slip
//! through. URLs whose host is an address are checked before sending
//! ([`EgressPolicy::check_url`]), since no resolver sees them. Proxies from
//! the environment are not used: a proxy would make the connection instead.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Something an operator allows besides public addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Every address in a network (`10.1.0.0/16`, `127.0.0.1/32`), any
    /// port.
    Network(IpNet),
    /// One port of one address (`127.0.0.1:8080`, `[::1]:8080`), for URLs
    /// that name the address itself: the narrowest allowance, which leaves
    /// the other services on that address (etcd, say) out of reach.
    Socket(SocketAddr),
    /// A host name, whatever it resolves to (`erp.internal`).
    Host(String),
}

impl std::str::FromStr for Allowed {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Ok(Allowed::Socket(socket));
        }
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Allowed::Network(net.trunc()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Allowed::Network(IpNet::from(ip)));
        }
        let host = text.trim_end_matches('.').to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Ok(Allowed::Host(host))
        } else {
            Err(format!(
                "{text:?} is neither a network (10.1.0.0/16), an address (with or without a port) nor a host name"
            ))
        }
    }
}

/// Which addresses http steps may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Any address at all (the local `isoflow run`, whose demo talks to
    /// loopback).
    anywhere: bool,
    /// Allowed for every tenant.
    everyone: Vec<Allowed>,
    /// Allowed for one tenant, besides `everyone`.
    tenants: HashMap<String, Vec<Allowed>>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        EgressPolicy::public_only()
    }
}

impl EgressPolicy {
    /// Public addresses only, for every tenant.
    pub fn public_only() -> EgressPolicy {
        EgressPolicy {
            anywhere: false,
            everyone: Vec::new(),
            tenants: HashMap::new(),
        }
    }

    /// No check at all: for a process that runs only its own user's
    /// definitions (the local CLI), never for a server.
    pub fn anywhere() -> EgressPolicy {
        EgressPolicy {
            anywhere: true,
            ..EgressPolicy::public_only()
        }
    }

    /// Also allows `allowed` to every tenant.
    pub fn allow(mut self, allowed: impl IntoIterator<Item = Allowed>) -> EgressPolicy {
        self.everyone.extend(allowed);
        self
    }

    /// Also allows `allowed` to `tenant`.
    pub fn allow_tenant(
        mut self,
        tenant: impl Into<String>,
        allowed: impl IntoIterator<Item = Allowed>,
    ) -> EgressPolicy {
        self.tenants
            .entry(tenant.into())
            .or_default()
            .extend(allowed);
        self
    }

    /// Tenants with allowances of their own.
    pub(crate) fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// What `tenant` (`None`: any tenant without allowances of its own)
    /// may reach.
    pub(crate) fn scope(&self, tenant: Option<&str>) -> Scope {
        let mut allowed = self.everyone.clone();
        if let Some(own) = tenant.and_then(|t| self.tenants.get(t)) {
            allowed.extend(own.iter().cloned());
        }
        Scope(Arc::new(ScopeInner {
            anywhere: self.anywhere,
            allowed,
        }))
    }
}

/// One tenant's view of the policy: checks addresses and names.
#[derive(Debug, Clone)]
pub(crate) struct Scope(Arc<ScopeInner>);

#[derive(Debug)]
struct ScopeInner {
    anywhere: bool,
    allowed: Vec<Allowed>,
}

impl Scope {
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.0.allowed.iter().any(|a| match a {
            Allowed::Host(h) => h.eq_ignore_ascii_case(host),
            Allowed::Network(_) | Allowed::Socket(_) => false,
        })
    }

    /// `Err` with the reason when `ip` may not be connected to (on a port
    /// not known here: a resolved name's).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        self.check_address(ip, None)
    }

    fn check_address(&self, ip: IpAddr, port: Option<u16>) -> Result<(), Refused> {
        if self.0.anywhere {
            return Ok(());
        }
        let Some(kind) = special(ip) else {
            return Ok(());
        };
        let allowed = self.0.allowed.iter().any(|a| match a {
            Allowed::Network(net) => net.contains(&canonical(ip)),
            Allowed::Socket(socket) => {
                canonical(socket.ip()) == canonical(ip) && Some(socket.port()) == port
            }
            Allowed::Host(_) => false,
        });
        if allowed {
            Ok(())
        } else {
            Err(Refused {
                host: None,
                ip,
                kind,
            })
        }
    }

    /// Checks a URL's host when it is an address (names are checked when
    /// resolved).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        // The URL parser has already turned every spelling of an address
        // (`2130706433`, `0x7f.1`) into its canonical text.
        let host = url.host_str().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match host.parse::<IpAddr>() {
            Ok(ip) => self.check_address(ip, url.port_or_known_default()),
            Err(_) => Ok(()),
        }
    }
}

/// A connection the policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    host: Option<String>,
    ip: IpAddr,
    kind: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{host} resolves to {}, {}", self.ip, self.kind)?,
            None => write!(f, "{} is {}", self.ip, self.kind)?,
        }
        f.write_str(
            ", which the node's egress policy does not allow (an operator can allow it in [egress])",
        )
    }
}

impl std::error::Error for Refused {}

/// An IPv4 address inside an IPv6 one (mapped, NAT64, 6to4), as itself:
/// `::ffff:127.0.0.1` is loopback.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let last = || Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d.
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last()),
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(last()),
        // NAT64 64:ff9b::a.b.c.d.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last()),
        // 6to4 2002:aabb:ccdd::.
        [0x2002, _, _, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// What kind of non-public address `ip` is; `None` for a public one.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "an unspecified address",
        (127, ..) => "a loopback address",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "a private address",
        (169, 254, _) => "a link-local address (cloud metadata lives there)",
        (100, 64..=127, _) => "a carrier-grade NAT address",
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, ..) => "a multicast address",
        (240..=255, ..) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "an unspecified address",
        [0, 0, 0, 0, 0, 0, 0, 1] => "a loopback address",
        [x, ..] if x & 0xfe00 == 0xfc00 => "a private (unique local) address",
        [x, ..] if x & 0xffc0 == 0xfe80 => "a link-local address",
        [x, ..] if x & 0xffc0 == 0xfec0 => "a site-local address",
        [x, ..] if x & 0xff00 == 0xff00 => "a multicast address",
        [0x2001, 0xdb8, ..] => "a documentation address",
        [0x64, 0xff9b, 1, ..] => "a local NAT64 address",
        // Teredo tunnels to an address the policy cannot see.
        [0x2001, 0, ..] => "a Teredo address",
        // The rest of ::/8 besides what `canonical` unwrapped.
        [x, ..] if x & 0xff00 == 0 => "a reserved address",
        [0x0100, 0, 0, 0, ..] => "a discard-only address",
        _ => return None,
    })
}

/// reqwest's resolver under a [`Scope`]: resolves with the system's
/// resolver, then keeps only the addresses the scope allows, and refuses
/// the name when none is left.
#[derive(Debug, Clone)]
pub(crate) struct Resolver {
    scope: Scope,
}

impl Resolver {
    pub fn new(scope: Scope) -> Resolver {
        Resolver { scope }
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let scope = self.scope.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if scope.0.anywhere || scope.host_allowed(&host) {
                return Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs);
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match scope.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(mut why)) => {
                    why.host = Some(host);
                    Err(Box::new(why) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_special_range_is_refused_in_every_form() {
        let scope = EgressPolicy::public_only().scope(None);
        for refused in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.10",
            "198.18.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2001:0::1",
            "64:ff9b:1::a9fe:a9fe",
            "::ffff:0:7f00:1",
            "0:1::1",
        ] {
            assert!(scope.check_ip(ip(refused)).is_err(), "{refused}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.253.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "2002:0101:0101::",
        ] {
            assert_eq!(scope.check_ip(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn allowances_apply_to_everyone_or_one_tenant() {
        let policy = EgressPolicy::public_only()
            .allow(["127.0.0.1/32".parse().unwrap()])
            .allow_tenant("acme", ["10.1.0.0/16".parse().unwrap()]);
        let acme = policy.scope(Some("acme"));
        let other = policy.scope(Some("other"));
        assert_eq!(acme.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(other.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(acme.check_ip(ip("10.1.9.9")), Ok(()));
        assert!(acme.check_ip(ip("10.2.0.1")).is_err());
        assert!(other.check_ip(ip("10.1.9.9")).is_err());
        assert!(acme.check_ip(ip("127.0.0.2")).is_err());
        // A mapped form of an allowed address is allowed too.
        assert_eq!(acme.check_ip(ip("::ffff:10.1.0.1")), Ok(()));
    }

    #[test]
    fn a_port_allowance_admits_that_port_of_that_address_only() {
        let scope = EgressPolicy::public_only()
            .allow(["127.0.0.1:8080".parse().expect("an allowance")])
            .scope(None);
        let check = |u: &str| scope.check_url(&reqwest::Url::parse(u).expect("a url"));
        assert_eq!(check("http://127.0.0.1:8080/orders"), Ok(()));
        assert!(check("http://127.0.0.1:2379/v3/kv/range").is_err(), "etcd");
        assert!(check("http://127.0.0.1/").is_err());
        // A name's port is not known where it resolves: not allowed.
        assert!(scope.check_ip(ip("127.0.0.1")).is_err());
    }

    #[test]
    fn allowances_parse_or_say_why_not() {
        assert_eq!(
            "10.1.2.3/16".parse::<Allowed>(),
            Ok(Allowed::Network("10.1.0.0/16".parse().unwrap()))
        );
        assert_eq!(
            "::1".parse::<Allowed>(),
            Ok(Allowed::Network("::1/128".parse().unwrap()))
        );
        assert_eq!(
            "ERP.internal.".parse::<Allowed>(),
            Ok(Allowed::Host("erp.internal".into()))
        );
        assert_eq!(
            "[::1]:8080".parse::<Allowed>(),
            Ok(Allowed::Socket("[::1]:8080".parse().unwrap()))
        );
        assert!("http://x".parse::<Allowed>().is_err());
        assert!("".parse::<Allowed>().is_err());
    }

    #[test]
    fn the_refusal_says_what_and_why() {
        let scope = EgressPolicy::public_only().scope(None);
        let url = reqwest::Url::parse("http://[::ffff:a9fe:a9fe]/latest/meta-data").unwrap();
        let why = scope.check_url(&url).unwrap_err().to_string();
        assert!(
            why.starts_with("::ffff:169.254.169.254 is a link-local address"),
            "{why}"
        );
        assert!(why.contains("egress policy"), "{why}");
        for spelling in ["http://2130706433/", "http://0x7f.1/", "http://127.1/"] {
            let url = reqwest::Url::parse(spelling).unwrap();
            assert!(scope.check_url(&url).is_err(), "{spelling}");
        }
        let named = reqwest::Url::parse("http://example.com/").unwrap();
        assert_eq!(
            scope.check_url(&named),
            Ok(()),
            "names wait for their addresses"
        );
    }
}
