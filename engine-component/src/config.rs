//! Desired service configurations (ENGINE.md 2.2, 3.3).
//!
//! [`InboundConfig`] is what admission extracts from a LoadBalancer Service; equality compares
//! every field, port lists order-sensitively. [`OutboundConfig`] holds the NAT gateway's public
//! IP families, decided at creation and widened to dual-stack when the cluster gains IPv6 (2.6);
//! two outbound configs are equal for update purposes when their families are.

use crate::identity::Identity;
use crate::io::{IpVersion, ObjectRef};
use serde::{Deserialize, Serialize};

/// The desired shape of an inbound load balancer, as read from the Service spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundConfig {
    /// Service `port` of each port entry, in spec order.
    pub frontend_ports: Vec<i32>,
    /// Backend port of each port entry (numeric targetPort, or port when unset/0), in spec order.
    pub backend_ports: Vec<i32>,
    /// Protocol of each port entry, upper-cased (`TCP` when empty), in spec order.
    pub protocols: Vec<String>,
    /// Idle timeout annotation in minutes; `None` = default (4) at build time.
    pub idle_timeout_minutes: Option<i32>,
    /// Session persistence (`spec.sessionAffinity` when not `None`); ClientIP is rejected.
    pub session_persistence: Option<String>,
    /// `spec.ipFamilies` verbatim.
    pub ip_families: Vec<String>,
    /// The raw idle-timeout annotation when it did not parse or was out of range.
    pub invalid_idle_timeout: Option<String>,
    /// Named (string) target ports; any makes the config unbuildable.
    pub named_target_ports: Vec<String>,
}

/// Egress (NAT gateway) configuration, decided when the first pod of the identity arrives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundConfig {
    /// Public IP families: decided at creation, IPv6 added when the cluster gains it (2.6).
    pub ip_families: Vec<IpVersion>,
    /// The pod that caused the op to be created (`namespace`, `name`).
    pub triggering_pod: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ServiceKind {
    Inbound,
    Outbound,
}

impl ServiceKind {
    pub fn label(self) -> &'static str {
        match self {
            ServiceKind::Inbound => "inbound",
            ServiceKind::Outbound => "outbound",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceDetails {
    Inbound(InboundConfig),
    Outbound(OutboundConfig),
    /// A deletion-only op (orphan, or adopted from NRP) with nothing known about its spec.
    None(ServiceKind),
}

/// The desired state of one engine-managed service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub identity: Identity,
    /// The Kubernetes object (inbound: the Service; namespace/name empty when unknown). The uid
    /// is kept as Kubernetes spelled it, for UID-guarded writes.
    pub object: ObjectRef,
    pub details: ServiceDetails,
}

impl ServiceConfig {
    pub fn inbound(object: ObjectRef, cfg: InboundConfig) -> ServiceConfig {
        ServiceConfig { identity: Identity::new(&object.uid), object, details: ServiceDetails::Inbound(cfg) }
    }

    /// An egress (NAT gateway) config: no Kubernetes object of its own.
    pub fn outbound(identity: Identity, ip_families: Vec<IpVersion>, triggering_pod: Option<(String, String)>) -> ServiceConfig {
        ServiceConfig {
            identity,
            object: ObjectRef::default(),
            details: ServiceDetails::Outbound(OutboundConfig { ip_families, triggering_pod }),
        }
    }

    /// A config without details (deletion-only ops).
    pub fn bare(identity: Identity, kind: ServiceKind, object: ObjectRef) -> ServiceConfig {
        ServiceConfig { identity, object, details: ServiceDetails::None(kind) }
    }

    pub fn kind(&self) -> ServiceKind {
        match &self.details {
            ServiceDetails::Inbound(_) => ServiceKind::Inbound,
            ServiceDetails::Outbound(_) => ServiceKind::Outbound,
            ServiceDetails::None(k) => *k,
        }
    }

    pub fn is_inbound(&self) -> bool {
        self.kind() == ServiceKind::Inbound
    }

    pub fn outbound_config(&self) -> Option<&OutboundConfig> {
        match &self.details {
            ServiceDetails::Outbound(c) => Some(c),
            _ => None,
        }
    }

    pub fn inbound_config(&self) -> Option<&InboundConfig> {
        match &self.details {
            ServiceDetails::Inbound(c) => Some(c),
            _ => None,
        }
    }

    /// Equality as ENGINE.md 2.2 defines it for drift detection: inbound configs compare every
    /// field; outbound configs compare their public IP families (as sets; the triggering pod is
    /// bookkeeping); a detail-less config equals only another detail-less config of the same kind.
    pub fn same_spec(&self, other: &ServiceConfig) -> bool {
        match (&self.details, &other.details) {
            (ServiceDetails::Inbound(a), ServiceDetails::Inbound(b)) => a == b,
            (ServiceDetails::Outbound(a), ServiceDetails::Outbound(b)) => {
                a.ip_families.iter().all(|f| b.ip_families.contains(f)) && b.ip_families.iter().all(|f| a.ip_families.contains(f))
            }
            (ServiceDetails::None(a), ServiceDetails::None(b)) => a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> InboundConfig {
        InboundConfig {
            frontend_ports: vec![80, 443],
            backend_ports: vec![8080, 8443],
            protocols: vec!["TCP".into(), "TCP".into()],
            idle_timeout_minutes: None,
            session_persistence: None,
            ip_families: vec!["IPv4".into()],
            invalid_idle_timeout: None,
            named_target_ports: vec![],
        }
    }

    fn cfg(c: InboundConfig) -> ServiceConfig {
        ServiceConfig::inbound(ObjectRef { namespace: "ns".into(), name: "n".into(), uid: "U1".into() }, c)
    }

    #[test]
    fn s023_inbound_equality_considers_every_field() {
        let a = cfg(base());
        assert!(a.same_spec(&cfg(base())));
        type Edit = Box<dyn Fn(&mut InboundConfig)>;
        let variants: Vec<Edit> = vec![
            Box::new(|c| c.frontend_ports = vec![443, 80]),
            Box::new(|c| c.backend_ports[1] = 9443),
            Box::new(|c| c.protocols[0] = "UDP".into()),
            Box::new(|c| c.idle_timeout_minutes = Some(10)),
            Box::new(|c| c.session_persistence = Some("None".into())),
            Box::new(|c| c.ip_families = vec!["IPv6".into()]),
            Box::new(|c| c.invalid_idle_timeout = Some("x".into())),
            Box::new(|c| c.named_target_ports = vec!["http".into()]),
        ];
        for v in variants {
            let mut c = base();
            v(&mut c);
            assert!(!a.same_spec(&cfg(c)), "a changed field must count as drift");
        }
        let o1 = ServiceConfig {
            identity: Identity::new("e"),
            object: ObjectRef::default(),
            details: ServiceDetails::Outbound(OutboundConfig { ip_families: vec![IpVersion::V4], triggering_pod: None }),
        };
        let mut o2 = o1.clone();
        o2.details =
            ServiceDetails::Outbound(OutboundConfig { ip_families: vec![IpVersion::V4], triggering_pod: Some(("ns".into(), "p".into())) });
        assert!(o1.same_spec(&o2), "outbound configs with the same families are equal");
        o2.details = ServiceDetails::Outbound(OutboundConfig { ip_families: vec![IpVersion::V4, IpVersion::V6], triggering_pod: None });
        assert!(!o1.same_spec(&o2), "gaining IPv6 is drift (2.6)");
        let mut o3 = o1.clone();
        o3.details = ServiceDetails::Outbound(OutboundConfig { ip_families: vec![IpVersion::V6, IpVersion::V4], triggering_pod: None });
        assert!(o2.same_spec(&o3), "families compare as sets");
        assert!(!a.same_spec(&o1));
    }
}
