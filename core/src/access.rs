//! Who may use a key for what: scopes (method + path prefix) and client-IP allow-lists.

use core::fmt;
use std::net::IpAddr;

use crate::json::write::Quoted;

/// An IPv4 or IPv6 network, `addr/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{} is not an IP address or CIDR", Quoted(text)))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{}: prefix length must be 0 to {max}", Quoted(text)))?,
        };
        Ok(Self {
            network,
            prefix_len,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen on a dual-stack listener arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let whole = bits / 8;
    if a.get(..whole) != b.get(..whole) {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    match (a.get(whole), b.get(whole)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// One thing a key may do: any of `methods` (all when empty) on paths under `path_prefix` (all when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub methods: Vec<String>,
    pub path_prefix: Option<String>,
}

impl Scope {
    pub fn validate(methods: &[String], path_prefix: Option<&str>) -> Result<Self, String> {
        let mut upper = Vec::with_capacity(methods.len());
        for m in methods {
            if m.is_empty() || m.len() > 20 || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("scope method {} is not an HTTP method", Quoted(m)));
            }
            upper.push(m.to_ascii_uppercase());
        }
        if let Some(prefix) = path_prefix {
            if !prefix.starts_with('/') || prefix.len() > 1024 || prefix.contains(['?', '#']) {
                return Err(format!(
                    "scope path_prefix {} must start with '/' and hold no query",
                    Quoted(prefix)
                ));
            }
        }
        Ok(Self {
            methods: upper,
            path_prefix: path_prefix.map(str::to_owned),
        })
    }

    /// Whether the request is inside this scope. Prefixes match whole path
    /// segments: `/read` covers `/read` and `/read/x`, not `/readme`.
    pub fn permits(&self, method: &str, path: &str) -> bool {
        let method_ok =
            self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let path_ok = match &self.path_prefix {
            None => true,
            Some(prefix) if prefix.ends_with('/') => path.starts_with(prefix.as_str()),
            Some(prefix) => {
                path == prefix
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        };
        method_ok && path_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_v4_v6_and_mapped_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        let odd = Cidr::parse("192.168.1.128/25").unwrap();
        assert!(odd.contains(ip("192.168.1.200")));
        assert!(!odd.contains(ip("192.168.1.127")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.2.3")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0/8", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_match_methods_and_whole_path_segments() {
        let read = Scope::validate(&["get".into()], Some("/read")).unwrap();
        assert!(read.permits("GET", "/read"));
        assert!(read.permits("GET", "/read/x?y=1"));
        assert!(read.permits("GET", "/read?y=1"));
        assert!(!read.permits("GET", "/readme"));
        assert!(!read.permits("POST", "/read"));
        let any = Scope::validate(&[], None).unwrap();
        assert!(any.permits("DELETE", "/anything"));
        let slash = Scope::validate(&[], Some("/v1/")).unwrap();
        assert!(slash.permits("GET", "/v1/x"));
        assert!(!slash.permits("GET", "/v1"));
        assert!(Scope::validate(&["G E T".into()], None).is_err());
        assert!(Scope::validate(&[], Some("read")).is_err());
        assert!(Scope::validate(&[], Some("/a?b")).is_err());
    }
}
