//! Where the control plane's own outgoing requests (webhook deliveries) may go.
//!
//! A webhook URL is chosen by the admin but followed by the server, from
//! inside the network it runs in. Pointed at 127.0.0.1, 10.0.0.0/8 or
//! 169.254.169.254 (a cloud's metadata service), a delivery would be a
//! request forged on the server's behalf (SSRF). So such targets are refused
//! twice: when the URL is set, by what its host literally is
//! ([`literal_target`]), and when a delivery connects, by every address its
//! name resolves to at that moment ([`GuardedResolver`]), so that a name
//! which resolved to a public address when it was set and to an internal one
//! later (DNS rebinding) is still refused. [`Targets::Any`]
//! (`CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true`) turns both off, for
//! receivers on a private network, and for the tests' receivers on loopback.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which addresses webhooks may be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Targets {
    /// Public addresses only: the default.
    #[default]
    PublicOnly,
    /// Any address, loopback and private networks included.
    Any,
}

/// The environment variable (and, as `--webhook-allow-private-targets`, the
/// flag) that allows internal targets; named in refusals so the admin knows
/// the way out.
pub const ALLOW_PRIVATE_ENV: &str = "CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS";

/// Why `ip` is no place to send a webhook to (`"loopback"`, `"private"`, …),
/// or `None` for a public address.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        // 0.0.0.0/8, "this network": Linux connects 0.0.0.0 to the local host.
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared (CGNAT)",
        (169, 254, _) => "link-local",
        (224..=239, _, _) => "multicast",
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => "broadcast",
        // IETF protocol assignments, benchmarking, and the class E rest.
        (192, 0, 0) | (198, 18..=19, _) | (240..=255, _, _) => "reserved",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let segments = ip.segments();
    // An IPv4 address written as IPv6 goes where the IPv4 one would:
    // mapped (::ffff:a.b.c.d), compatible (::a.b.c.d, deprecated but still
    // parsed), NAT64's well-known prefix (64:ff9b::a.b.c.d) and its
    // local-use one (64:ff9b:1::/48, RFC 8215). The tunnels carry one too:
    // 6to4 (2002:AABB:CCDD::/48, RFC 3056) to a.b.c.d through a relay, and
    // Teredo (2001:0::/32, RFC 4380) to its client, whose address is the
    // last 32 bits inverted.
    let octets = ip.octets();
    let embedded = match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 1, _, _, _, _, _] => {
            let [.., a, b, c, d] = octets;
            Some(Ipv4Addr::new(a, b, c, d))
        }
        [0x2002, ..] => Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5])),
        [0x2001, 0, ..] => {
            let [.., a, b, c, d] = octets;
            Some(Ipv4Addr::new(!a, !b, !c, !d))
        }
        _ => None,
    };
    if let Some(v4) = embedded {
        return forbidden_v4(v4);
    }
    let first = segments[0];
    Some(match first {
        0xfc00..=0xfdff => "private",
        0xfe80..=0xfebf => "link-local",
        // Site-local, deprecated, still routed inside some networks.
        0xfec0..=0xfeff => "private",
        0xff00..=0xffff => "multicast",
        0x2001 if segments[1] == 0x0db8 => "documentation",
        // 100::/64, the discard prefix.
        0x0100 if segments[1..4] == [0, 0, 0] => "reserved",
        _ => return None,
    })
}

/// Why a webhook may not go to `url` as written, under `targets`: its host
/// is an address [`forbidden`] refuses, or `localhost` or a name under it
/// (which resolvers answer with loopback without asking DNS). A name is not
/// resolved here: what it resolves to when a delivery connects is what counts.
pub fn literal_target(url: &reqwest::Url, targets: Targets) -> Result<(), String> {
    address_target(url, targets)?;
    let Some(host) = url.host_str().filter(|_| targets == Targets::PublicOnly) else {
        return Ok(());
    };
    let name = host.trim_end_matches('.');
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(format!("{host} is a loopback name"));
    }
    Ok(())
}

/// Why a webhook may not go to `url` under `targets` when its host is an
/// address, which a delivery connects to without resolving anything, so
/// [`GuardedResolver`] never sees it. A name passes: the resolver judges it.
pub fn address_target(url: &reqwest::Url, targets: Targets) -> Result<(), String> {
    let Some(host) = url.host_str().filter(|_| targets == Targets::PublicOnly) else {
        return Ok(());
    };
    // The URL parser has already normalised the host: IPv4 in any notation
    // (`2130706433`, `0x7f.1`) to dotted decimal, names to lower case, and
    // IPv6 to its compressed form in brackets.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>().ok().and_then(forbidden) {
        Some(why) => Err(format!("{bare} is {} {why} address", article(why))),
        None => Ok(()),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A name that resolved to an address webhooks may not go to.
#[derive(Debug)]
pub struct ForbiddenTarget {
    pub host: String,
    pub address: IpAddr,
    pub why: &'static str,
}

impl fmt::Display for ForbiddenTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resolves to {}, {} {} address",
            self.host,
            self.address,
            article(self.why),
            self.why
        )
    }
}

impl std::error::Error for ForbiddenTarget {}

/// The system's resolver, checked: a name any of whose addresses is
/// [`forbidden`] fails to resolve, so the client never connects to it. It
/// runs on every connection the client opens, after which the socket goes to
/// exactly the addresses checked: nothing is resolved twice, so nothing can
/// change in between.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // Any, not all: the client may try every address in turn.
            if let Some((address, why)) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip()).map(|why| (a.ip(), why)))
            {
                let refused = ForbiddenTarget { host, address, why };
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(text: &str) -> Option<&'static str> {
        forbidden(text.parse().unwrap())
    }

    #[test]
    fn every_internal_ipv4_range_is_refused_up_to_its_edges() {
        for (ip, expected) in [
            ("0.0.0.0", Some("unspecified")),
            ("0.255.255.255", Some("unspecified")),
            ("1.0.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.0", Some("loopback")),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.255", Some("loopback")),
            ("128.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some("private")),
            ("10.255.255.255", Some("private")),
            ("11.0.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.168.0.0", Some("private")),
            ("192.168.255.255", Some("private")),
            ("192.169.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some("shared (CGNAT)")),
            ("100.127.255.255", Some("shared (CGNAT)")),
            ("100.128.0.0", None),
            ("169.253.255.255", None),
            ("169.254.0.0", Some("link-local")),
            ("169.254.169.254", Some("link-local")),
            ("169.254.255.255", Some("link-local")),
            ("169.255.0.0", None),
            ("223.255.255.255", None),
            ("224.0.0.0", Some("multicast")),
            ("239.255.255.255", Some("multicast")),
            ("240.0.0.0", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("255.255.255.255", Some("broadcast")),
            ("192.0.0.8", Some("reserved")),
            ("198.17.255.255", None),
            ("198.18.0.0", Some("reserved")),
            ("198.19.255.255", Some("reserved")),
            ("198.20.0.0", None),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.1", Some("documentation")),
            ("203.0.113.1", Some("documentation")),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
        ] {
            assert_eq!(why(ip), expected, "{ip}");
        }
    }

    #[test]
    fn every_internal_ipv6_range_is_refused_and_ipv4_inside_ipv6_too() {
        for (ip, expected) in [
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            // ::/96 but for those two is IPv4-compatible: 0.0.0.2.
            ("::2", Some("unspecified")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:7f00:1", Some("loopback")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:0.0.0.0", Some("unspecified")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            ("::192.168.1.1", Some("private")),
            ("::8.8.8.8", None),
            ("64:ff9b::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::7f00:1", Some("loopback")),
            ("64:ff9b:1::808:808", None),
            // 6to4 of 127.0.0.1, 10.1.2.3, 169.254.169.254; of 8.8.8.8.
            ("2002:7f00:1::", Some("loopback")),
            ("2002:a01:203::1", Some("private")),
            ("2002:a9fe:a9fe::", Some("link-local")),
            ("2002:808:808::1", None),
            // Teredo, the client's address inverted: 127.0.0.1; 192.168.0.1; 8.8.8.8.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some("loopback")),
            ("2001:0:4136:e378::3f57:fffe", Some("private")),
            ("2001:0:4136:e378::f7f7:f7f7", None),
            ("fbff:ffff::", None),
            ("fc00::", Some("private")),
            ("fd12:3456::1", Some("private")),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("private")),
            ("fe00::", None),
            ("fe7f:ffff::", None),
            ("fe80::", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("febf:ffff::", Some("link-local")),
            ("fec0::1", Some("private")),
            ("ff00::", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("100::1", Some("reserved")),
            ("100:0:0:1::", None),
            ("2001:4860:4860::8888", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(why(ip), expected, "{ip}");
        }
    }

    fn literal(url: &str) -> Result<(), String> {
        literal_target(&reqwest::Url::parse(url).unwrap(), Targets::PublicOnly)
    }

    #[test]
    fn literal_hosts_are_refused_in_every_notation_names_are_left_to_delivery() {
        for url in [
            "http://127.0.0.1/hook",
            "http://127.1/hook",
            "http://2130706433/hook",
            "http://0x7f.0.0.1/hook",
            "http://0177.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://[::ffff:a9fe:a9fe]/latest",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:8080/",
            "http://10.0.0.5/",
            "http://172.16.0.1/",
            "http://192.168.1.10/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://localhost/",
            "http://LOCALHOST:8080/",
            "http://localhost./",
            "http://api.localhost/",
        ] {
            assert!(literal(url).is_err(), "{url}");
        }
        assert_eq!(
            literal("http://[::1]/").unwrap_err(),
            "::1 is a loopback address"
        );
        assert_eq!(
            literal("http://169.254.169.254/").unwrap_err(),
            "169.254.169.254 is a link-local address"
        );
        assert_eq!(
            literal("http://0.0.0.0/").unwrap_err(),
            "0.0.0.0 is an unspecified address"
        );
        for url in [
            "http://172.15.255.255/",
            "http://172.32.0.1/",
            "http://8.8.8.8/hook",
            "http://[2001:4860:4860::8888]/",
            "https://billing.example.com/hooks",
            "http://localhost.example.com/",
            "http://mylocalhost/",
            "http://billing.internal:8080/",
        ] {
            assert_eq!(literal(url), Ok(()), "{url}");
        }
        let any = reqwest::Url::parse("http://127.0.0.1/").unwrap();
        assert_eq!(literal_target(&any, Targets::Any), Ok(()));
        assert_eq!(address_target(&any, Targets::Any), Ok(()));
        // At delivery, names are the resolver's to judge.
        let named = reqwest::Url::parse("http://localhost:8080/").unwrap();
        assert_eq!(address_target(&named, Targets::PublicOnly), Ok(()));
        assert!(address_target(&any, Targets::PublicOnly).is_err());
    }

    #[tokio::test]
    async fn a_name_is_refused_when_it_resolves_to_a_forbidden_address() {
        // `localhost` resolves from the hosts file, without DNS.
        let name: Name = "localhost".parse().unwrap();
        let refused = GuardedResolver
            .resolve(name)
            .await
            .err()
            .expect("localhost is refused");
        let refused = refused
            .downcast_ref::<ForbiddenTarget>()
            .expect("a ForbiddenTarget");
        assert_eq!(refused.why, "loopback");
        assert!(refused.address.is_loopback(), "{refused}");
        assert!(
            refused.to_string().starts_with("localhost resolves to "),
            "{refused}"
        );
    }
}
