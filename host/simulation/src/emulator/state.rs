//! The semantic core of the ARM/NRP emulator: in-memory public IPs, load balancers, NAT gateways,
//! ServiceGateway services and address locations, with Azure's referential rules. No HTTP, no
//! clock, no randomness: the same requests in the same order give the same state (addresses are
//! allocated from counters), so it serves both the HTTP server and deterministic replay.
//!
//! Requests and answers are the wire JSON of AZURE-WIRE.md section 3; errors carry the HTTP status
//! and ARM error code Azure answers with ([`codes`]).

use difftracker_runtime::transport::config::{id_segment_after, ResourceKind, SERVICE_GATEWAY_NAME};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// ARM error codes the emulator answers with.
pub mod codes {
    pub const RESOURCE_NOT_FOUND: &str = "ResourceNotFound";
    /// A load balancer, NAT gateway or ServiceGateway service references a missing resource.
    pub const INVALID_RESOURCE_REFERENCE: &str = "InvalidResourceReference";
    pub const PUBLIC_IP_CANNOT_BE_DELETED: &str = "PublicIPAddressCannotBeDeleted";
    pub const PUBLIC_IP_IN_USE: &str = "PublicIPAddressInUse";
    pub const OVERLAY_MAPPINGS: &str = "ServiceWithOverlayMappingsCannotBeDeleted";
    pub const DUPLICATE_LOCATIONS: &str = "DuplicateLocationsInRequest";
    pub const DUPLICATE_ADDRESSES: &str = "DuplicateAddressesInRequest";
    pub const DUPLICATE_SERVICES: &str = "DuplicateServicesInRequest";
    pub const MULTIPLE_DEFAULT: &str = "MultipleDefaultServicesNotAllowedInServiceGateway";
    /// An address published for a service that is not registered in the ServiceGateway.
    pub const SERVICE_NOT_REGISTERED: &str = "ServiceNotRegisteredInServiceGateway";
    pub const ADDRESS_FAMILY_MISMATCH: &str = "AddressLocationFamilyMismatch";
    pub const INVALID_REQUEST_FORMAT: &str = "InvalidRequestFormat";
    /// A write to a resource the AKS resource provider owns (the seeded `default-natgw`).
    pub const RP_OWNED: &str = "CannotModifyResourceOwnedByResourceProvider";
}

/// The reserved NAT gateway of the AKS resource provider, its public IP and ServiceGateway entry.
pub const DEFAULT_NATGW: &str = "default-natgw";
pub const DEFAULT_NATGW_PIP: &str = "default-natgw-pip";

/// An ARM error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ArmError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ArmError { status, code: code.into(), message: message.into() }
    }
    fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    fn format(message: impl Into<String>) -> Self {
        Self::bad(codes::INVALID_REQUEST_FORMAT, message)
    }
    fn not_found(what: &str, name: &str) -> Self {
        Self::new(404, codes::RESOURCE_NOT_FOUND, format!("The Resource '{what}/{name}' was not found."))
    }
    /// `{"error":{"code","message"}}`.
    pub fn body(&self) -> Value {
        json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl std::fmt::Display for ArmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// What a request is aimed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Collection(ResourceKind),
    Resource(ResourceKind, String),
    ServiceGateway,
    SgwServices,
    SgwAddressLocations,
    SgwUpdateServices,
    SgwUpdateAddressLocations,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Delete,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Post => "POST",
        }
    }
}

/// The fault-file label of a request (`CloudCall::label`), or `None` for requests that are not
/// one of the engine's 14 calls.
pub fn label_of(method: Method, target: &Target) -> Option<&'static str> {
    use ResourceKind::*;
    Some(match (method, target) {
        (Method::Put, Target::Resource(PublicIp, _)) => "PUT publicIPAddresses",
        (Method::Delete, Target::Resource(PublicIp, _)) => "DELETE publicIPAddresses",
        (Method::Get, Target::Collection(PublicIp)) => "GET publicIPAddresses",
        (Method::Put, Target::Resource(LoadBalancer, _)) => "PUT loadBalancers",
        (Method::Delete, Target::Resource(LoadBalancer, _)) => "DELETE loadBalancers",
        (Method::Get, Target::Collection(LoadBalancer)) => "GET loadBalancers",
        (Method::Put, Target::Resource(NatGateway, _)) => "PUT natGateways",
        (Method::Get, Target::Resource(NatGateway, _)) | (Method::Get, Target::Collection(NatGateway)) => "GET natGateways",
        (Method::Delete, Target::Resource(NatGateway, _)) => "DELETE natGateways",
        (Method::Get, Target::SgwServices) => "GET services",
        (Method::Get, Target::SgwAddressLocations) => "GET addressLocations",
        (Method::Post, Target::SgwUpdateServices) => "POST updateServices",
        (Method::Post, Target::SgwUpdateAddressLocations) => "POST updateAddressLocations",
        _ => return None,
    })
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A PUT: the resource as stored; `created` when it did not exist before.
    Put { created: bool, body: Value },
    /// A GET of one resource.
    Resource(Value),
    /// A list, all pages.
    List(Vec<Value>),
    /// A DELETE that removed something.
    Deleted,
    /// A ServiceGateway POST.
    Done,
}

#[derive(Clone, Debug)]
struct PublicIp {
    name: String,
    id: String,
    version: &'static str,
    address: String,
    location: String,
    etag: u64,
}

#[derive(Clone, Debug)]
struct LoadBalancer {
    name: String,
    body: Value,
    /// Lower-cased names of the public IPs its frontends use.
    pips: Vec<String>,
    /// Lower-cased backend pool names.
    pools: BTreeSet<String>,
    etag: u64,
}

#[derive(Clone, Debug)]
struct NatGateway {
    name: String,
    body: Value,
    pips: Vec<String>,
    etag: u64,
}

#[derive(Clone, Debug)]
struct SgwEntry {
    name: String,
    service_type: String,
    pools: Vec<String>,
    nat_id: Option<String>,
    is_default: bool,
}

/// Everything the emulator holds. Keys of resources and services are lower-cased names (ARM
/// names are case-insensitive); IPs are stored canonical.
#[derive(Clone, Debug, Default)]
pub struct EmulatorState {
    pips: BTreeMap<String, PublicIp>,
    lbs: BTreeMap<String, LoadBalancer>,
    nats: BTreeMap<String, NatGateway>,
    services: BTreeMap<String, SgwEntry>,
    /// node IP -> pod IP -> lower-cased service keys.
    locations: BTreeMap<IpAddr, BTreeMap<IpAddr, BTreeSet<String>>>,
    /// Lower-cased names of resources only the AKS resource provider may write.
    protected: BTreeSet<(ResourceKind, String)>,
    next_v4: u32,
    next_v6: u32,
    etag: u64,
    /// Emit IPv6 addresses upper-cased in GETs, as NRP has been seen doing.
    pub uppercase_ipv6: bool,
    /// NRP removes overlay mappings asynchronously: after a service's last address is removed,
    /// this many unregistrations of it are still rejected with
    /// `ServiceWithOverlayMappingsCannotBeDeleted` (0: none).
    pub overlay_lag: u32,
    lagging: BTreeMap<String, u32>,
    /// Service key -> how many mapped addresses name it (an index over `locations`, so checks
    /// and updates cost the same however many addresses are mapped).
    mapped: BTreeMap<String, usize>,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ArmError> {
    v.as_object().ok_or_else(|| ArmError::format(format!("{what} must be a JSON object")))
}

fn props_of(body: &Value) -> Result<Option<&Map<String, Value>>, ArmError> {
    match body.get("properties") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ArmError::format("properties must be a JSON object")),
    }
}

/// The `id`s of an array of `{ "id": ... }` (missing array = empty).
fn ids_of(v: Option<&Value>, what: &str) -> Result<Vec<String>, ArmError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| e.get("id").and_then(Value::as_str).map(String::from).ok_or_else(|| ArmError::format(format!("{what}[] needs an id"))))
            .collect(),
        Some(_) => Err(ArmError::format(format!("{what} must be an array"))),
    }
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr, ArmError> {
    s.parse::<IpAddr>().map_err(|_| ArmError::format(format!("{what} {s:?} is not an IP address")))
}

impl EmulatorState {
    pub fn new() -> Self {
        Self::default()
    }

    fn next_etag(&mut self) -> u64 {
        self.etag = self.etag.wrapping_add(1);
        self.etag
    }

    fn ip_text(&self, ip: &IpAddr) -> String {
        match ip {
            IpAddr::V6(_) if self.uppercase_ipv6 => ip.to_string().to_ascii_uppercase(),
            _ => ip.to_string(),
        }
    }

    fn allocate(&mut self, version: &str) -> String {
        if version == "IPv6" {
            self.next_v6 = self.next_v6.wrapping_add(1);
            format!("2603:1030:20e::{:x}", self.next_v6)
        } else {
            self.next_v4 = self.next_v4.wrapping_add(1);
            let n = self.next_v4;
            format!("20.{}.{}.{}", 40 + ((n >> 16) & 0x7f), (n >> 8) & 0xff, n & 0xff)
        }
    }

    fn check_writable(&self, kind: ResourceKind, name: &str) -> Result<(), ArmError> {
        if self.protected.contains(&(kind, key(name))) {
            return Err(ArmError::new(
                409,
                codes::RP_OWNED,
                format!("{} '{name}' is owned by the AKS resource provider and cannot be modified.", kind.segment()),
            ));
        }
        Ok(())
    }

    /// Seeds the AKS-owned `default-natgw`: its public IP, the NAT gateway and its default Outbound
    /// ServiceGateway entry. `provider_path` is `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network`.
    pub fn seed_default_natgw(&mut self, provider_path: &str, location: &str) {
        let pip_id = format!("{provider_path}/publicIPAddresses/{DEFAULT_NATGW_PIP}");
        let nat_id = format!("{provider_path}/natGateways/{DEFAULT_NATGW}");
        let address = self.allocate("IPv4");
        let etag = self.next_etag();
        self.pips.insert(
            key(DEFAULT_NATGW_PIP),
            PublicIp { name: DEFAULT_NATGW_PIP.into(), id: pip_id.clone(), version: "IPv4", address, location: location.into(), etag },
        );
        let body = json!({
            "id": nat_id,
            "location": location,
            "name": DEFAULT_NATGW,
            "properties": {
                "publicIpAddresses": [ { "id": pip_id } ],
                "serviceGateway": { "id": format!("{provider_path}/serviceGateways/{SERVICE_GATEWAY_NAME}") },
            },
            "sku": { "name": "StandardV2" },
        });
        let etag = self.next_etag();
        self.nats.insert(key(DEFAULT_NATGW), NatGateway { name: DEFAULT_NATGW.into(), body, pips: vec![key(DEFAULT_NATGW_PIP)], etag });
        self.services.insert(
            key(DEFAULT_NATGW),
            SgwEntry {
                name: DEFAULT_NATGW.into(),
                service_type: "Outbound".into(),
                pools: Vec::new(),
                nat_id: Some(nat_id),
                is_default: true,
            },
        );
        self.protected.insert((ResourceKind::PublicIp, key(DEFAULT_NATGW_PIP)));
        self.protected.insert((ResourceKind::NatGateway, key(DEFAULT_NATGW)));
    }

    /// Performs one request. `id` is the resource path of the request (used as the `id` of what
    /// is created); `provider_path` the `…/providers/Microsoft.Network` prefix it came under.
    pub fn apply(&mut self, method: Method, target: &Target, provider_path: &str, body: Option<&Value>) -> Result<Reply, ArmError> {
        let need_body = || body.ok_or_else(|| ArmError::new(400, "InvalidRequestContent", "The request has no body."));
        match (method, target) {
            (Method::Put, Target::Resource(kind, name)) => {
                let id = format!("{provider_path}/{}/{name}", kind.segment());
                match kind {
                    ResourceKind::PublicIp => self.put_public_ip(name, &id, need_body()?),
                    ResourceKind::LoadBalancer => self.put_load_balancer(name, &id, need_body()?),
                    ResourceKind::NatGateway => self.put_nat_gateway(name, &id, need_body()?),
                }
            }
            (Method::Get, Target::Resource(kind, name)) => self.get(*kind, name).map(Reply::Resource),
            (Method::Delete, Target::Resource(kind, name)) => self.delete(*kind, name),
            (Method::Get, Target::Collection(kind)) => Ok(Reply::List(self.list(*kind))),
            (Method::Get, Target::ServiceGateway) => Ok(Reply::Resource(self.service_gateway(provider_path))),
            (Method::Get, Target::SgwServices) => Ok(Reply::List(self.list_services(provider_path))),
            (Method::Get, Target::SgwAddressLocations) => Ok(Reply::List(self.list_address_locations())),
            (Method::Post, Target::SgwUpdateServices) => self.update_services(need_body()?).map(|_| Reply::Done),
            (Method::Post, Target::SgwUpdateAddressLocations) => self.update_address_locations(need_body()?).map(|_| Reply::Done),
            (m, _) => Err(ArmError::new(405, "HttpMethodNotAllowed", format!("{} is not supported on this resource.", m.as_str()))),
        }
    }

    // -------------------------------------------------------------------- public IPs

    fn put_public_ip(&mut self, name: &str, id: &str, body: &Value) -> Result<Reply, ArmError> {
        self.check_writable(ResourceKind::PublicIp, name)?;
        let o = obj(body, "the public IP")?;
        let props = props_of(body)?;
        let version = match props.and_then(|p| p.get("publicIPAddressVersion")) {
            None | Some(Value::Null) => "IPv4",
            Some(Value::String(s)) if s.eq_ignore_ascii_case("IPv4") => "IPv4",
            Some(Value::String(s)) if s.eq_ignore_ascii_case("IPv6") => "IPv6",
            Some(v) => return Err(ArmError::format(format!("publicIPAddressVersion {v} is not IPv4 or IPv6"))),
        };
        let location = o.get("location").and_then(Value::as_str).unwrap_or("").to_string();
        let k = key(name);
        let etag = self.next_etag();
        let created = !self.pips.contains_key(&k);
        let address = match self.pips.get(&k) {
            Some(p) if p.version == version => p.address.clone(),
            Some(_) if self.pip_users(&k).is_some() => {
                return Err(ArmError::bad(
                    codes::PUBLIC_IP_IN_USE,
                    format!("Public IP '{name}' is in use; its address version cannot change."),
                ))
            }
            _ => self.allocate(version),
        };
        let pip = PublicIp { name: name.into(), id: id.into(), version, address, location, etag };
        self.pips.insert(k.clone(), pip);
        Ok(Reply::Put { created, body: self.pip_json(&k) })
    }

    /// Who references a public IP: `(kind, user id)`.
    fn pip_users(&self, pip_key: &str) -> Option<(ResourceKind, String)> {
        for lb in self.lbs.values() {
            if lb.pips.iter().any(|p| p == pip_key) {
                return Some((ResourceKind::LoadBalancer, lb.body.get("id").and_then(Value::as_str).unwrap_or(&lb.name).to_string()));
            }
        }
        for nat in self.nats.values() {
            if nat.pips.iter().any(|p| p == pip_key) {
                return Some((ResourceKind::NatGateway, nat.body.get("id").and_then(Value::as_str).unwrap_or(&nat.name).to_string()));
            }
        }
        None
    }

    fn pip_json(&self, k: &str) -> Value {
        let Some(p) = self.pips.get(k) else { return Value::Null };
        let mut props = Map::new();
        props.insert("idleTimeoutInMinutes".into(), json!(4));
        let ip: IpAddr = p.address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        props.insert("ipAddress".into(), json!(self.ip_text(&ip)));
        props.insert("ipTags".into(), json!([]));
        match self.pip_users(k) {
            Some((ResourceKind::LoadBalancer, lb_id)) => {
                props.insert("ipConfiguration".into(), json!({ "id": format!("{lb_id}/frontendIPConfigurations/frontend") }));
            }
            Some((_, nat_id)) => {
                props.insert("natGateway".into(), json!({ "id": nat_id }));
            }
            None => {}
        }
        props.insert("provisioningState".into(), json!("Succeeded"));
        props.insert("publicIPAddressVersion".into(), json!(p.version));
        props.insert("publicIPAllocationMethod".into(), json!("Static"));
        props.insert("resourceGuid".into(), json!(format!("00000000-0000-4000-8000-{:012x}", p.etag)));
        json!({
            "etag": format!("W/\"{:016x}\"", p.etag),
            "id": p.id,
            "location": p.location,
            "name": p.name,
            "properties": Value::Object(props),
            "sku": { "name": "StandardV2", "tier": "Regional" },
            "type": ResourceKind::PublicIp.arm_type(),
        })
    }

    /// Resolves references to public IPs; each must exist and not be used by another resource.
    fn resolve_pips(&self, ids: &[String], user: (ResourceKind, &str)) -> Result<Vec<String>, ArmError> {
        let mut out = Vec::new();
        for id in ids {
            let name = id_segment_after(id, "publicIPAddresses").ok_or_else(|| {
                ArmError::bad(codes::INVALID_RESOURCE_REFERENCE, format!("Resource reference {id} is not a public IP address."))
            })?;
            let k = key(name);
            if !self.pips.contains_key(&k) {
                return Err(ArmError::bad(
                    codes::INVALID_RESOURCE_REFERENCE,
                    format!("Resource {id} referenced by resource {} was not found.", user.1),
                ));
            }
            if let Some((kind, by)) = self.pip_users(&k) {
                let same = kind == user.0 && id_segment_after(&by, kind.segment()).is_some_and(|n| n.eq_ignore_ascii_case(user.1));
                if !same {
                    return Err(ArmError::bad(codes::PUBLIC_IP_IN_USE, format!("Public IP address {id} is already in use by {by}.")));
                }
            }
            out.push(k);
        }
        Ok(out)
    }

    // -------------------------------------------------------------------- load balancers

    fn put_load_balancer(&mut self, name: &str, id: &str, body: &Value) -> Result<Reply, ArmError> {
        let o = obj(body, "the load balancer")?;
        let props = props_of(body)?;
        let mut pip_ids = Vec::new();
        if let Some(fes) = props.and_then(|p| p.get("frontendIPConfigurations")) {
            let fes = fes.as_array().ok_or_else(|| ArmError::format("frontendIPConfigurations must be an array"))?;
            for fe in fes {
                if let Some(pid) = fe.pointer("/properties/publicIPAddress/id").and_then(Value::as_str) {
                    pip_ids.push(pid.to_string());
                }
            }
        }
        let pips = self.resolve_pips(&pip_ids, (ResourceKind::LoadBalancer, name))?;
        let mut pools = BTreeSet::new();
        if let Some(ps) = props.and_then(|p| p.get("backendAddressPools")) {
            let ps = ps.as_array().ok_or_else(|| ArmError::format("backendAddressPools must be an array"))?;
            for p in ps {
                let n = p.get("name").and_then(Value::as_str).ok_or_else(|| ArmError::format("every backend pool needs a name"))?;
                pools.insert(key(n));
            }
        }
        let k = key(name);
        let created = !self.lbs.contains_key(&k);
        let mut stored = Value::Object(o.clone());
        stored["id"] = json!(id);
        stored["name"] = json!(name);
        let etag = self.next_etag();
        self.lbs.insert(k.clone(), LoadBalancer { name: name.into(), body: stored, pips, pools, etag });
        Ok(Reply::Put { created, body: self.resource_json(ResourceKind::LoadBalancer, &k) })
    }

    // -------------------------------------------------------------------- NAT gateways

    fn put_nat_gateway(&mut self, name: &str, id: &str, body: &Value) -> Result<Reply, ArmError> {
        self.check_writable(ResourceKind::NatGateway, name)?;
        let o = obj(body, "the NAT gateway")?;
        let props = props_of(body)?;
        let mut ids = ids_of(props.and_then(|p| p.get("publicIpAddresses")), "publicIpAddresses")?;
        ids.extend(ids_of(props.and_then(|p| p.get("publicIpAddressesV6")), "publicIpAddressesV6")?);
        let pips = self.resolve_pips(&ids, (ResourceKind::NatGateway, name))?;
        if let Some(sg) = props.and_then(|p| p.get("serviceGateway")).filter(|v| !v.is_null()) {
            let sid = sg.get("id").and_then(Value::as_str).unwrap_or("");
            if !id_segment_after(sid, "serviceGateways").is_some_and(|n| n.eq_ignore_ascii_case(SERVICE_GATEWAY_NAME)) {
                return Err(ArmError::bad(codes::INVALID_RESOURCE_REFERENCE, format!("ServiceGateway {sid:?} was not found.")));
            }
        }
        let k = key(name);
        let created = !self.nats.contains_key(&k);
        let mut stored = Value::Object(o.clone());
        // Read-only fields echoed back by a disassociation are not stored.
        if let Some(m) = stored.as_object_mut() {
            m.remove("etag");
            m.remove("type");
            if let Some(p) = m.get_mut("properties").and_then(Value::as_object_mut) {
                p.remove("provisioningState");
                p.remove("resourceGuid");
            }
        }
        stored["id"] = json!(id);
        stored["name"] = json!(name);
        let etag = self.next_etag();
        self.nats.insert(k.clone(), NatGateway { name: name.into(), body: stored, pips, etag });
        Ok(Reply::Put { created, body: self.resource_json(ResourceKind::NatGateway, &k) })
    }

    fn resource_json(&self, kind: ResourceKind, k: &str) -> Value {
        let (body, etag) = match kind {
            ResourceKind::PublicIp => return self.pip_json(k),
            ResourceKind::LoadBalancer => match self.lbs.get(k) {
                Some(lb) => (lb.body.clone(), lb.etag),
                None => return Value::Null,
            },
            ResourceKind::NatGateway => match self.nats.get(k) {
                Some(n) => (n.body.clone(), n.etag),
                None => return Value::Null,
            },
        };
        let mut v = body;
        if let Some(m) = v.as_object_mut() {
            m.insert("etag".into(), json!(format!("W/\"{etag:016x}\"")));
            m.insert("type".into(), json!(kind.arm_type()));
            let p = m.entry("properties").or_insert_with(|| json!({}));
            if let Some(p) = p.as_object_mut() {
                p.insert("provisioningState".into(), json!("Succeeded"));
                p.insert("resourceGuid".into(), json!(format!("00000000-0000-4000-8000-{etag:012x}")));
                if kind == ResourceKind::NatGateway {
                    p.entry("idleTimeoutInMinutes").or_insert(json!(4));
                }
            }
            if let Some(sku) = m.get_mut("sku").and_then(Value::as_object_mut) {
                sku.insert("tier".into(), json!("Regional"));
            }
        }
        v
    }

    fn get(&self, kind: ResourceKind, name: &str) -> Result<Value, ArmError> {
        let k = key(name);
        let exists = match kind {
            ResourceKind::PublicIp => self.pips.contains_key(&k),
            ResourceKind::LoadBalancer => self.lbs.contains_key(&k),
            ResourceKind::NatGateway => self.nats.contains_key(&k),
        };
        if !exists {
            return Err(ArmError::not_found(kind.arm_type(), name));
        }
        Ok(self.resource_json(kind, &k))
    }

    fn list(&self, kind: ResourceKind) -> Vec<Value> {
        let keys: Vec<&String> = match kind {
            ResourceKind::PublicIp => self.pips.keys().collect(),
            ResourceKind::LoadBalancer => self.lbs.keys().collect(),
            ResourceKind::NatGateway => self.nats.keys().collect(),
        };
        keys.into_iter().map(|k| self.resource_json(kind, k)).collect()
    }

    fn delete(&mut self, kind: ResourceKind, name: &str) -> Result<Reply, ArmError> {
        let k = key(name);
        match kind {
            ResourceKind::PublicIp => {
                if !self.pips.contains_key(&k) {
                    return Err(ArmError::not_found(kind.arm_type(), name));
                }
                self.check_writable(kind, name)?;
                if let Some((_, by)) = self.pip_users(&k) {
                    return Err(ArmError::bad(
                        codes::PUBLIC_IP_CANNOT_BE_DELETED,
                        format!("Public IP address {name} can not be deleted since it is still allocated to resource {by}."),
                    ));
                }
                self.pips.remove(&k);
            }
            ResourceKind::LoadBalancer => {
                if self.lbs.remove(&k).is_none() {
                    return Err(ArmError::not_found(kind.arm_type(), name));
                }
            }
            ResourceKind::NatGateway => {
                if !self.nats.contains_key(&k) {
                    return Err(ArmError::not_found(kind.arm_type(), name));
                }
                self.check_writable(kind, name)?;
                self.nats.remove(&k);
            }
        }
        Ok(Reply::Deleted)
    }

    fn service_gateway(&self, provider_path: &str) -> Value {
        json!({
            "id": format!("{provider_path}/serviceGateways/{SERVICE_GATEWAY_NAME}"),
            "name": SERVICE_GATEWAY_NAME,
            "properties": { "provisioningState": "Succeeded" },
            "sku": { "name": "Standard", "tier": "Regional" },
            "type": "Microsoft.Network/serviceGateways",
        })
    }

    // -------------------------------------------------------------------- ServiceGateway services

    fn list_services(&self, provider_path: &str) -> Vec<Value> {
        self.services
            .values()
            .map(|s| {
                let mut props = Map::new();
                if s.is_default {
                    props.insert("isDefault".into(), json!(true));
                }
                props.insert("loadBalancerBackendPools".into(), Value::Array(s.pools.iter().map(|id| json!({ "id": id })).collect()));
                props.insert("provisioningState".into(), json!("Succeeded"));
                if let Some(n) = &s.nat_id {
                    props.insert("publicNatGatewayId".into(), json!(n));
                }
                props.insert("serviceType".into(), json!(s.service_type));
                json!({
                    "id": format!("{provider_path}/serviceGateways/{SERVICE_GATEWAY_NAME}/services/{}", s.name),
                    "name": s.name,
                    "properties": Value::Object(props),
                    "type": "Microsoft.Network/serviceGateways/services",
                })
            })
            .collect()
    }

    fn has_mappings(&self, service_key: &str) -> bool {
        self.mapped.contains_key(service_key)
    }

    /// Counts `services` as mapped once more (`up`) or once less; services whose last mapping
    /// went are added to `unmapped`.
    fn count_mapped(&mut self, services: &BTreeSet<String>, up: bool, unmapped: &mut BTreeSet<String>) {
        for s in services {
            if up {
                *self.mapped.entry(s.clone()).or_default() += 1;
            } else if let Some(n) = self.mapped.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.mapped.remove(s);
                    unmapped.insert(s.clone());
                }
            }
        }
    }

    /// Removes a whole location, keeping the index.
    fn remove_location(&mut self, node: &IpAddr, unmapped: &mut BTreeSet<String>) {
        if let Some(addrs) = self.locations.remove(node) {
            for set in addrs.values() {
                self.count_mapped(set, false, unmapped);
            }
        }
    }

    /// Sets (or, with an empty set, removes) one address, keeping the index.
    fn set_address(&mut self, node: IpAddr, addr: IpAddr, set: BTreeSet<String>, unmapped: &mut BTreeSet<String>) {
        let entry = self.locations.entry(node).or_default();
        let old = if set.is_empty() { entry.remove(&addr) } else { entry.insert(addr, set.clone()) };
        if entry.is_empty() {
            self.locations.remove(&node);
        }
        if let Some(old) = old {
            self.count_mapped(&old, false, unmapped);
        }
        self.count_mapped(&set, true, unmapped);
    }

    /// §3.13 POST updateServices. The whole request is validated before anything changes.
    pub fn update_services(&mut self, body: &Value) -> Result<(), ArmError> {
        let o = obj(body, "the request")?;
        let full = match o.get("action").and_then(Value::as_str) {
            Some(a) if a.eq_ignore_ascii_case("PartialUpdate") => false,
            Some(a) if a.eq_ignore_ascii_case("FullUpdate") => true,
            other => return Err(ArmError::format(format!("action must be PartialUpdate or FullUpdate, got {other:?}"))),
        };
        let reqs =
            o.get("serviceRequests").and_then(Value::as_array).ok_or_else(|| ArmError::format("serviceRequests must be an array"))?;
        enum Change {
            Upsert(String, SgwEntry),
            Delete(String),
        }
        let mut changes = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, r) in reqs.iter().enumerate() {
            let is_delete = match r.get("isDelete") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ArmError::format(format!("serviceRequests[{i}].isDelete must be a boolean"))),
            };
            let svc = r.get("service").ok_or_else(|| ArmError::format(format!("serviceRequests[{i}].service is missing")))?;
            let name = svc
                .get("name")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ArmError::format(format!("serviceRequests[{i}].service.name is missing")))?;
            let k = key(name);
            if !seen.insert(k.clone()) {
                return Err(ArmError::bad(codes::DUPLICATE_SERVICES, format!("Service {name} appears more than once in the request.")));
            }
            let existing = self.services.get(&k);
            if existing.is_some_and(|e| e.is_default) {
                return Err(ArmError::bad(
                    codes::MULTIPLE_DEFAULT,
                    format!("Service {name} is the default service of the ServiceGateway and cannot be changed."),
                ));
            }
            if is_delete {
                if existing.is_none() {
                    return Err(ArmError::new(
                        404,
                        codes::RESOURCE_NOT_FOUND,
                        format!("Service {name} is not registered in the ServiceGateway."),
                    ));
                }
                if self.has_mappings(&k) {
                    return Err(ArmError::bad(
                        codes::OVERLAY_MAPPINGS,
                        format!("Service {name} cannot be deleted because addresses are still mapped to it."),
                    ));
                }
                if let Some(left) = self.lagging.get_mut(&k).filter(|n| **n > 0) {
                    *left -= 1;
                    return Err(ArmError::bad(
                        codes::OVERLAY_MAPPINGS,
                        format!("Service {name} cannot be deleted yet: its overlay mappings are still being removed."),
                    ));
                }
                changes.push(Change::Delete(k));
                continue;
            }
            let props = svc.get("properties").and_then(Value::as_object);
            let st = props
                .and_then(|p| p.get("serviceType"))
                .and_then(Value::as_str)
                .ok_or_else(|| ArmError::format(format!("serviceRequests[{i}] ({name}): serviceType is missing")))?;
            let service_type = match st.to_ascii_lowercase().as_str() {
                "inbound" => "Inbound",
                "outbound" => "Outbound",
                "inboundoutbound" => "InboundOutbound",
                _ => return Err(ArmError::format(format!("serviceRequests[{i}] ({name}): serviceType {st:?} is not valid"))),
            };
            let is_default = match props.and_then(|p| p.get("isDefault")) {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ArmError::format(format!("serviceRequests[{i}] ({name}): isDefault must be a boolean"))),
            };
            if is_default {
                return Err(ArmError::bad(
                    codes::MULTIPLE_DEFAULT,
                    format!("Service {name} cannot be made a default service: the ServiceGateway already has one."),
                ));
            }
            let pool_ids = ids_of(props.and_then(|p| p.get("loadBalancerBackendPools")), "loadBalancerBackendPools")?;
            for id in &pool_ids {
                let lb = id_segment_after(id, "loadBalancers");
                let pool = id_segment_after(id, "backendAddressPools");
                let ok = match (lb, pool) {
                    (Some(lb), Some(pool)) => self.lbs.get(&key(lb)).is_some_and(|l| l.pools.contains(&key(pool))),
                    _ => false,
                };
                if !ok {
                    return Err(ArmError::bad(
                        codes::INVALID_RESOURCE_REFERENCE,
                        format!("Backend address pool {id} referenced by service {name} was not found."),
                    ));
                }
            }
            let nat_id = match props.and_then(|p| p.get("publicNatGatewayId")) {
                None => existing.and_then(|e| e.nat_id.clone()),
                Some(Value::Null) => None,
                Some(Value::String(id)) => {
                    let found = id_segment_after(id, "natGateways").is_some_and(|n| self.nats.contains_key(&key(n)));
                    if !found {
                        return Err(ArmError::bad(
                            codes::INVALID_RESOURCE_REFERENCE,
                            format!("NAT gateway {id} referenced by service {name} was not found."),
                        ));
                    }
                    Some(id.clone())
                }
                Some(_) => {
                    return Err(ArmError::format(format!("serviceRequests[{i}] ({name}): publicNatGatewayId must be a string or null")))
                }
            };
            let entry = SgwEntry { name: name.into(), service_type: service_type.into(), pools: pool_ids, nat_id, is_default: false };
            changes.push(Change::Upsert(k, entry));
        }
        if full {
            for (k, s) in &self.services {
                if s.is_default || seen.contains(k) {
                    continue;
                }
                if self.has_mappings(k) {
                    return Err(ArmError::bad(
                        codes::OVERLAY_MAPPINGS,
                        format!("Service {} cannot be deleted because addresses are still mapped to it.", s.name),
                    ));
                }
            }
            let keep: BTreeSet<String> =
                self.services.iter().filter(|(k, s)| s.is_default || seen.contains(*k)).map(|(k, _)| k.clone()).collect();
            self.services.retain(|k, _| keep.contains(k));
        }
        for c in changes {
            match c {
                Change::Upsert(k, e) => {
                    self.services.insert(k, e);
                }
                Change::Delete(k) => {
                    self.services.remove(&k);
                }
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------------- address locations

    fn list_address_locations(&self) -> Vec<Value> {
        self.locations
            .iter()
            .map(|(node, addrs)| {
                let addresses: Vec<Value> = addrs
                    .iter()
                    .map(|(pod, svcs)| {
                        let names: Vec<&str> = svcs.iter().map(|s| self.services.get(s).map(|e| e.name.as_str()).unwrap_or(s)).collect();
                        json!({ "address": self.ip_text(pod), "services": names })
                    })
                    .collect();
                json!({ "addressLocation": self.ip_text(node), "addresses": addresses })
            })
            .collect()
    }

    /// §3.14 POST updateAddressLocations, with FullUpdate / PartialUpdate / empty-list semantics.
    pub fn update_address_locations(&mut self, body: &Value) -> Result<(), ArmError> {
        let o = obj(body, "the request")?;
        let full = match o.get("action").and_then(Value::as_str) {
            Some(a) if a.eq_ignore_ascii_case("PartialUpdate") => false,
            Some(a) if a.eq_ignore_ascii_case("FullUpdate") => true,
            other => return Err(ArmError::format(format!("action must be PartialUpdate or FullUpdate, got {other:?}"))),
        };
        let locs =
            o.get("addressLocations").and_then(Value::as_array).ok_or_else(|| ArmError::format("addressLocations must be an array"))?;
        struct Loc {
            node: IpAddr,
            full: bool,
            addrs: Vec<(IpAddr, BTreeSet<String>)>,
        }
        let mut parsed = Vec::new();
        let mut seen_nodes = BTreeSet::new();
        for (i, l) in locs.iter().enumerate() {
            let node_s = l
                .get("addressLocation")
                .and_then(Value::as_str)
                .ok_or_else(|| ArmError::format(format!("addressLocations[{i}].addressLocation is missing")))?;
            let node = parse_ip(node_s, "addressLocation")?;
            if !seen_nodes.insert(node) {
                return Err(ArmError::bad(
                    codes::DUPLICATE_LOCATIONS,
                    format!("Address location {node_s} appears more than once in the request."),
                ));
            }
            let loc_full = match l.get("addressUpdateAction").and_then(Value::as_str) {
                Some(a) if a.eq_ignore_ascii_case("FullUpdate") => true,
                Some(a) if a.eq_ignore_ascii_case("PartialUpdate") => false,
                other => {
                    return Err(ArmError::format(format!(
                        "addressLocations[{i}].addressUpdateAction must be FullUpdate or PartialUpdate, got {other:?}"
                    )))
                }
            };
            let addrs = l
                .get("addresses")
                .and_then(Value::as_array)
                .ok_or_else(|| ArmError::format(format!("addressLocations[{i}].addresses must be an array")))?;
            let mut seen_addrs = BTreeSet::new();
            let mut out = Vec::new();
            for (j, a) in addrs.iter().enumerate() {
                let addr_s = a
                    .get("address")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ArmError::format(format!("addressLocations[{i}].addresses[{j}].address is missing")))?;
                let addr = parse_ip(addr_s, "address")?;
                if addr.is_ipv4() != node.is_ipv4() {
                    return Err(ArmError::bad(
                        codes::ADDRESS_FAMILY_MISMATCH,
                        format!("Address {addr_s} and its location {node_s} are of different IP families."),
                    ));
                }
                if !seen_addrs.insert(addr) {
                    return Err(ArmError::bad(
                        codes::DUPLICATE_ADDRESSES,
                        format!("Address {addr_s} appears more than once under {node_s}."),
                    ));
                }
                let svcs = a
                    .get("services")
                    .and_then(Value::as_array)
                    .ok_or_else(|| ArmError::format(format!("addressLocations[{i}].addresses[{j}].services must be an array")))?;
                let mut set = BTreeSet::new();
                for s in svcs {
                    let s = s.as_str().ok_or_else(|| ArmError::format("service names must be strings"))?;
                    let k = key(s);
                    if !self.services.contains_key(&k) {
                        return Err(ArmError::bad(
                            codes::SERVICE_NOT_REGISTERED,
                            format!("Service {s} referenced by address {addr_s} is not registered in the ServiceGateway."),
                        ));
                    }
                    set.insert(k);
                }
                out.push((addr, set));
            }
            parsed.push(Loc { node, full: loc_full, addrs: out });
        }
        let mut unmapped = BTreeSet::new();
        if full {
            let gone: Vec<IpAddr> = self.locations.keys().filter(|node| !seen_nodes.contains(*node)).copied().collect();
            for node in gone {
                self.remove_location(&node, &mut unmapped);
            }
        }
        for l in parsed {
            if l.full || l.addrs.is_empty() {
                self.remove_location(&l.node, &mut unmapped);
            }
            for (addr, set) in l.addrs {
                self.set_address(l.node, addr, set, &mut unmapped);
            }
        }
        if self.overlay_lag > 0 {
            for gone in unmapped.into_iter().filter(|s| !self.mapped.contains_key(s)) {
                self.lagging.insert(gone, self.overlay_lag);
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------------- inventory

    /// The whole state: `{"public_ips":{name:ip},"load_balancers":[..],"nat_gateways":[..],
    /// "sgw_services":{name:type},"address_locations":{node:{pod:[service..]}}}`, keys sorted.
    pub fn inventory(&self) -> Value {
        let public_ips: Map<String, Value> = self.pips.values().map(|p| (p.name.clone(), json!(p.address))).collect();
        let mut lbs: Vec<&str> = self.lbs.values().map(|l| l.name.as_str()).collect();
        lbs.sort();
        let mut nats: Vec<&str> = self.nats.values().map(|n| n.name.as_str()).collect();
        nats.sort();
        let sgw: Map<String, Value> = self.services.values().map(|s| (s.name.clone(), json!(s.service_type))).collect();
        let locations: Map<String, Value> = self
            .locations
            .iter()
            .map(|(node, addrs)| {
                let m: Map<String, Value> = addrs
                    .iter()
                    .map(|(pod, svcs)| {
                        let mut names: Vec<&str> =
                            svcs.iter().map(|s| self.services.get(s).map(|e| e.name.as_str()).unwrap_or(s)).collect();
                        names.sort();
                        (pod.to_string(), json!(names))
                    })
                    .collect();
                (node.to_string(), Value::Object(m))
            })
            .collect();
        json!({
            "address_locations": locations,
            "load_balancers": lbs,
            "nat_gateways": nats,
            "public_ips": public_ips,
            "sgw_services": sgw,
        })
    }

    /// Names of the seeded resources no client may write (for assertions).
    pub fn is_protected(&self, kind: ResourceKind, name: &str) -> bool {
        self.protected.contains(&(kind, key(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network";

    fn state_with_lb(name: &str) -> EmulatorState {
        let mut s = EmulatorState::new();
        let pip = json!({"properties": {"publicIPAddressVersion": "IPv4"}});
        s.apply(Method::Put, &Target::Resource(ResourceKind::PublicIp, format!("{name}-pip")), NET, Some(&pip)).unwrap();
        let lb = json!({"properties": {
            "backendAddressPools": [{"name": name}],
            "frontendIPConfigurations": [{"name": "frontend", "properties": {"publicIPAddress": {"id": format!("{NET}/publicIPAddresses/{name}-pip")}}}]}});
        s.apply(Method::Put, &Target::Resource(ResourceKind::LoadBalancer, name.into()), NET, Some(&lb)).unwrap();
        let reg = json!({"action": "PartialUpdate", "serviceRequests": [{"isDelete": false, "service": {"name": name, "properties": {
            "serviceType": "Inbound", "loadBalancerBackendPools": [{"id": format!("{NET}/loadBalancers/{name}/backendAddressPools/{name}")}]}}}]});
        s.update_services(&reg).unwrap();
        s
    }

    #[test]
    fn addresses_are_deterministic_and_of_the_requested_family() {
        let run = || {
            let mut s = EmulatorState::new();
            let mut out = Vec::new();
            for (n, v) in [("a", "IPv4"), ("b", "IPv6"), ("c", "IPv4")] {
                let body = json!({"properties": {"publicIPAddressVersion": v}});
                let Reply::Put { body, created } =
                    s.apply(Method::Put, &Target::Resource(ResourceKind::PublicIp, n.into()), NET, Some(&body)).unwrap()
                else {
                    panic!()
                };
                assert!(created);
                out.push(body["properties"]["ipAddress"].as_str().unwrap().to_string());
            }
            out
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a[0].parse::<std::net::Ipv4Addr>().is_ok() && a[1].parse::<std::net::Ipv6Addr>().is_ok());
        assert_ne!(a[0], a[2]);
    }

    #[test]
    fn the_overlay_lag_rejects_unregistration_after_the_drain() {
        let mut s = state_with_lb("u");
        s.overlay_lag = 2;
        let publish = |addrs: Value| {
            json!({"action": "PartialUpdate", "addressLocations": [
            {"addressLocation": "10.0.0.1", "addressUpdateAction": "PartialUpdate", "addresses": addrs}]})
        };
        s.update_address_locations(&publish(json!([{"address": "10.1.0.1", "services": ["U"]}]))).unwrap();
        s.update_address_locations(&publish(json!([]))).unwrap();
        let unreg = json!({"action": "PartialUpdate", "serviceRequests": [{"isDelete": true, "service": {"name": "u", "properties": {"serviceType": "Inbound"}}}]});
        for _ in 0..2 {
            assert_eq!(s.update_services(&unreg).unwrap_err().code, codes::OVERLAY_MAPPINGS);
        }
        s.update_services(&unreg).unwrap();
        assert_eq!(s.update_services(&unreg).unwrap_err().status, 404);
    }

    #[test]
    fn full_update_of_services_removes_the_unlisted_but_keeps_the_default() {
        let mut s = state_with_lb("u");
        s.seed_default_natgw(NET, "eastus2");
        let full = json!({"action": "FullUpdate", "serviceRequests": []});
        s.update_services(&full).unwrap();
        assert_eq!(s.inventory()["sgw_services"], json!({"default-natgw": "Outbound"}));
        // Malformed requests are refused with a format error, not a panic.
        for bad in [json!(null), json!({"action": "Sideways"}), json!({"action": "PartialUpdate", "serviceRequests": [{"service": {}}]})] {
            assert_eq!(s.update_services(&bad).unwrap_err().status, 400, "{bad}");
        }
        for bad in [
            json!({"action": "PartialUpdate", "addressLocations": [{"addressLocation": "nope", "addressUpdateAction": "FullUpdate", "addresses": []}]}),
            json!({"action": "PartialUpdate", "addressLocations": [{"addressLocation": "10.0.0.1", "addresses": []}]}),
            json!({"action": "PartialUpdate", "addressLocations": [{"addressLocation": "10.0.0.1", "addressUpdateAction": "FullUpdate", "addresses": null}]}),
        ] {
            assert_eq!(s.update_address_locations(&bad).unwrap_err().status, 400, "{bad}");
        }
    }
}
