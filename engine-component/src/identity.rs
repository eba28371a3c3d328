//! Identities and IP text forms.
//!
//! An identity is the lower-cased Service UID (inbound) or egress label value (outbound); both
//! kinds share one key space. IP strings are canonicalised to Go's `netip.Addr.String()` form
//! (lower-case, zero-compressed IPv6); strings that do not parse are kept verbatim.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// A lower-cased service identity. All identity sets are case-insensitive because every
/// identity is lower-cased on construction.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Identity(String);

impl Identity {
    pub fn new(raw: &str) -> Identity {
        Identity(raw.to_ascii_lowercase())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The inbound public IP name, `<identity>-pip`.
    pub fn pip_name(&self) -> String {
        format!("{}-pip", self.0)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Identity {
    fn from(s: &str) -> Identity {
        Identity::new(s)
    }
}

/// Parses an IP address (no zones, no surrounding whitespace).
pub fn parse_ip(raw: &str) -> Option<IpAddr> {
    raw.parse::<IpAddr>().ok()
}

/// Canonical text of an IP (Go `netip` form); an unparsable string is kept verbatim.
pub fn canonical(raw: &str) -> String {
    match parse_ip(raw) {
        Some(ip) => ip.to_string(),
        None => raw.to_string(),
    }
}

/// The IP family of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

pub fn family(ip: &IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// Among `node_ips`, the same-family IP for `family`: malformed entries are skipped; if several
/// match, the lexicographically smallest canonical string wins (order-independent).
pub fn pick_same_family<S: AsRef<str>>(node_ips: &[S], fam: Family) -> Option<String> {
    node_ips
        .iter()
        .filter_map(|s| parse_ip(s.as_ref()))
        .filter(|ip| family(ip) == fam)
        .map(|ip| ip.to_string())
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_lower_cased() {
        assert_eq!(Identity::new("ABC-Def").as_str(), "abc-def");
        assert_eq!(Identity::new("X").pip_name(), "x-pip");
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical("10.0.0.1"), "10.0.0.1");
        assert_eq!(canonical("FD00:0:0:0::0001"), "fd00::1");
        assert_eq!(canonical("2001:DB8:0000:0000:0000:0000:0000:0001"), "2001:db8::1");
        assert_eq!(canonical("::ffff:10.1.2.3"), "::ffff:10.1.2.3");
        assert_eq!(canonical("not-an-ip"), "not-an-ip");
        assert_eq!(canonical("pod.example.com"), "pod.example.com");
    }

    #[test]
    fn s115_same_family_pick_is_order_independent_and_skips_malformed() {
        let a = ["10.0.0.9", "garbage", "10.0.0.10", "fd00::5", "FD00::4"];
        let b = ["FD00::4", "10.0.0.10", "fd00::5", "garbage", "10.0.0.9"];
        assert_eq!(pick_same_family(&a, Family::V4), Some("10.0.0.10".to_string()));
        assert_eq!(pick_same_family(&b, Family::V4), Some("10.0.0.10".to_string()));
        assert_eq!(pick_same_family(&a, Family::V6), Some("fd00::4".to_string()));
        assert_eq!(pick_same_family(&["10.0.0.1"], Family::V6), None);
        assert_eq!(pick_same_family::<&str>(&[], Family::V4), None);
    }
}
