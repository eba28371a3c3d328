//! Identities and IP text forms.
//!
//! An identity is the lower-cased Service UID (inbound) or egress label value (outbound); both
//! kinds share one key space. IP strings are canonicalised to Go's `netip.Addr.String()` form
//! (lower-case, zero-compressed IPv6); strings that do not parse are kept verbatim.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A lower-cased service identity. All identity sets are case-insensitive because every
/// identity is lower-cased on construction. The text is shared: an identity sits in a dozen
/// indexes per service and in every address entry of it, and a clone is a reference count, not
/// a copy (guest memory, issue 15). Serialised as its string.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(Arc<str>);

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Identity, D::Error> {
        // Kept verbatim, as a snapshot wrote it (identities are lower-cased on construction).
        Ok(Identity(Arc::from(String::deserialize(d)?)))
    }
}

impl Identity {
    pub fn new(raw: &str) -> Identity {
        if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Identity(Arc::from(raw.to_ascii_lowercase()))
        } else {
            Identity(Arc::from(raw))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The inbound public IP name, `<identity>-pip` (also the egress IPv4 public IP).
    pub fn pip_name(&self) -> String {
        format!("{}-pip", self.0)
    }
    /// The egress IPv6 public IP name, `<identity>-pip-v6`.
    pub fn pip_v6_name(&self) -> String {
        format!("{}-pip-v6", self.0)
    }
    /// The RP-owned default outbound NAT gateway: never managed, tracked or deleted.
    pub fn is_reserved(&self) -> bool {
        &*self.0 == RESERVED_IDENTITY
    }
    /// Checks every Azure name an inbound service of this identity gives (the load balancer and
    /// its backend pool and ServiceGateway entry `<identity>`, the public IP `<identity>-pip`)
    /// against [`check_azure_name`]. Admission rejects a Service that fails it.
    pub fn check_inbound_names(&self) -> Result<(), String> {
        for name in [self.0.to_string(), self.pip_name()] {
            check_azure_name(&name).map_err(|why| format!("Azure resource name {name:?} {why}"))?;
        }
        Ok(())
    }
}

/// Longest Azure resource name (public IPs, load balancers, NAT gateways).
pub const MAX_AZURE_NAME_LEN: usize = 80;

/// Azure's naming rule for every resource the engine names (AZURE-WIRE.md 2), the one place the
/// engine states it: 1 to 80 characters, ASCII letters, digits, `-`, `_` and `.` only (no `/`,
/// `?`, `#`, `%`, spaces or non-ASCII), not a dot segment (`.`, `..`), no `..`, no trailing
/// dot. The host transport refuses such names again before sending, as a defence. Returns why
/// a name breaks it.
pub fn check_azure_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.chars().count() > MAX_AZURE_NAME_LEN {
        return Err("is longer than 80 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err("may hold only ASCII letters, digits, '-', '_' and '.'");
    }
    if name.contains("..") || name.ends_with('.') {
        return Err("may not contain '..' or end with '.'");
    }
    Ok(())
}

/// `default-natgw` (compared case-insensitively: identities are lower-cased).
pub const RESERVED_IDENTITY: &str = "default-natgw";

/// Longest egress identity: leaves room for `-pip-v6` within the 80-character public IP name.
pub const MAX_EGRESS_IDENTITY_LEN: usize = 73;

/// Why an egress label value cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressLabelError {
    Invalid,
    Reserved,
}

/// Checks a (lower-cased) egress identity against `^[a-z0-9]([a-z0-9._-]{0,71}[a-z0-9_])?$` and
/// the reserved name.
pub fn check_egress_identity(id: &str) -> Result<(), EgressLabelError> {
    if id.eq_ignore_ascii_case(RESERVED_IDENTITY) {
        return Err(EgressLabelError::Reserved);
    }
    let b = id.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: u8| edge(c) || c == b'.' || c == b'_' || c == b'-';
    let valid = match b.len() {
        0 => false,
        1 => edge(b[0]),
        n if n <= MAX_EGRESS_IDENTITY_LEN => edge(b[0]) && b[1..n - 1].iter().all(|c| inner(*c)) && (edge(b[n - 1]) || b[n - 1] == b'_'),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(EgressLabelError::Invalid)
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
    node_ips.iter().filter_map(|s| parse_ip(s.as_ref())).filter(|ip| family(ip) == fam).map(|ip| ip.to_string()).min()
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
    fn egress_identity_pattern() {
        for ok in ["a", "0", "egress-a", "a.b_c-d", "a_", &"x".repeat(73)] {
            assert_eq!(check_egress_identity(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "a.", "_a", ".a", "a/b", "ns/name", "A", "a b", &"x".repeat(74), "é"] {
            assert_eq!(check_egress_identity(bad), Err(EgressLabelError::Invalid), "{bad}");
        }
        assert_eq!(check_egress_identity("default-natgw"), Err(EgressLabelError::Reserved));
        assert_eq!(check_egress_identity("Default-NatGW"), Err(EgressLabelError::Reserved));
        assert!(Identity::new("DEFAULT-natgw").is_reserved());
        assert_eq!(Identity::new("E").pip_v6_name(), "e-pip-v6");
    }

    #[test]
    fn azure_naming_rule() {
        for ok in ["0f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f-pip", "egress.a_b-pip-v6", "a", "A.b", &"x".repeat(80)] {
            assert_eq!(check_azure_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a/b", "../x", "..", ".", "a?b", "a#b", "a%2fb", "a b", "ä", "x.", "a\\b", "a\tb", &"x".repeat(81)] {
            assert!(check_azure_name(bad).is_err(), "{bad:?}");
        }
        // Every egress identity the label pattern admits is a legal name with either suffix.
        for id in ["a", "a_", "a.b-c", &"x".repeat(MAX_EGRESS_IDENTITY_LEN)] {
            assert_eq!(check_egress_identity(id), Ok(()));
            let id = Identity::new(id);
            assert_eq!(check_azure_name(&id.pip_v6_name()), Ok(()));
            assert_eq!(id.check_inbound_names(), Ok(()));
        }
        assert_eq!(Identity::new(&"x".repeat(76)).check_inbound_names(), Ok(()), "<76>-pip is 80");
        assert!(Identity::new(&"x".repeat(77)).check_inbound_names().unwrap_err().contains("-pip"));
        assert!(Identity::new("uid.").check_inbound_names().is_err(), "the LB name would end with a dot");
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
