//! Admission of inbound Services (ENGINE.md 2.2) and the build-time checks that make a create or
//! update terminal (6.1 step 1, 6.2).
//!
//! [`admit`] turns a Service into an [`InboundConfig`] or a [`Rejection`] whose `reason` is the
//! Kubernetes Event reason; zero ports means "nothing to provision". [`build_inbound`] turns a
//! config into the public IP version and load balancer of the wire; its errors are terminal.

use crate::config::InboundConfig;
use crate::identity::Identity;
use crate::io::{IntOrString, IpVersion, LbRule, LoadBalancerSpec, Service, TransportProtocol};
use crate::names::*;

pub const DEFAULT_IDLE_TIMEOUT_MINUTES: i32 = 4;
pub const MIN_IDLE_TIMEOUT_MINUTES: i32 = 4;
pub const MAX_IDLE_TIMEOUT_MINUTES: i32 = 30;

/// Why a Service was not admitted. `reason` is one of the `REASON_*` constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

fn reject(reason: &'static str, message: String) -> Rejection {
    Rejection { reason, message }
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "t" | "1" | "yes" | "y")
}

/// Extracts the config without judging it (named ports and bad idle timeouts are recorded).
pub fn extract(svc: &Service) -> InboundConfig {
    let mut cfg = InboundConfig::default();
    for p in &svc.ports {
        let proto = if p.protocol.is_empty() { "TCP".to_string() } else { p.protocol.to_ascii_uppercase() };
        let backend = match &p.target_port {
            Some(IntOrString::Int(t)) if *t != 0 => *t,
            Some(IntOrString::Str(name)) => {
                cfg.named_target_ports.push(name.clone());
                p.port
            }
            _ => p.port,
        };
        cfg.frontend_ports.push(p.port);
        cfg.backend_ports.push(backend);
        cfg.protocols.push(proto);
    }
    if let Some(raw) = svc.meta.annotation(ANNOTATION_IDLE_TIMEOUT) {
        match raw.trim().parse::<i32>() {
            Ok(v) if (MIN_IDLE_TIMEOUT_MINUTES..=MAX_IDLE_TIMEOUT_MINUTES).contains(&v) => cfg.idle_timeout_minutes = Some(v),
            _ => cfg.invalid_idle_timeout = Some(raw.to_string()),
        }
    }
    if !svc.session_affinity.is_empty() && svc.session_affinity != "None" {
        cfg.session_persistence = Some(svc.session_affinity.clone());
    }
    cfg.ip_families = svc.ip_families.clone();
    cfg
}

/// `AdmitInboundService`: `Ok(None)` for a Service with zero ports (nothing to provision). A UID
/// whose Azure names break the naming rule is rejected first: nothing can ever be created.
pub fn admit(svc: &Service) -> Result<Option<InboundConfig>, Rejection> {
    if let Err(why) = Identity::new(&svc.meta.uid).check_inbound_names() {
        return Err(reject(REASON_INVALID_RESOURCE_NAME, format!("the Service UID cannot name Azure resources: {why}")));
    }
    if let Some(v) = svc.meta.annotation(ANNOTATION_INTERNAL) {
        if truthy(v) {
            return Err(reject(
                REASON_INTERNAL,
                format!("annotation {ANNOTATION_INTERNAL}={v}: internal load balancers are not supported with ServiceGateway"),
            ));
        }
    }
    if svc.session_affinity == "ClientIP" {
        return Err(reject(REASON_SESSION_AFFINITY, "sessionAffinity ClientIP is not supported with ServiceGateway".into()));
    }
    if !svc.load_balancer_ip.is_empty() {
        return Err(reject(REASON_LB_IP, format!("spec.loadBalancerIP {} is not supported with ServiceGateway", svc.load_balancer_ip)));
    }
    if svc.ip_families.len() > 1 {
        return Err(reject(REASON_DUAL_STACK, format!("dual-stack Services ({}) are not supported", svc.ip_families.join(","))));
    }
    if svc.ports.is_empty() {
        return Ok(None);
    }
    let cfg = extract(svc);
    if let Some(raw) = &cfg.invalid_idle_timeout {
        return Err(reject(REASON_IDLE_TIMEOUT, format!("annotation {ANNOTATION_IDLE_TIMEOUT}={raw:?} must be an integer number of minutes in [{MIN_IDLE_TIMEOUT_MINUTES}, {MAX_IDLE_TIMEOUT_MINUTES}]")));
    }
    if !cfg.named_target_ports.is_empty() {
        return Err(reject(REASON_NAMED_PORT, format!("named target ports ({}) are not supported", cfg.named_target_ports.join(","))));
    }
    if let Some(p) = cfg.protocols.iter().find(|p| p.as_str() != "TCP" && p.as_str() != "UDP") {
        return Err(reject(REASON_PROTOCOL, format!("protocol {p} is not supported (only TCP and UDP)")));
    }
    if let Some((proto, port)) = collision(&cfg) {
        return Err(reject(REASON_COLLISION, format!("two service ports map to the same {proto} backend port {port}")));
    }
    Ok(Some(cfg))
}

fn collision(cfg: &InboundConfig) -> Option<(String, i32)> {
    let mut seen = std::collections::BTreeSet::new();
    for (proto, port) in cfg.protocols.iter().zip(cfg.backend_ports.iter()) {
        if !seen.insert((proto.clone(), *port)) {
            return Some((proto.clone(), *port));
        }
    }
    None
}

/// A build-time validation failure: terminal (never retried until the spec changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError(pub String);

/// What an inbound create/update sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltInbound {
    pub pip_name: String,
    pub pip_version: IpVersion,
    pub load_balancer: LoadBalancerSpec,
}

/// Builds the public IP and load balancer for `identity` (the build-time checks of 2.2).
pub fn build_inbound(identity: &Identity, cfg: &InboundConfig) -> Result<BuiltInbound, BuildError> {
    identity.check_inbound_names().map_err(BuildError)?;
    if !cfg.named_target_ports.is_empty() {
        return Err(BuildError(format!("named target ports are not supported: {}", cfg.named_target_ports.join(","))));
    }
    if cfg.ip_families.len() > 1 {
        return Err(BuildError("dual-stack is not supported".into()));
    }
    let pip_version = match cfg.ip_families.first().map(|s| s.as_str()) {
        None => IpVersion::V4,
        Some("IPv4") => IpVersion::V4,
        Some("IPv6") => IpVersion::V6,
        Some(other) => return Err(BuildError(format!("unknown IP family {other:?}"))),
    };
    if let Some(raw) = &cfg.invalid_idle_timeout {
        return Err(BuildError(format!("invalid idle timeout {raw:?}")));
    }
    let idle = cfg.idle_timeout_minutes.unwrap_or(DEFAULT_IDLE_TIMEOUT_MINUTES);
    if !(MIN_IDLE_TIMEOUT_MINUTES..=MAX_IDLE_TIMEOUT_MINUTES).contains(&idle) {
        return Err(BuildError(format!("idle timeout {idle} outside [{MIN_IDLE_TIMEOUT_MINUTES}, {MAX_IDLE_TIMEOUT_MINUTES}]")));
    }
    if cfg.frontend_ports.len() != cfg.backend_ports.len() || cfg.frontend_ports.len() != cfg.protocols.len() {
        return Err(BuildError("inconsistent port lists".into()));
    }
    if let Some((proto, port)) = collision(cfg) {
        return Err(BuildError(format!("backend port collision {proto}/{port}")));
    }
    let mut rules = Vec::with_capacity(cfg.frontend_ports.len());
    for i in 0..cfg.frontend_ports.len() {
        let fe = cfg.frontend_ports[i];
        let be = cfg.backend_ports[i];
        if !(1..=65534).contains(&fe) {
            return Err(BuildError(format!("frontend port {fe} outside [1, 65534]")));
        }
        if !(1..=65535).contains(&be) {
            return Err(BuildError(format!("backend port {be} outside [1, 65535]")));
        }
        let protocol = match cfg.protocols[i].as_str() {
            "TCP" => TransportProtocol::Tcp,
            "UDP" => TransportProtocol::Udp,
            other => return Err(BuildError(format!("unsupported protocol {other}"))),
        };
        rules.push(LbRule { protocol, frontend_port: fe as u16, backend_port: be as u16, idle_timeout_minutes: idle as u8 });
    }
    Ok(BuiltInbound {
        pip_name: identity.pip_name(),
        pip_version,
        load_balancer: LoadBalancerSpec { name: identity.as_str().to_string(), public_ip: identity.pip_name(), rules },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{ObjectMeta, ServicePort};

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            meta: ObjectMeta { namespace: "ns".into(), name: "web".into(), uid: "UID-1".into(), ..Default::default() },
            service_type: "LoadBalancer".into(),
            ports,
            ..Default::default()
        }
    }
    fn port(proto: &str, port: i32, target: Option<IntOrString>) -> ServicePort {
        ServicePort { name: String::new(), protocol: proto.into(), port, target_port: target }
    }

    #[test]
    fn s006_zero_ports_is_nothing_to_provision() {
        assert_eq!(admit(&svc(vec![])), Ok(None));
    }

    #[test]
    fn s131_admission_rejections_and_accepted_values() {
        for v in ["true", "TRUE", "True"] {
            let mut s = svc(vec![port("TCP", 80, None)]);
            s.meta.annotations.push((ANNOTATION_INTERNAL.into(), v.into()));
            assert_eq!(admit(&s).unwrap_err().reason, REASON_INTERNAL, "{v}");
        }
        let mut s = svc(vec![port("TCP", 80, None)]);
        s.meta.annotations.push((ANNOTATION_INTERNAL.into(), "false".into()));
        assert!(admit(&s).unwrap().is_some());

        let mut s = svc(vec![port("TCP", 80, None)]);
        s.session_affinity = "ClientIP".into();
        assert_eq!(admit(&s).unwrap_err().reason, REASON_SESSION_AFFINITY);
        let mut s = svc(vec![port("TCP", 80, None)]);
        s.load_balancer_ip = "1.2.3.4".into();
        assert_eq!(admit(&s).unwrap_err().reason, REASON_LB_IP);
        let mut s = svc(vec![port("TCP", 80, None)]);
        s.ip_families = vec!["IPv4".into(), "IPv6".into()];
        assert_eq!(admit(&s).unwrap_err().reason, REASON_DUAL_STACK);
        let mut s = svc(vec![port("TCP", 80, Some(IntOrString::Str("http".into())))]);
        assert_eq!(admit(&s).unwrap_err().reason, REASON_NAMED_PORT);
        s.ports = vec![port("SCTP", 80, None)];
        assert_eq!(admit(&s).unwrap_err().reason, REASON_PROTOCOL);

        for policy in ["Cluster", "Local"] {
            let mut s = svc(vec![port("TCP", 80, None)]);
            s.external_traffic_policy = policy.into();
            assert!(admit(&s).unwrap().is_some());
        }
        // Every idle timeout admission accepts also builds; everything else is rejected.
        for v in -2..40 {
            let mut s = svc(vec![port("TCP", 80, None)]);
            s.meta.annotations.push((ANNOTATION_IDLE_TIMEOUT.into(), v.to_string()));
            match admit(&s) {
                Ok(Some(cfg)) => {
                    assert!((4..=30).contains(&v));
                    let b = build_inbound(&Identity::new("uid-1"), &cfg).unwrap();
                    assert_eq!(b.load_balancer.rules[0].idle_timeout_minutes as i32, v);
                }
                Err(r) => {
                    assert!(!(4..=30).contains(&v));
                    assert_eq!(r.reason, REASON_IDLE_TIMEOUT);
                }
                Ok(None) => panic!("ports present"),
            }
        }
        let mut s = svc(vec![port("TCP", 80, None)]);
        s.meta.annotations.push((ANNOTATION_IDLE_TIMEOUT.into(), "ten".into()));
        assert_eq!(admit(&s).unwrap_err().reason, REASON_IDLE_TIMEOUT);
    }

    #[test]
    fn s132_backend_port_collision() {
        let s = svc(vec![port("TCP", 80, Some(IntOrString::Int(8080))), port("TCP", 81, Some(IntOrString::Int(8080)))]);
        assert_eq!(admit(&s).unwrap_err().reason, REASON_COLLISION);
        let s = svc(vec![port("TCP", 53, None), port("UDP", 53, None)]);
        let cfg = admit(&s).unwrap().unwrap();
        let b = build_inbound(&Identity::new("UID-1"), &cfg).unwrap();
        assert_eq!(b.load_balancer.rules.len(), 2);
    }

    #[test]
    fn build_shapes_rules_and_checks_ranges() {
        let s = svc(vec![port("", 80, Some(IntOrString::Int(8080))), port("UDP", 53, Some(IntOrString::Int(0)))]);
        let cfg = admit(&s).unwrap().unwrap();
        let b = build_inbound(&Identity::new("UID-1"), &cfg).unwrap();
        assert_eq!(b.pip_name, "uid-1-pip");
        assert_eq!(b.pip_version, IpVersion::V4);
        assert_eq!(b.load_balancer.name, "uid-1");
        assert_eq!(
            b.load_balancer.rules,
            vec![
                LbRule { protocol: TransportProtocol::Tcp, frontend_port: 80, backend_port: 8080, idle_timeout_minutes: 4 },
                LbRule { protocol: TransportProtocol::Udp, frontend_port: 53, backend_port: 53, idle_timeout_minutes: 4 },
            ]
        );
        let mut c = cfg.clone();
        c.frontend_ports[0] = 65535;
        assert!(build_inbound(&Identity::new("u"), &c).is_err());
        let mut c = cfg.clone();
        c.backend_ports[0] = 65536;
        assert!(build_inbound(&Identity::new("u"), &c).is_err());
        let mut c = cfg.clone();
        c.ip_families = vec!["IPv7".into()];
        assert!(build_inbound(&Identity::new("u"), &c).is_err());
        let mut c = cfg;
        c.ip_families = vec!["IPv6".into()];
        assert_eq!(build_inbound(&Identity::new("u"), &c).unwrap().pip_version, IpVersion::V6);
    }
}
