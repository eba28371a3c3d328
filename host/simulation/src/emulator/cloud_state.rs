//! A cloud to start from: the resources "a previous controller" left in a resource group, in the
//! JSON `GET /_emulator/inventory` prints, so a run can start against orphans to sweep and
//! resources to adopt, or against a copy of a user's own cloud.
//!
//! ```text
//! {"public_ips": {"<name>": "<address>"}, "load_balancers": ["<name>"], "nat_gateways": ["<name>"],
//!  "sgw_services": {"<name>": "Inbound|Outbound|InboundOutbound"},
//!  "address_locations": {"<node ip>": {"<address>": ["<service>"]}}}
//! ```
//!
//! Every key is optional; any other key, or a value of the wrong shape, is an error naming it.
//! Seeding ([`EmulatorState::seed_cloud_state`](super::EmulatorState::seed_cloud_state)) creates
//! the public IPs with their addresses, then each load balancer (one frontend on `<name>-pip`
//! where that public IP exists, one backend pool named after it), each NAT gateway (on
//! `<name>-pip` and `<name>-pip-v6` where they exist), the ServiceGateway services (an Inbound one
//! on its load balancer's pool, an Outbound one on its NAT gateway) and the address locations,
//! through the emulator's own rules. What the emulator already holds (the seeded `default-natgw`
//! and its public IP and service) is left as it is.

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// The largest cloud-state file read (bytes).
pub const MAX_CLOUD_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// A parsed cloud state. Names keep their spelling; addresses are canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudState {
    pub public_ips: BTreeMap<String, IpAddr>,
    pub load_balancers: Vec<String>,
    pub nat_gateways: Vec<String>,
    /// Name -> `Inbound`, `Outbound` or `InboundOutbound`.
    pub sgw_services: BTreeMap<String, String>,
    /// Node IP -> address -> the services it is mapped to.
    pub address_locations: BTreeMap<IpAddr, BTreeMap<IpAddr, Vec<String>>>,
}

const KEYS: [&str; 5] = ["address_locations", "load_balancers", "nat_gateways", "public_ips", "sgw_services"];

fn names(v: &Value, field: &str) -> Result<Vec<String>, String> {
    let a = v.as_array().ok_or_else(|| format!("{field} must be an array of names"))?;
    a.iter()
        .enumerate()
        .map(|(i, n)| match n.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
            _ => Err(format!("{field}[{i}] must be a non-empty string")),
        })
        .collect()
}

fn ip(s: &Value, what: &str) -> Result<IpAddr, String> {
    let text = s.as_str().ok_or_else(|| format!("{what} must be a string"))?;
    text.trim().parse::<IpAddr>().map_err(|_| format!("{what} {text:?} is not an IP address"))
}

impl CloudState {
    /// Whether the state holds nothing.
    pub fn is_empty(&self) -> bool {
        *self == CloudState::default()
    }

    /// Parses the inventory JSON.
    pub fn from_value(v: &Value) -> Result<CloudState, String> {
        let o = v.as_object().ok_or("the cloud state must be a JSON object (as GET /_emulator/inventory prints it)")?;
        if let Some(k) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("unknown key {k:?} (expected some of {})", KEYS.join(", ")));
        }
        let mut cs = CloudState::default();
        if let Some(p) = o.get("public_ips").filter(|v| !v.is_null()) {
            let m = p.as_object().ok_or("public_ips must be an object of name: address")?;
            for (name, addr) in m {
                if name.trim().is_empty() {
                    return Err("public_ips has an empty name".into());
                }
                cs.public_ips.insert(name.clone(), ip(addr, &format!("public_ips.{name}"))?);
            }
        }
        if let Some(l) = o.get("load_balancers").filter(|v| !v.is_null()) {
            cs.load_balancers = names(l, "load_balancers")?;
        }
        if let Some(n) = o.get("nat_gateways").filter(|v| !v.is_null()) {
            cs.nat_gateways = names(n, "nat_gateways")?;
        }
        if let Some(s) = o.get("sgw_services").filter(|v| !v.is_null()) {
            let m = s.as_object().ok_or("sgw_services must be an object of name: type")?;
            for (name, t) in m {
                let t = match t.as_str().map(str::to_ascii_lowercase).as_deref() {
                    Some("inbound") => "Inbound",
                    Some("outbound") => "Outbound",
                    Some("inboundoutbound") => "InboundOutbound",
                    _ => return Err(format!("sgw_services.{name} must be \"Inbound\", \"Outbound\" or \"InboundOutbound\", got {t}")),
                };
                cs.sgw_services.insert(name.clone(), t.to_string());
            }
        }
        if let Some(l) = o.get("address_locations").filter(|v| !v.is_null()) {
            let m = l.as_object().ok_or("address_locations must be an object of node IP: {address: [service]}")?;
            for (node, addrs) in m {
                let node_ip = ip(&Value::String(node.clone()), "address_locations: the node IP")?;
                let addrs = addrs.as_object().ok_or_else(|| format!("address_locations.{node} must be an object of address: [service]"))?;
                let entry = cs.address_locations.entry(node_ip).or_default();
                for (addr, svcs) in addrs {
                    let a = ip(&Value::String(addr.clone()), &format!("address_locations.{node}: the address"))?;
                    if a.is_ipv4() != node_ip.is_ipv4() {
                        return Err(format!("address_locations.{node}.{addr}: the address and its node IP are of different families"));
                    }
                    entry.insert(a, names(svcs, &format!("address_locations.{node}.{addr}"))?);
                }
            }
        }
        Ok(cs)
    }

    /// Parses JSON text.
    pub fn from_json_str(text: &str) -> Result<CloudState, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        CloudState::from_value(&v)
    }

    /// Reads and parses a file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<CloudState, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cloud state {}: {e}", path.display()))?;
        if meta.len() > MAX_CLOUD_STATE_BYTES {
            return Err(format!("cloud state {}: {} bytes, more than the {} allowed", path.display(), meta.len(), MAX_CLOUD_STATE_BYTES));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cloud state {}: {e}", path.display()))?;
        CloudState::from_json_str(&text).map_err(|e| format!("cloud state {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_inventory_shape() {
        let cs = CloudState::from_json_str(
            r#"{"public_ips": {"a-pip": "20.40.0.9", "b-pip-v6": "2603:1030:20E::5"}, "load_balancers": ["a"],
                "nat_gateways": [], "sgw_services": {"a": "inbound"},
                "address_locations": {"10.0.0.1": {"10.1.0.1": ["a"]}}}"#,
        )
        .unwrap();
        assert_eq!(cs.public_ips["b-pip-v6"].to_string(), "2603:1030:20e::5");
        assert_eq!(cs.sgw_services["a"], "Inbound");
        assert_eq!(cs.load_balancers, vec!["a".to_string()]);
        assert_eq!(cs.address_locations.len(), 1);
    }

    #[test]
    fn malformed_input_names_the_problem() {
        for (text, wanted) in [
            ("[]", "must be a JSON object"),
            ("{\"loadbalancers\": []}", "unknown key \"loadbalancers\""),
            ("{\"public_ips\": {\"x-pip\": \"nope\"}}", "public_ips.x-pip \"nope\" is not an IP address"),
            ("{\"load_balancers\": [1]}", "load_balancers[0] must be a non-empty string"),
            ("{\"sgw_services\": {\"x\": \"Sideways\"}}", "sgw_services.x must be"),
            ("{\"address_locations\": {\"10.0.0.1\": {\"fd00::1\": [\"x\"]}}}", "different families"),
            ("{", "not JSON"),
        ] {
            let e = CloudState::from_json_str(text).unwrap_err();
            assert!(e.contains(wanted), "{text}: {e}");
        }
    }
}
