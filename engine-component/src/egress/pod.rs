//! Reading an egress Pod object (ENGINE.md 2.4, 2.6): its key, its egress label, its addresses
//! and node locations, and the update decision table.

use crate::identity::{canonical, family, parse_ip, Family};
use crate::io::Pod;
use crate::names::{EGRESS_LABEL, POD_FINALIZER};
use std::collections::BTreeMap;

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.meta.namespace, pod.meta.name)
}

/// The lower-cased egress label value ("" when absent or empty).
pub fn egress_identity(pod: &Pod) -> String {
    pod.meta.label(EGRESS_LABEL).unwrap_or("").to_ascii_lowercase()
}

pub fn has_label_key(pod: &Pod) -> bool {
    pod.meta.label(EGRESS_LABEL).is_some()
}

pub fn has_pod_finalizer(pod: &Pod) -> bool {
    pod.meta.finalizers.iter().any(|f| f == POD_FINALIZER)
}

/// `PodEgressAddresses`: `status.podIPs` falling back to `status.podIP`; canonical text (an
/// unparsable string is kept verbatim), empty entries dropped, duplicates removed.
pub fn pod_addresses(pod: &Pod) -> Vec<String> {
    let raw: Vec<&String> = if pod.pod_ips.iter().any(|s| !s.is_empty()) { pod.pod_ips.iter().collect() } else { vec![&pod.pod_ip] };
    let mut out: Vec<String> = Vec::new();
    for r in raw {
        let r = r.trim();
        if r.is_empty() {
            continue;
        }
        let c = canonical(r);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// No deletionTimestamp and phase Running or Pending.
pub fn is_valid(pod: &Pod) -> bool {
    pod.meta.deletion_timestamp.is_none() && (pod.phase == "Running" || pod.phase == "Pending")
}

/// `PodNodeLocationsByFamily`: per family, the first node IP of that family from
/// `status.hostIPs`, falling back to `status.hostIP` (canonical).
pub fn locations_by_family(pod: &Pod) -> BTreeMap<Family, String> {
    let mut out = BTreeMap::new();
    for raw in pod.host_ips.iter().chain(std::iter::once(&pod.host_ip)) {
        if let Some(ip) = parse_ip(raw.trim()) {
            out.entry(family(&ip)).or_insert_with(|| ip.to_string());
        }
    }
    out
}

/// The node location for one pod address: the same-family node IP (never the IPv6 address under
/// the IPv4 host IP).
pub fn location_for(locations: &BTreeMap<Family, String>, addr: &str) -> Option<String> {
    let ip = parse_ip(addr)?;
    locations.get(&family(&ip)).cloned()
}

/// `egressPodUpdateActions(old, new)` -> (needsRemove, needsAdd): the decision table of 2.4,
/// first matching row wins.
pub fn update_actions(old: &Pod, new: &Pod) -> (bool, bool) {
    let old_label = egress_identity(old);
    let new_label = egress_identity(new);
    let old_ips = pod_addresses(old);
    let new_ips = pod_addresses(new);
    let old_has = !old.host_ip.is_empty() && !old_ips.is_empty();
    let new_has = !new.host_ip.is_empty() && !new_ips.is_empty();
    let ips_changed = old_ips != new_ips || locations_by_family(old) != locations_by_family(new);
    let old_valid = is_valid(old);
    let new_valid = is_valid(new);
    if old_label != new_label {
        (!old_label.is_empty() && old_has, !new_label.is_empty() && new_has && new_valid)
    } else if new_label.is_empty() {
        (false, false)
    } else if old_valid && !new_valid && old_has {
        (true, false)
    } else if !old_has && new_has && new_valid {
        (false, true)
    } else if old_has && !new_has {
        (true, false)
    } else if !old_valid && new_valid && old_has && new_has && !ips_changed {
        (false, true)
    } else if old_has && new_has && ips_changed && new_valid {
        (true, true)
    } else if old_has && new_has && !new_valid {
        (true, false)
    } else {
        (false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::ObjectMeta;

    fn pod(label: Option<&str>, phase: &str, ips: &[&str], host: &[&str], deleting: bool) -> Pod {
        Pod {
            meta: ObjectMeta {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u1".into(),
                labels: label.map(|l| vec![(EGRESS_LABEL.to_string(), l.to_string())]).unwrap_or_default(),
                deletion_timestamp: deleting.then(|| "2026-01-01T00:00:00Z".to_string()),
                ..Default::default()
            },
            node_name: "n1".into(),
            phase: phase.into(),
            pod_ip: ips.first().map(|s| s.to_string()).unwrap_or_default(),
            pod_ips: ips.iter().map(|s| s.to_string()).collect(),
            host_ip: host.first().map(|s| s.to_string()).unwrap_or_default(),
            host_ips: host.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn addresses_and_locations() {
        let p = pod(Some("E"), "Running", &["10.1.0.1", "FD00::0001", "10.1.0.1"], &["10.0.0.1", "FD00::A"], false);
        assert_eq!(pod_addresses(&p), vec!["10.1.0.1".to_string(), "fd00::1".to_string()]);
        let locs = locations_by_family(&p);
        assert_eq!(location_for(&locs, "fd00::1"), Some("fd00::a".to_string()));
        assert_eq!(location_for(&locs, "10.1.0.1"), Some("10.0.0.1".to_string()));
        assert_eq!(egress_identity(&p), "e");
        let mut q = p.clone();
        q.pod_ips.clear();
        assert_eq!(pod_addresses(&q), vec!["10.1.0.1".to_string()]);
        q.pod_ip.clear();
        assert!(pod_addresses(&q).is_empty());
    }
}
