//! The semantic core of the ARM/NRP emulator: in-memory public IPs, load balancers, NAT gateways,
//! ServiceGateway services and address locations, with Azure's referential rules. No HTTP, no
//! clock, no randomness: the same requests in the same order give the same state (addresses are
//! allocated from counters), so it serves both the HTTP server and deterministic replay.
//!
//! Everything lives in a resource group of a subscription ([`ScopeKey`]); the state knows which
//! resource groups exist ([`EmulatorState::add_resource_group`]) and answers
//! `SubscriptionNotFound` / `ResourceGroupNotFound` for the others, as ARM does. Each resource
//! group has its own resources, ServiceGateway services and address locations; references in a
//! body (a frontend's public IP, a rule's pool, a service's NAT gateway) must be fully qualified
//! IDs in the resource group of the request.
//!
//! Requests and answers are the wire JSON of AZURE-WIRE.md section 3; errors carry the HTTP status
//! and ARM error code Azure answers with ([`codes`]).

use super::cloud_state::CloudState;
use difftracker_runtime::transport::config::{ResourceKind, SERVICE_GATEWAY_NAME};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// ARM error codes the emulator answers with.
pub mod codes {
    pub const RESOURCE_NOT_FOUND: &str = "ResourceNotFound";
    pub const SUBSCRIPTION_NOT_FOUND: &str = "SubscriptionNotFound";
    pub const RESOURCE_GROUP_NOT_FOUND: &str = "ResourceGroupNotFound";
    /// No `Authorization` header, or not a bearer token.
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    /// A bearer token the emulator was not configured to accept.
    pub const INVALID_AUTHENTICATION_TOKEN: &str = "InvalidAuthenticationToken";
    /// A valid token whose principal has no access to the scope (ARM's 403).
    pub const AUTHORIZATION_FAILED: &str = "AuthorizationFailed";
    /// `If-Match` / `If-None-Match` not met.
    pub const PRECONDITION_FAILED: &str = "PreconditionFailed";
    /// A tracked resource (public IP, load balancer, NAT gateway) without a `location`.
    pub const LOCATION_REQUIRED: &str = "LocationRequired";
    /// A PUT that would move an existing resource to another region.
    pub const INVALID_RESOURCE_LOCATION: &str = "InvalidResourceLocation";
    /// A reference that is not a fully qualified resource ID.
    pub const LINKED_INVALID_PROPERTY_ID: &str = "LinkedInvalidPropertyId";
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
    /// A request body over the emulator's limit ([`RequestLimits`](super::super::RequestLimits)), answered 413.
    pub const REQUEST_ENTITY_TOO_LARGE: &str = "RequestEntityTooLarge";
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

/// A subscription and resource group, spelled as a URL or a configuration gives them (ARM
/// compares them case-insensitively).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeKey {
    pub subscription: String,
    pub resource_group: String,
}

impl ScopeKey {
    pub fn new(subscription: impl Into<String>, resource_group: impl Into<String>) -> Self {
        ScopeKey { subscription: subscription.into(), resource_group: resource_group.into() }
    }

    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network`.
    pub fn provider_path(&self) -> String {
        format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network", self.subscription, self.resource_group)
    }

    fn lower(&self) -> (String, String) {
        (key(&self.subscription), key(&self.resource_group))
    }

    /// Whether `other` names the same resource group.
    pub fn same_as(&self, other: &ScopeKey) -> bool {
        self.lower() == other.lower()
    }
}

/// What a request is aimed at (within its [`ScopeKey`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Collection(ResourceKind),
    Resource(ResourceKind, String),
    ServiceGateway,
    SgwServices,
    SgwAddressLocations,
    SgwUpdateServices,
    SgwUpdateAddressLocations,
    /// A ServiceGateway other than `servicegateway` (none exists), or anything under one.
    OtherServiceGateway(String),
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

/// The conditional headers of a write (`If-Match`, `If-None-Match`), as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
}

impl Conditions {
    pub const NONE: Conditions = Conditions { if_match: None, if_none_match: None };
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
    /// A DELETE of something that did not exist (ARM: 204 No Content).
    NoContent,
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
    sku: Value,
    tags: Option<Value>,
    zones: Option<Value>,
    ip_tags: Value,
    idle_timeout: u64,
    allocation: &'static str,
    etag: u64,
}

#[derive(Clone, Debug)]
struct LoadBalancer {
    name: String,
    location: String,
    /// The stored body: children carry their ids, etag, type and provisioning state.
    body: Value,
    /// (frontend name, lower-cased public IP name) of each frontend with a public IP.
    frontends: Vec<(String, String)>,
    /// Lower-cased backend pool names.
    pools: BTreeSet<String>,
    etag: u64,
}

#[derive(Clone, Debug)]
struct NatGateway {
    name: String,
    location: String,
    body: Value,
    pips: Vec<String>,
    etag: u64,
}

#[derive(Clone, Debug)]
struct RegisteredService {
    name: String,
    service_type: String,
    pools: Vec<String>,
    nat_id: Option<String>,
    is_default: bool,
}

/// One resource group: its resources, its ServiceGateway's services and address locations. Keys
/// of resources and services are lower-cased names (ARM names are case-insensitive); IPs are
/// stored canonical.
#[derive(Clone, Debug)]
struct Group {
    scope: ScopeKey,
    location: String,
    pips: BTreeMap<String, PublicIp>,
    lbs: BTreeMap<String, LoadBalancer>,
    nats: BTreeMap<String, NatGateway>,
    services: BTreeMap<String, RegisteredService>,
    /// node IP -> pod IP -> lower-cased service keys.
    locations: BTreeMap<IpAddr, BTreeMap<IpAddr, BTreeSet<String>>>,
    /// Lower-cased names of resources only the AKS resource provider may write.
    protected: BTreeSet<(ResourceKind, String)>,
    lagging: BTreeMap<String, u32>,
    /// Service key -> how many mapped addresses name it (an index over `locations`, so checks
    /// and updates cost the same however many addresses are mapped).
    mapped: BTreeMap<String, usize>,
    /// Lower-cased public IP name -> the kind and key of the load balancer or NAT gateway using
    /// it (an index over their frontends and public IPs, so finding a user costs the same however
    /// many resources the group holds).
    pip_owner: BTreeMap<String, (ResourceKind, String)>,
}

impl Group {
    fn new(scope: ScopeKey, location: String) -> Self {
        Group {
            scope,
            location,
            pips: BTreeMap::new(),
            lbs: BTreeMap::new(),
            nats: BTreeMap::new(),
            services: BTreeMap::new(),
            locations: BTreeMap::new(),
            protected: BTreeSet::new(),
            lagging: BTreeMap::new(),
            mapped: BTreeMap::new(),
            pip_owner: BTreeMap::new(),
        }
    }

    fn inventory(&self) -> Value {
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
}

/// Counters shared by every resource group: addresses and etags are unique across them.
#[derive(Clone, Debug, Default)]
struct Alloc {
    next_v4: u32,
    next_v6: u32,
    etag: u64,
}

/// Everything the emulator holds: its resource groups and the counters they share.
#[derive(Clone, Debug, Default)]
pub struct EmulatorState {
    /// (lower-cased subscription, lower-cased resource group) -> its content.
    groups: BTreeMap<(String, String), Group>,
    alloc: Alloc,
    /// Emit IPv6 addresses upper-cased in GETs, as NRP has been seen doing.
    pub uppercase_ipv6: bool,
    /// NRP removes overlay mappings asynchronously: after a service's last address is removed,
    /// this many unregistrations of it are still rejected with
    /// `ServiceWithOverlayMappingsCannotBeDeleted` (0: none).
    pub overlay_lag: u32,
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn etag_text(etag: u64) -> String {
    format!("W/\"{etag:016x}\"")
}

/// Whether two entity tags name the same version (weak comparison).
fn same_etag(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim().trim_start_matches("W/").trim_start_matches("w/").to_string();
    strip(a) == strip(b)
}

/// A region as ARM compares it: `East US 2` and `eastus2` are the same.
fn region(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase()
}

/// The request's `action` of the ServiceGateway POSTs: `FullUpdate` (true) or `PartialUpdate`.
fn full_update(o: &Map<String, Value>) -> Result<bool, ArmError> {
    match o.get("action").and_then(Value::as_str) {
        Some(a) if a.eq_ignore_ascii_case("PartialUpdate") => Ok(false),
        Some(a) if a.eq_ignore_ascii_case("FullUpdate") => Ok(true),
        other => Err(ArmError::format(format!("action must be PartialUpdate or FullUpdate, got {other:?}"))),
    }
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

/// An optional array (absent and `null` are empty).
fn array_of<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a [Value], ArmError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ArmError::format(format!("{what} must be an array"))),
    }
}

/// The `id`s of an array of `{ "id": ... }` (missing array = empty).
fn ids_of(v: Option<&Value>, what: &str) -> Result<Vec<String>, ArmError> {
    array_of(v, what)?
        .iter()
        .map(|e| e.get("id").and_then(Value::as_str).map(String::from).ok_or_else(|| ArmError::format(format!("{what}[] needs an id"))))
        .collect()
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr, ArmError> {
    s.parse::<IpAddr>().map_err(|_| ArmError::format(format!("{what} {s:?} is not an IP address")))
}

/// The names a fully qualified reference gives: the resource, and the child after it if any.
struct Ref<'a> {
    name: &'a str,
    child: Option<(&'a str, &'a str)>,
}

/// Parses `id` (a reference in a body at `path`) as
/// `/subscriptions/{s}/resourceGroups/{g}/providers/Microsoft.Network/{segment}/{name}[/{child}/{name}]`
/// in `scope`: a malformed ID is `LinkedInvalidPropertyId`, one in another resource group an
/// `InvalidResourceReference` (the emulator resolves references within one resource group).
fn parse_ref<'a>(id: &'a str, segment: &str, scope: &ScopeKey, path: &str) -> Result<Ref<'a>, ArmError> {
    let parts: Vec<&str> = id.split('/').collect();
    let well_formed = parts.len() >= 9
        && parts[0].is_empty()
        && parts[1].eq_ignore_ascii_case("subscriptions")
        && parts[3].eq_ignore_ascii_case("resourceGroups")
        && parts[5].eq_ignore_ascii_case("providers")
        && parts[6].eq_ignore_ascii_case("Microsoft.Network")
        && parts[7].eq_ignore_ascii_case(segment)
        && (parts.len() == 9 || parts.len() == 11)
        && parts.iter().skip(1).all(|p| !p.is_empty());
    if !well_formed {
        return Err(ArmError::bad(
            codes::LINKED_INVALID_PROPERTY_ID,
            format!(
                "Property id '{id}' at path '{path}' is invalid. Expect a fully qualified resource Id of a Microsoft.Network/{segment} resource, \
                 starting with '/subscriptions/{{subscriptionId}}'."
            ),
        ));
    }
    if !ScopeKey::new(parts[2], parts[4]).same_as(scope) {
        return Err(ArmError::bad(
            codes::INVALID_RESOURCE_REFERENCE,
            format!(
                "Resource {id} referenced at '{path}' is not in resource group '{}' of subscription '{}'; this emulator resolves references within the resource group of the request.",
                scope.resource_group, scope.subscription
            ),
        ));
    }
    Ok(Ref { name: parts[8], child: (parts.len() == 11).then(|| (parts[9], parts[10])) })
}

impl EmulatorState {
    /// A state that knows no subscription and no resource group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `scope` a resource group the emulator serves (its subscription becomes known too),
    /// with an empty ServiceGateway `servicegateway` in `location`. Adding it again changes nothing.
    pub fn add_resource_group(&mut self, scope: &ScopeKey, location: &str) {
        self.groups.entry(scope.lower()).or_insert_with(|| Group::new(scope.clone(), location.to_string()));
    }

    /// Whether the resource group is one the emulator serves.
    pub fn knows_scope(&self, scope: &ScopeKey) -> bool {
        self.groups.contains_key(&scope.lower())
    }

    /// Whether the subscription is one the emulator serves.
    pub fn knows_subscription(&self, subscription: &str) -> bool {
        let s = key(subscription);
        self.groups.keys().any(|(sub, _)| *sub == s)
    }

    /// `SubscriptionNotFound` or `ResourceGroupNotFound` unless `scope` is served.
    pub fn check_scope(&self, scope: &ScopeKey) -> Result<(), ArmError> {
        if !self.knows_subscription(&scope.subscription) {
            return Err(ArmError::new(
                404,
                codes::SUBSCRIPTION_NOT_FOUND,
                format!("The subscription '{}' could not be found.", scope.subscription),
            ));
        }
        if !self.groups.contains_key(&scope.lower()) {
            return Err(ArmError::new(
                404,
                codes::RESOURCE_GROUP_NOT_FOUND,
                format!("Resource group '{}' could not be found.", scope.resource_group),
            ));
        }
        Ok(())
    }

    /// The region of a served resource group.
    pub fn location_of(&self, scope: &ScopeKey) -> Option<&str> {
        self.groups.get(&scope.lower()).map(|g| g.location.as_str())
    }

    fn ctx(&mut self, scope: &ScopeKey) -> Result<Ctx<'_>, ArmError> {
        self.check_scope(scope)?;
        let (uppercase_ipv6, overlay_lag) = (self.uppercase_ipv6, self.overlay_lag);
        let g = self.groups.get_mut(&scope.lower()).ok_or_else(|| ArmError::new(404, codes::RESOURCE_GROUP_NOT_FOUND, "gone"))?;
        Ok(Ctx { g, alloc: &mut self.alloc, uppercase_ipv6, overlay_lag })
    }

    /// Seeds the AKS-owned `default-natgw` in `scope`: its public IP, the NAT gateway and its
    /// default Outbound ServiceGateway entry.
    pub fn seed_default_natgw(&mut self, scope: &ScopeKey) -> Result<(), ArmError> {
        self.ctx(scope)?.seed_default_natgw();
        Ok(())
    }

    /// Performs one request in `scope`.
    pub fn apply(
        &mut self,
        scope: &ScopeKey,
        method: Method,
        target: &Target,
        body: Option<&Value>,
        cond: &Conditions,
    ) -> Result<Reply, ArmError> {
        self.ctx(scope)?.apply(method, target, body, cond)
    }

    /// §3.13 POST updateServices in `scope`.
    pub fn update_services(&mut self, scope: &ScopeKey, body: &Value) -> Result<(), ArmError> {
        self.ctx(scope)?.update_services(body)
    }

    /// §3.14 POST updateAddressLocations in `scope`.
    pub fn update_address_locations(&mut self, scope: &ScopeKey, body: &Value) -> Result<(), ArmError> {
        self.ctx(scope)?.update_address_locations(body)
    }

    /// Seeds `scope` with a cloud state ([`CloudState`]) through the emulator's own rules; the
    /// error names the resource that could not be created and why.
    pub fn seed_cloud_state(&mut self, scope: &ScopeKey, cs: &CloudState) -> Result<(), String> {
        self.ctx(scope).map_err(|e| e.message)?.seed(cs)
    }

    /// Whether a public IP, load balancer or NAT gateway of that name exists in `scope`.
    pub fn has_resource(&self, scope: &ScopeKey, kind: ResourceKind, name: &str) -> bool {
        let Some(g) = self.groups.get(&scope.lower()) else { return false };
        let k = key(name);
        match kind {
            ResourceKind::PublicIp => g.pips.contains_key(&k),
            ResourceKind::LoadBalancer => g.lbs.contains_key(&k),
            ResourceKind::NatGateway => g.nats.contains_key(&k),
        }
    }

    /// Whether a ServiceGateway service of that name is registered in `scope`.
    pub fn is_registered(&self, scope: &ScopeKey, name: &str) -> bool {
        self.groups.get(&scope.lower()).is_some_and(|g| g.services.contains_key(&key(name)))
    }

    /// Whether `address` is mapped to the service `name` under any location of `scope`.
    pub fn is_mapped(&self, scope: &ScopeKey, address: &IpAddr, name: &str) -> bool {
        let k = key(name);
        self.groups.get(&scope.lower()).is_some_and(|g| g.locations.values().any(|m| m.get(address).is_some_and(|s| s.contains(&k))))
    }

    /// The whole content of one resource group: `{"public_ips":{name:ip},"load_balancers":[..],
    /// "nat_gateways":[..],"sgw_services":{name:type},"address_locations":{node:{pod:[service..]}}}`,
    /// keys sorted (all empty for a resource group the emulator does not serve).
    pub fn inventory(&self, scope: &ScopeKey) -> Value {
        match self.groups.get(&scope.lower()) {
            Some(g) => g.inventory(),
            None => Group::new(scope.clone(), String::new()).inventory(),
        }
    }

    /// Names of the seeded resources no client may write (for assertions).
    pub fn is_protected(&self, scope: &ScopeKey, kind: ResourceKind, name: &str) -> bool {
        self.groups.get(&scope.lower()).is_some_and(|g| g.protected.contains(&(kind, key(name))))
    }
}

/// One request's view: its resource group and the shared counters.
/// Who uses a public IP: the user's kind, its id, and the frontend for a load balancer.
type PipUser = (ResourceKind, String, Option<String>);

struct Ctx<'a> {
    g: &'a mut Group,
    alloc: &'a mut Alloc,
    uppercase_ipv6: bool,
    overlay_lag: u32,
}

impl Ctx<'_> {
    fn next_etag(&mut self) -> u64 {
        self.alloc.etag = self.alloc.etag.wrapping_add(1);
        self.alloc.etag
    }

    fn ip_text(&self, ip: &IpAddr) -> String {
        match ip {
            IpAddr::V6(_) if self.uppercase_ipv6 => ip.to_string().to_ascii_uppercase(),
            _ => ip.to_string(),
        }
    }

    fn allocate(&mut self, version: &str) -> String {
        if version == "IPv6" {
            self.alloc.next_v6 = self.alloc.next_v6.wrapping_add(1);
            format!("2603:1030:20e::{:x}", self.alloc.next_v6)
        } else {
            self.alloc.next_v4 = self.alloc.next_v4.wrapping_add(1);
            let n = self.alloc.next_v4;
            format!("20.{}.{}.{}", 40 + ((n >> 16) & 0x7f), (n >> 8) & 0xff, n & 0xff)
        }
    }

    fn provider_path(&self) -> String {
        self.g.scope.provider_path()
    }

    fn not_found(&self, kind: ResourceKind, name: &str) -> ArmError {
        ArmError::new(
            404,
            codes::RESOURCE_NOT_FOUND,
            format!("The Resource '{}/{name}' under resource group '{}' was not found.", kind.arm_type(), self.g.scope.resource_group),
        )
    }

    fn check_writable(&self, kind: ResourceKind, name: &str) -> Result<(), ArmError> {
        if self.g.protected.contains(&(kind, key(name))) {
            return Err(ArmError::new(
                409,
                codes::RP_OWNED,
                format!("{} '{name}' is owned by the AKS resource provider and cannot be modified.", kind.segment()),
            ));
        }
        Ok(())
    }

    /// The current etag of a resource, if it exists.
    fn current_etag(&self, kind: ResourceKind, k: &str) -> Option<String> {
        let n = match kind {
            ResourceKind::PublicIp => self.g.pips.get(k).map(|p| p.etag),
            ResourceKind::LoadBalancer => self.g.lbs.get(k).map(|l| l.etag),
            ResourceKind::NatGateway => self.g.nats.get(k).map(|n| n.etag),
        };
        n.map(etag_text)
    }

    /// `If-Match` (the resource must exist and, unless `*`, have one of the listed etags) and
    /// `If-None-Match` (`*`: must not exist; else none of the listed etags): 412 otherwise.
    fn check_conditions(&self, kind: ResourceKind, name: &str, cond: &Conditions) -> Result<(), ArmError> {
        let current = self.current_etag(kind, &key(name));
        let matches = |list: &str| match &current {
            None => false,
            Some(cur) => list.split(',').map(str::trim).any(|t| t == "*" || same_etag(t, cur)),
        };
        let failed = cond.if_match.as_deref().is_some_and(|m| !matches(m)) || cond.if_none_match.as_deref().is_some_and(matches);
        if failed {
            return Err(ArmError::new(
                412,
                codes::PRECONDITION_FAILED,
                format!("The condition specified using HTTP conditional header(s) is not met for {} '{name}'.", kind.segment()),
            ));
        }
        Ok(())
    }

    /// The region of a tracked resource's body: required; an existing resource keeps its own.
    fn location_for(&self, o: &Map<String, Value>, name: &str, existing: Option<&str>) -> Result<String, ArmError> {
        let location = match o.get("location") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(ArmError::bad(codes::LOCATION_REQUIRED, "The location property is required for this definition."))
            }
            Some(_) => return Err(ArmError::format("location must be a string")),
        };
        if let Some(old) = existing.filter(|old| region(old) != region(&location)) {
            return Err(ArmError::bad(
                codes::INVALID_RESOURCE_LOCATION,
                format!(
                    "The resource '{name}' already exists in location '{old}' in resource group '{}'. A resource with the same name cannot be created in location '{location}'.",
                    self.g.scope.resource_group
                ),
            ));
        }
        Ok(location)
    }

    fn seed_default_natgw(&mut self) {
        let provider_path = self.provider_path();
        let location = self.g.location.clone();
        let pip_id = format!("{provider_path}/publicIPAddresses/{DEFAULT_NATGW_PIP}");
        let nat_id = format!("{provider_path}/natGateways/{DEFAULT_NATGW}");
        let address = self.allocate("IPv4");
        let etag = self.next_etag();
        self.g.pips.insert(
            key(DEFAULT_NATGW_PIP),
            PublicIp {
                name: DEFAULT_NATGW_PIP.into(),
                id: pip_id.clone(),
                version: "IPv4",
                address,
                location: location.clone(),
                sku: json!({ "name": "StandardV2", "tier": "Regional" }),
                tags: None,
                zones: None,
                ip_tags: json!([]),
                idle_timeout: 4,
                allocation: "Static",
                etag,
            },
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
        self.unindex_pips(ResourceKind::NatGateway, &key(DEFAULT_NATGW));
        self.g.pip_owner.insert(key(DEFAULT_NATGW_PIP), (ResourceKind::NatGateway, key(DEFAULT_NATGW)));
        self.g.nats.insert(
            key(DEFAULT_NATGW),
            NatGateway { name: DEFAULT_NATGW.into(), location, body, pips: vec![key(DEFAULT_NATGW_PIP)], etag },
        );
        self.g.services.insert(
            key(DEFAULT_NATGW),
            RegisteredService {
                name: DEFAULT_NATGW.into(),
                service_type: "Outbound".into(),
                pools: Vec::new(),
                nat_id: Some(nat_id),
                is_default: true,
            },
        );
        self.g.protected.insert((ResourceKind::PublicIp, key(DEFAULT_NATGW_PIP)));
        self.g.protected.insert((ResourceKind::NatGateway, key(DEFAULT_NATGW)));
    }

    fn apply(&mut self, method: Method, target: &Target, body: Option<&Value>, cond: &Conditions) -> Result<Reply, ArmError> {
        let need_body = || body.ok_or_else(|| ArmError::new(400, "InvalidRequestContent", "The request has no body."));
        match (method, target) {
            (Method::Put, Target::Resource(kind, name)) => {
                let id = format!("{}/{}/{name}", self.provider_path(), kind.segment());
                let body = need_body()?;
                self.check_conditions(*kind, name, cond)?;
                match kind {
                    ResourceKind::PublicIp => self.put_public_ip(name, &id, body),
                    ResourceKind::LoadBalancer => self.put_load_balancer(name, &id, body),
                    ResourceKind::NatGateway => self.put_nat_gateway(name, &id, body),
                }
            }
            (Method::Get, Target::Resource(kind, name)) => self.get(*kind, name).map(Reply::Resource),
            (Method::Delete, Target::Resource(kind, name)) => {
                self.check_conditions(*kind, name, cond)?;
                self.delete(*kind, name)
            }
            (Method::Get, Target::Collection(kind)) => Ok(Reply::List(self.list(*kind))),
            (Method::Get, Target::ServiceGateway) => Ok(Reply::Resource(self.service_gateway())),
            (Method::Get, Target::SgwServices) => Ok(Reply::List(self.list_services())),
            (Method::Get, Target::SgwAddressLocations) => Ok(Reply::List(self.list_address_locations())),
            (Method::Post, Target::SgwUpdateServices) => self.update_services(need_body()?).map(|_| Reply::Done),
            (Method::Post, Target::SgwUpdateAddressLocations) => self.update_address_locations(need_body()?).map(|_| Reply::Done),
            (_, Target::OtherServiceGateway(name)) => Err(ArmError::new(
                404,
                codes::RESOURCE_NOT_FOUND,
                format!(
                    "The Resource 'Microsoft.Network/serviceGateways/{name}' under resource group '{}' was not found.",
                    self.g.scope.resource_group
                ),
            )),
            (m, _) => Err(ArmError::new(405, "HttpMethodNotAllowed", format!("{} is not supported on this resource.", m.as_str()))),
        }
    }

    // -------------------------------------------------------------------- seeding

    /// Makes the allocator never hand out `addr` again (addresses it would allocate).
    fn reserve(&mut self, addr: &IpAddr) {
        match addr {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                if o[0] == 20 && (40..168).contains(&o[1]) {
                    let n = ((u32::from(o[1]) - 40) << 16) | (u32::from(o[2]) << 8) | u32::from(o[3]);
                    self.alloc.next_v4 = self.alloc.next_v4.max(n);
                }
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                if s[..7] == [0x2603, 0x1030, 0x20e, 0, 0, 0, 0] {
                    self.alloc.next_v6 = self.alloc.next_v6.max(u32::from(s[7]));
                }
            }
        }
    }

    fn seed(&mut self, cs: &CloudState) -> Result<(), String> {
        let pp = self.provider_path();
        let location = self.g.location.clone();
        let mut taken: BTreeMap<IpAddr, String> =
            self.g.pips.values().filter_map(|p| Some((p.address.parse().ok()?, p.name.clone()))).collect();
        for (name, addr) in &cs.public_ips {
            let k = key(name);
            if self.g.pips.contains_key(&k) {
                continue;
            }
            if let Some(other) = taken.get(addr) {
                return Err(format!("public IP {name}: its address {addr} is already the address of {other}"));
            }
            let version = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
            let body = json!({
                "location": location,
                "properties": { "publicIPAddressVersion": version, "publicIPAllocationMethod": "Static" },
                "sku": { "name": "StandardV2" },
            });
            self.put_public_ip(name, &format!("{pp}/publicIPAddresses/{name}"), &body)
                .map_err(|e| format!("public IP {name}: {}", e.message))?;
            if let Some(p) = self.g.pips.get_mut(&k) {
                p.address = addr.to_string();
            }
            self.reserve(addr);
            taken.insert(*addr, name.clone());
        }
        let pip_id = |g: &Group, name: &str| g.pips.get(&key(name)).map(|p| p.id.clone());
        for name in &cs.load_balancers {
            if self.g.lbs.contains_key(&key(name)) {
                continue;
            }
            let mut props = json!({ "backendAddressPools": [ { "name": name } ] });
            if let Some(id) = pip_id(self.g, &format!("{name}-pip")) {
                props["frontendIPConfigurations"] = json!([ { "name": "frontend", "properties": { "publicIPAddress": { "id": id } } } ]);
            }
            let body = json!({ "location": location, "properties": props, "sku": { "name": "Service" } });
            self.put_load_balancer(name, &format!("{pp}/loadBalancers/{name}"), &body)
                .map_err(|e| format!("load balancer {name}: {}", e.message))?;
        }
        for name in &cs.nat_gateways {
            if self.g.nats.contains_key(&key(name)) {
                continue;
            }
            let v4: Vec<Value> = pip_id(self.g, &format!("{name}-pip")).into_iter().map(|id| json!({ "id": id })).collect();
            let v6: Vec<Value> = pip_id(self.g, &format!("{name}-pip-v6")).into_iter().map(|id| json!({ "id": id })).collect();
            let body = json!({
                "location": location,
                "properties": {
                    "publicIpAddresses": v4,
                    "publicIpAddressesV6": v6,
                    "serviceGateway": { "id": format!("{pp}/serviceGateways/{SERVICE_GATEWAY_NAME}") },
                },
                "sku": { "name": "StandardV2" },
            });
            self.put_nat_gateway(name, &format!("{pp}/natGateways/{name}"), &body)
                .map_err(|e| format!("NAT gateway {name}: {}", e.message))?;
        }
        let mut reqs = Vec::new();
        for (name, t) in &cs.sgw_services {
            let k = key(name);
            if self.g.services.get(&k).is_some_and(|s| s.is_default) {
                continue;
            }
            let mut props = json!({ "serviceType": t });
            if t != "Outbound" && self.g.lbs.get(&k).is_some_and(|l| l.pools.contains(&k)) {
                props["loadBalancerBackendPools"] = json!([ { "id": format!("{pp}/loadBalancers/{name}/backendAddressPools/{name}") } ]);
            }
            if t != "Inbound" && self.g.nats.contains_key(&k) {
                props["publicNatGatewayId"] = json!(format!("{pp}/natGateways/{name}"));
            }
            reqs.push(json!({ "service": { "name": name, "properties": props } }));
        }
        if !reqs.is_empty() {
            self.update_services(&json!({ "action": "PartialUpdate", "serviceRequests": reqs }))
                .map_err(|e| format!("sgw_services: {}", e.message))?;
        }
        let locs: Vec<Value> = cs
            .address_locations
            .iter()
            .map(|(node, addrs)| {
                let addresses: Vec<Value> = addrs.iter().map(|(a, s)| json!({ "address": a.to_string(), "services": s })).collect();
                json!({ "addressLocation": node.to_string(), "addressUpdateAction": "FullUpdate", "addresses": addresses })
            })
            .collect();
        if !locs.is_empty() {
            self.update_address_locations(&json!({ "action": "PartialUpdate", "addressLocations": locs }))
                .map_err(|e| format!("address_locations: {}", e.message))?;
        }
        Ok(())
    }

    // -------------------------------------------------------------------- public IPs

    fn put_public_ip(&mut self, name: &str, id: &str, body: &Value) -> Result<Reply, ArmError> {
        self.check_writable(ResourceKind::PublicIp, name)?;
        let o = obj(body, "the public IP")?;
        let props = props_of(body)?;
        let k = key(name);
        let location = self.location_for(o, name, self.g.pips.get(&k).map(|p| p.location.as_str()))?;
        let version = match props.and_then(|p| p.get("publicIPAddressVersion")) {
            None | Some(Value::Null) => "IPv4",
            Some(Value::String(s)) if s.eq_ignore_ascii_case("IPv4") => "IPv4",
            Some(Value::String(s)) if s.eq_ignore_ascii_case("IPv6") => "IPv6",
            Some(v) => return Err(ArmError::format(format!("publicIPAddressVersion {v} is not IPv4 or IPv6"))),
        };
        let sku = match o.get("sku") {
            None | Some(Value::Null) => json!({ "name": "Standard", "tier": "Regional" }),
            Some(Value::Object(s)) => {
                if !s.get("name").is_some_and(Value::is_string) {
                    return Err(ArmError::format("sku.name must be a string"));
                }
                let mut s = s.clone();
                s.entry("tier").or_insert(json!("Regional"));
                Value::Object(s)
            }
            Some(_) => return Err(ArmError::format("sku must be a JSON object")),
        };
        let tags = match o.get("tags") {
            None | Some(Value::Null) => None,
            Some(t @ Value::Object(m)) if m.values().all(Value::is_string) => Some(t.clone()),
            Some(_) => return Err(ArmError::format("tags must be an object of strings")),
        };
        let zones = match o.get("zones") {
            None | Some(Value::Null) => None,
            Some(z @ Value::Array(_)) => Some(z.clone()),
            Some(_) => return Err(ArmError::format("zones must be an array")),
        };
        let ip_tags = Value::Array(array_of(props.and_then(|p| p.get("ipTags")), "ipTags")?.to_vec());
        let idle_timeout = match props.and_then(|p| p.get("idleTimeoutInMinutes")) {
            None | Some(Value::Null) => 4,
            Some(v) => v.as_u64().filter(|n| (4..=30).contains(n)).ok_or_else(|| {
                ArmError::format(format!("Public IP address {name} has invalid Idle Timeout {v}. The value must be between 4 and 30."))
            })?,
        };
        let basic = sku.get("name").and_then(Value::as_str).is_some_and(|n| n.eq_ignore_ascii_case("Basic"));
        let allocation = match props.and_then(|p| p.get("publicIPAllocationMethod")) {
            None | Some(Value::Null) if basic => "Dynamic",
            None | Some(Value::Null) => "Static",
            Some(Value::String(s)) if s.eq_ignore_ascii_case("Static") => "Static",
            Some(Value::String(s)) if s.eq_ignore_ascii_case("Dynamic") => "Dynamic",
            Some(v) => return Err(ArmError::format(format!("publicIPAllocationMethod {v} is not Static or Dynamic"))),
        };
        let created = !self.g.pips.contains_key(&k);
        let address = match self.g.pips.get(&k) {
            Some(p) if p.version == version => p.address.clone(),
            Some(_) if self.pip_users(&k).is_some() => {
                return Err(ArmError::bad(
                    codes::PUBLIC_IP_IN_USE,
                    format!("Public IP '{name}' is in use; its address version cannot change."),
                ))
            }
            _ => self.allocate(version),
        };
        let etag = self.next_etag();
        let pip = PublicIp {
            name: name.into(),
            id: id.into(),
            version,
            address,
            location,
            sku,
            tags,
            zones,
            ip_tags,
            idle_timeout,
            allocation,
            etag,
        };
        self.g.pips.insert(k.clone(), pip);
        Ok(Reply::Put { created, body: self.pip_json(&k) })
    }

    /// Who references a public IP: `(kind, user id, the frontend using it for a load balancer)`.
    fn pip_users(&self, pip_key: &str) -> Option<(ResourceKind, String, Option<String>)> {
        let (kind, owner) = self.g.pip_owner.get(pip_key)?;
        match kind {
            ResourceKind::LoadBalancer => {
                let lb = self.g.lbs.get(owner)?;
                let (fe, _) = lb.frontends.iter().find(|(_, p)| p == pip_key)?;
                let id = lb.body.get("id").and_then(Value::as_str).unwrap_or(&lb.name).to_string();
                Some((ResourceKind::LoadBalancer, id, Some(fe.clone())))
            }
            _ => {
                let nat = self.g.nats.get(owner)?;
                Some((ResourceKind::NatGateway, nat.body.get("id").and_then(Value::as_str).unwrap_or(&nat.name).to_string(), None))
            }
        }
    }

    /// Drops the index entries of the public IPs the load balancer or NAT gateway `k` uses now.
    fn unindex_pips(&mut self, kind: ResourceKind, k: &str) {
        let used: Vec<String> = match kind {
            ResourceKind::LoadBalancer => self.g.lbs.get(k).map(|l| l.frontends.iter().map(|(_, p)| p.clone()).collect()),
            ResourceKind::NatGateway => self.g.nats.get(k).map(|n| n.pips.clone()),
            ResourceKind::PublicIp => None,
        }
        .unwrap_or_default();
        for p in used {
            if self.g.pip_owner.get(&p).is_some_and(|(kd, o)| *kd == kind && o == k) {
                self.g.pip_owner.remove(&p);
            }
        }
    }

    fn all_pip_users(&self) -> BTreeMap<String, PipUser> {
        let mut out: BTreeMap<String, PipUser> = BTreeMap::new();
        for lb in self.g.lbs.values() {
            for (fe, p) in &lb.frontends {
                let id = lb.body.get("id").and_then(Value::as_str).unwrap_or(&lb.name).to_string();
                out.entry(p.clone()).or_insert((ResourceKind::LoadBalancer, id, Some(fe.clone())));
            }
        }
        for nat in self.g.nats.values() {
            for p in &nat.pips {
                let id = nat.body.get("id").and_then(Value::as_str).unwrap_or(&nat.name).to_string();
                out.entry(p.clone()).or_insert((ResourceKind::NatGateway, id, None));
            }
        }
        out
    }

    fn pip_json(&self, k: &str) -> Value {
        let users = self.pip_users(k);
        self.pip_json_with(k, users)
    }

    fn pip_json_with(&self, k: &str, users: Option<PipUser>) -> Value {
        let Some(p) = self.g.pips.get(k) else { return Value::Null };
        let mut props = Map::new();
        props.insert("idleTimeoutInMinutes".into(), json!(p.idle_timeout));
        let ip: IpAddr = p.address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        props.insert("ipAddress".into(), json!(self.ip_text(&ip)));
        props.insert("ipTags".into(), p.ip_tags.clone());
        match users {
            Some((ResourceKind::LoadBalancer, lb_id, Some(fe))) => {
                props.insert("ipConfiguration".into(), json!({ "id": format!("{lb_id}/frontendIPConfigurations/{fe}") }));
            }
            Some((_, user_id, _)) => {
                props.insert("natGateway".into(), json!({ "id": user_id }));
            }
            None => {}
        }
        props.insert("provisioningState".into(), json!("Succeeded"));
        props.insert("publicIPAddressVersion".into(), json!(p.version));
        props.insert("publicIPAllocationMethod".into(), json!(p.allocation));
        props.insert("resourceGuid".into(), json!(format!("00000000-0000-4000-8000-{:012x}", p.etag)));
        let mut out = json!({
            "etag": etag_text(p.etag),
            "id": p.id,
            "location": p.location,
            "name": p.name,
            "properties": Value::Object(props),
            "sku": p.sku,
            "type": ResourceKind::PublicIp.arm_type(),
        });
        if let Some(t) = &p.tags {
            out["tags"] = t.clone();
        }
        if let Some(z) = &p.zones {
            out["zones"] = z.clone();
        }
        out
    }

    /// Resolves public IP names; each must exist and not be used by another resource.
    fn resolve_pips(&self, names: &[(String, String)], user: (ResourceKind, &str)) -> Result<Vec<String>, ArmError> {
        let mut out = Vec::new();
        for (name, id) in names {
            let k = key(name);
            if !self.g.pips.contains_key(&k) {
                return Err(ArmError::bad(
                    codes::INVALID_RESOURCE_REFERENCE,
                    format!("Resource {id} referenced by resource {} was not found.", user.1),
                ));
            }
            if let Some((kind, by, _)) = self.pip_users(&k) {
                let by_name = by.rsplit('/').next().unwrap_or("");
                let same = kind == user.0 && by_name.eq_ignore_ascii_case(user.1);
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
        /// The child collections of a load balancer, spelled as their ids and types spell them.
        const CHILDREN: [&str; 7] = [
            "frontendIPConfigurations",
            "backendAddressPools",
            "loadBalancingRules",
            "probes",
            "inboundNatRules",
            "inboundNatPools",
            "outboundRules",
        ];
        let o = obj(body, "the load balancer")?;
        let props = props_of(body)?;
        let k = key(name);
        let location = self.location_for(o, name, self.g.lbs.get(&k).map(|l| l.location.as_str()))?;
        let scope = self.g.scope.clone();
        // Every child needs a name, unique in its collection.
        let mut names: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for c in CHILDREN {
            let mut seen = BTreeSet::new();
            for (i, child) in array_of(props.and_then(|p| p.get(c)), c)?.iter().enumerate() {
                if !child.is_object() {
                    return Err(ArmError::format(format!("{c}[{i}] must be a JSON object")));
                }
                let n = child.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
                let n = n.ok_or_else(|| ArmError::format(format!("{c}[{i}] needs a name")))?;
                if !seen.insert(key(n)) {
                    return Err(ArmError::format(format!("{c} has two entries named {n:?}")));
                }
            }
            names.insert(c, seen);
        }
        // Frontends: their public IPs.
        let mut fe_pips = Vec::new();
        for fe in array_of(props.and_then(|p| p.get("frontendIPConfigurations")), "frontendIPConfigurations")? {
            let fe_name = fe.get("name").and_then(Value::as_str).unwrap_or_default();
            match fe.pointer("/properties/publicIPAddress") {
                None | Some(Value::Null) => {}
                Some(p) => {
                    let path = format!("properties.frontendIPConfigurations[{fe_name}].properties.publicIPAddress.id");
                    let pid = p.get("id").and_then(Value::as_str).ok_or_else(|| ArmError::format(format!("{path} is missing")))?;
                    let r = parse_ref(pid, "publicIPAddresses", &scope, &path)?;
                    if r.child.is_some() {
                        return Err(ArmError::bad(codes::INVALID_RESOURCE_REFERENCE, format!("{pid} is not a public IP address.")));
                    }
                    fe_pips.push((fe_name.to_string(), (r.name.to_string(), pid.to_string())));
                }
            }
        }
        let refs: Vec<(String, String)> = fe_pips.iter().map(|(_, r)| r.clone()).collect();
        let pip_keys = self.resolve_pips(&refs, (ResourceKind::LoadBalancer, name))?;
        let frontends: Vec<(String, String)> = fe_pips.iter().map(|(fe, _)| fe.clone()).zip(pip_keys).collect();
        // References between children must name children of this load balancer.
        let mut users: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for rules in ["loadBalancingRules", "inboundNatRules", "outboundRules"] {
            for rule in array_of(props.and_then(|p| p.get(rules)), rules)? {
                let rule_name = rule.get("name").and_then(Value::as_str).unwrap_or_default();
                let rule_id = format!("{id}/{rules}/{rule_name}");
                for (field, child) in [
                    ("frontendIPConfiguration", "frontendIPConfigurations"),
                    ("backendAddressPool", "backendAddressPools"),
                    ("probe", "probes"),
                ] {
                    let Some(reference) = rule.get("properties").and_then(|p| p.get(field)).filter(|v| !v.is_null()) else { continue };
                    let path = format!("properties.{rules}[{rule_name}].properties.{field}.id");
                    let rid = reference.get("id").and_then(Value::as_str).ok_or_else(|| ArmError::format(format!("{path} is missing")))?;
                    let r = parse_ref(rid, "loadBalancers", &scope, &path)?;
                    let ok = r.name.eq_ignore_ascii_case(name)
                        && r.child.is_some_and(|(seg, n)| {
                            seg.eq_ignore_ascii_case(child) && names.get(child).is_some_and(|s| s.contains(&key(n)))
                        });
                    if !ok {
                        return Err(ArmError::bad(
                            codes::INVALID_RESOURCE_REFERENCE,
                            format!("Reference {rid} used by {rules}/{rule_name} of load balancer {name} was not found."),
                        ));
                    }
                    if let Some((_, n)) = r.child {
                        users.entry((child.to_string(), key(n))).or_default().push(rule_id.clone());
                    }
                }
            }
        }
        let etag = self.next_etag();
        let mut stored = Value::Object(o.clone());
        if let Some(m) = stored.as_object_mut() {
            m.remove("etag");
            m.remove("type");
            m.insert("id".into(), json!(id));
            m.insert("name".into(), json!(name));
            let p = m.entry("properties").or_insert_with(|| json!({}));
            if let Some(p) = p.as_object_mut() {
                p.remove("provisioningState");
                p.remove("resourceGuid");
                for c in CHILDREN {
                    let Some(Value::Array(items)) = p.get_mut(c) else { continue };
                    for item in items.iter_mut() {
                        let Some(item) = item.as_object_mut() else { continue };
                        let n = item.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                        item.insert("id".into(), json!(format!("{id}/{c}/{n}")));
                        item.insert("etag".into(), json!(etag_text(etag)));
                        item.insert("type".into(), json!(format!("{}/{c}", ResourceKind::LoadBalancer.arm_type())));
                        let ip = item.entry("properties").or_insert_with(|| json!({}));
                        if let Some(ip) = ip.as_object_mut() {
                            ip.insert("provisioningState".into(), json!("Succeeded"));
                            if matches!(c, "frontendIPConfigurations" | "backendAddressPools" | "probes") {
                                ip.remove("loadBalancingRules");
                                ip.remove("inboundNatRules");
                                ip.remove("outboundRules");
                                if let Some(by) = users.get(&(c.to_string(), key(&n))) {
                                    ip.insert("loadBalancingRules".into(), Value::Array(by.iter().map(|r| json!({ "id": r })).collect()));
                                }
                            }
                        }
                    }
                }
            }
        }
        let pools = names.remove("backendAddressPools").unwrap_or_default();
        let created = !self.g.lbs.contains_key(&k);
        self.unindex_pips(ResourceKind::LoadBalancer, &k);
        for (_, p) in &frontends {
            self.g.pip_owner.insert(p.clone(), (ResourceKind::LoadBalancer, k.clone()));
        }
        self.g.lbs.insert(k.clone(), LoadBalancer { name: name.into(), location, body: stored, frontends, pools, etag });
        Ok(Reply::Put { created, body: self.resource_json(ResourceKind::LoadBalancer, &k) })
    }

    // -------------------------------------------------------------------- NAT gateways

    fn put_nat_gateway(&mut self, name: &str, id: &str, body: &Value) -> Result<Reply, ArmError> {
        self.check_writable(ResourceKind::NatGateway, name)?;
        let o = obj(body, "the NAT gateway")?;
        let props = props_of(body)?;
        let k = key(name);
        let location = self.location_for(o, name, self.g.nats.get(&k).map(|n| n.location.as_str()))?;
        let scope = self.g.scope.clone();
        let mut refs = Vec::new();
        for field in ["publicIpAddresses", "publicIpAddressesV6"] {
            for pid in ids_of(props.and_then(|p| p.get(field)), field)? {
                let r = parse_ref(&pid, "publicIPAddresses", &scope, &format!("properties.{field}"))?;
                if r.child.is_some() {
                    return Err(ArmError::bad(codes::INVALID_RESOURCE_REFERENCE, format!("{pid} is not a public IP address.")));
                }
                refs.push((r.name.to_string(), pid.clone()));
            }
        }
        let pips = self.resolve_pips(&refs, (ResourceKind::NatGateway, name))?;
        if let Some(sg) = props.and_then(|p| p.get("serviceGateway")).filter(|v| !v.is_null()) {
            let sid = sg.get("id").and_then(Value::as_str).unwrap_or("");
            let r = parse_ref(sid, "serviceGateways", &scope, "properties.serviceGateway.id")?;
            if !(r.name.eq_ignore_ascii_case(SERVICE_GATEWAY_NAME) && r.child.is_none()) {
                return Err(ArmError::bad(codes::INVALID_RESOURCE_REFERENCE, format!("ServiceGateway {sid:?} was not found.")));
            }
        }
        let created = !self.g.nats.contains_key(&k);
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
        self.unindex_pips(ResourceKind::NatGateway, &k);
        for p in &pips {
            self.g.pip_owner.insert(p.clone(), (ResourceKind::NatGateway, k.clone()));
        }
        self.g.nats.insert(k.clone(), NatGateway { name: name.into(), location, body: stored, pips, etag });
        Ok(Reply::Put { created, body: self.resource_json(ResourceKind::NatGateway, &k) })
    }

    fn resource_json(&self, kind: ResourceKind, k: &str) -> Value {
        let (body, etag) = match kind {
            ResourceKind::PublicIp => return self.pip_json(k),
            ResourceKind::LoadBalancer => match self.g.lbs.get(k) {
                Some(lb) => (lb.body.clone(), lb.etag),
                None => return Value::Null,
            },
            ResourceKind::NatGateway => match self.g.nats.get(k) {
                Some(n) => (n.body.clone(), n.etag),
                None => return Value::Null,
            },
        };
        let mut v = body;
        if let Some(m) = v.as_object_mut() {
            m.insert("etag".into(), json!(etag_text(etag)));
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
                sku.entry("tier").or_insert(json!("Regional"));
            }
        }
        v
    }

    fn get(&self, kind: ResourceKind, name: &str) -> Result<Value, ArmError> {
        let k = key(name);
        let exists = match kind {
            ResourceKind::PublicIp => self.g.pips.contains_key(&k),
            ResourceKind::LoadBalancer => self.g.lbs.contains_key(&k),
            ResourceKind::NatGateway => self.g.nats.contains_key(&k),
        };
        if !exists {
            return Err(self.not_found(kind, name));
        }
        Ok(self.resource_json(kind, &k))
    }

    fn list(&self, kind: ResourceKind) -> Vec<Value> {
        if kind == ResourceKind::PublicIp {
            let mut users = self.all_pip_users();
            return self.g.pips.keys().map(|k| self.pip_json_with(k, users.remove(k))).collect();
        }
        let keys: Vec<&String> = match kind {
            ResourceKind::PublicIp => self.g.pips.keys().collect(),
            ResourceKind::LoadBalancer => self.g.lbs.keys().collect(),
            ResourceKind::NatGateway => self.g.nats.keys().collect(),
        };
        keys.into_iter().map(|k| self.resource_json(kind, k)).collect()
    }

    /// ARM's DELETE: `NoContent` when there is nothing to delete.
    fn delete(&mut self, kind: ResourceKind, name: &str) -> Result<Reply, ArmError> {
        let k = key(name);
        let exists = match kind {
            ResourceKind::PublicIp => self.g.pips.contains_key(&k),
            ResourceKind::LoadBalancer => self.g.lbs.contains_key(&k),
            ResourceKind::NatGateway => self.g.nats.contains_key(&k),
        };
        if !exists {
            return Ok(Reply::NoContent);
        }
        self.check_writable(kind, name)?;
        match kind {
            ResourceKind::PublicIp => {
                if let Some((_, by, _)) = self.pip_users(&k) {
                    return Err(ArmError::bad(
                        codes::PUBLIC_IP_CANNOT_BE_DELETED,
                        format!("Public IP address {name} can not be deleted since it is still allocated to resource {by}."),
                    ));
                }
                self.g.pips.remove(&k);
            }
            ResourceKind::LoadBalancer => {
                self.unindex_pips(ResourceKind::LoadBalancer, &k);
                self.g.lbs.remove(&k);
            }
            ResourceKind::NatGateway => {
                self.unindex_pips(ResourceKind::NatGateway, &k);
                self.g.nats.remove(&k);
            }
        }
        Ok(Reply::Deleted)
    }

    fn service_gateway(&self) -> Value {
        json!({
            "id": format!("{}/serviceGateways/{SERVICE_GATEWAY_NAME}", self.provider_path()),
            "location": self.g.location,
            "name": SERVICE_GATEWAY_NAME,
            "properties": { "provisioningState": "Succeeded" },
            "sku": { "name": "Standard", "tier": "Regional" },
            "type": "Microsoft.Network/serviceGateways",
        })
    }

    // -------------------------------------------------------------------- ServiceGateway services

    fn list_services(&self) -> Vec<Value> {
        let provider_path = self.provider_path();
        self.g
            .services
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
        self.g.mapped.contains_key(service_key)
    }

    /// Counts `services` as mapped once more (`up`) or once less; services whose last mapping
    /// went are added to `unmapped`.
    fn count_mapped(&mut self, services: &BTreeSet<String>, up: bool, unmapped: &mut BTreeSet<String>) {
        for s in services {
            if up {
                *self.g.mapped.entry(s.clone()).or_default() += 1;
            } else if let Some(n) = self.g.mapped.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.g.mapped.remove(s);
                    unmapped.insert(s.clone());
                }
            }
        }
    }

    /// Removes a whole location, keeping the index.
    fn remove_location(&mut self, node: &IpAddr, unmapped: &mut BTreeSet<String>) {
        if let Some(addrs) = self.g.locations.remove(node) {
            for set in addrs.values() {
                self.count_mapped(set, false, unmapped);
            }
        }
    }

    /// Sets (or, with an empty set, removes) one address, keeping the index.
    fn set_address(&mut self, node: IpAddr, addr: IpAddr, set: BTreeSet<String>, unmapped: &mut BTreeSet<String>) {
        let entry = self.g.locations.entry(node).or_default();
        let old = if set.is_empty() { entry.remove(&addr) } else { entry.insert(addr, set.clone()) };
        if entry.is_empty() {
            self.g.locations.remove(&node);
        }
        if let Some(old) = old {
            self.count_mapped(&old, false, unmapped);
        }
        self.count_mapped(&set, true, unmapped);
    }

    /// §3.13 POST updateServices. The whole request is validated before anything changes.
    fn update_services(&mut self, body: &Value) -> Result<(), ArmError> {
        let o = obj(body, "the request")?;
        let full = full_update(o)?;
        let reqs =
            o.get("serviceRequests").and_then(Value::as_array).ok_or_else(|| ArmError::format("serviceRequests must be an array"))?;
        enum Change {
            Upsert(String, RegisteredService),
            Delete(String),
        }
        let scope = self.g.scope.clone();
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
            let existing = self.g.services.get(&k);
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
                if let Some(left) = self.g.lagging.get_mut(&k).filter(|n| **n > 0) {
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
                let r =
                    parse_ref(id, "loadBalancers", &scope, &format!("serviceRequests[{i}].service.properties.loadBalancerBackendPools"))?;
                let ok = match r.child {
                    Some((seg, pool)) if seg.eq_ignore_ascii_case("backendAddressPools") => {
                        self.g.lbs.get(&key(r.name)).is_some_and(|l| l.pools.contains(&key(pool)))
                    }
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
                    let r = parse_ref(id, "natGateways", &scope, &format!("serviceRequests[{i}].service.properties.publicNatGatewayId"))?;
                    if r.child.is_some() || !self.g.nats.contains_key(&key(r.name)) {
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
            let entry =
                RegisteredService { name: name.into(), service_type: service_type.into(), pools: pool_ids, nat_id, is_default: false };
            changes.push(Change::Upsert(k, entry));
        }
        if full {
            for (k, s) in &self.g.services {
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
                self.g.services.iter().filter(|(k, s)| s.is_default || seen.contains(*k)).map(|(k, _)| k.clone()).collect();
            self.g.services.retain(|k, _| keep.contains(k));
        }
        for c in changes {
            match c {
                Change::Upsert(k, e) => {
                    self.g.services.insert(k, e);
                }
                Change::Delete(k) => {
                    self.g.services.remove(&k);
                }
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------------- address locations

    fn list_address_locations(&self) -> Vec<Value> {
        self.g
            .locations
            .iter()
            .map(|(node, addrs)| {
                let addresses: Vec<Value> = addrs
                    .iter()
                    .map(|(pod, svcs)| {
                        let names: Vec<&str> = svcs.iter().map(|s| self.g.services.get(s).map(|e| e.name.as_str()).unwrap_or(s)).collect();
                        json!({ "address": self.ip_text(pod), "services": names })
                    })
                    .collect();
                json!({ "addressLocation": self.ip_text(node), "addresses": addresses })
            })
            .collect()
    }

    /// §3.14 POST updateAddressLocations, with FullUpdate / PartialUpdate / empty-list semantics.
    /// The REST spec's shapes are accepted: a location without `addressUpdateAction` is a
    /// PartialUpdate, one without `addresses` has none (so a PartialUpdate deletes it), and an
    /// address without `services` has none (it is deleted).
    fn update_address_locations(&mut self, body: &Value) -> Result<(), ArmError> {
        let o = obj(body, "the request")?;
        let full = full_update(o)?;
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
            let loc_full = match l.get("addressUpdateAction") {
                None | Some(Value::Null) => false,
                Some(Value::String(a)) if a.eq_ignore_ascii_case("FullUpdate") => true,
                Some(Value::String(a)) if a.eq_ignore_ascii_case("PartialUpdate") => false,
                Some(other) => {
                    return Err(ArmError::format(format!(
                        "addressLocations[{i}].addressUpdateAction must be FullUpdate or PartialUpdate, got {other}"
                    )))
                }
            };
            let addrs = array_of(l.get("addresses"), &format!("addressLocations[{i}].addresses"))?;
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
                let svcs = array_of(a.get("services"), &format!("addressLocations[{i}].addresses[{j}].services"))?;
                let mut set = BTreeSet::new();
                for s in svcs {
                    let s = s.as_str().ok_or_else(|| ArmError::format("service names must be strings"))?;
                    let k = key(s);
                    if !self.g.services.contains_key(&k) {
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
            let gone: Vec<IpAddr> = self.g.locations.keys().filter(|node| !seen_nodes.contains(*node)).copied().collect();
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
            for gone in unmapped.into_iter().filter(|s| !self.g.mapped.contains_key(s)) {
                self.g.lagging.insert(gone, self.overlay_lag);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> ScopeKey {
        ScopeKey::new("s", "r")
    }

    fn net() -> String {
        scope().provider_path()
    }

    fn fresh() -> EmulatorState {
        let mut s = EmulatorState::new();
        s.add_resource_group(&scope(), "eastus2");
        s
    }

    fn put(s: &mut EmulatorState, kind: ResourceKind, name: &str, body: Value) -> Result<Reply, ArmError> {
        s.apply(&scope(), Method::Put, &Target::Resource(kind, name.into()), Some(&body), &Conditions::NONE)
    }

    fn state_with_lb(name: &str) -> EmulatorState {
        let mut s = fresh();
        let net = net();
        put(
            &mut s,
            ResourceKind::PublicIp,
            &format!("{name}-pip"),
            json!({"location": "eastus2", "properties": {"publicIPAddressVersion": "IPv4"}}),
        )
        .unwrap();
        let lb = json!({"location": "eastus2", "properties": {
            "backendAddressPools": [{"name": name}],
            "frontendIPConfigurations": [{"name": "frontend", "properties": {"publicIPAddress": {"id": format!("{net}/publicIPAddresses/{name}-pip")}}}]}});
        put(&mut s, ResourceKind::LoadBalancer, name, lb).unwrap();
        let reg = json!({"action": "PartialUpdate", "serviceRequests": [{"isDelete": false, "service": {"name": name, "properties": {
            "serviceType": "Inbound", "loadBalancerBackendPools": [{"id": format!("{net}/loadBalancers/{name}/backendAddressPools/{name}")}]}}}]});
        s.update_services(&scope(), &reg).unwrap();
        s
    }

    #[test]
    fn addresses_are_deterministic_and_of_the_requested_family() {
        let run = || {
            let mut s = fresh();
            let mut out = Vec::new();
            for (n, v) in [("a", "IPv4"), ("b", "IPv6"), ("c", "IPv4")] {
                let body = json!({"location": "eastus2", "properties": {"publicIPAddressVersion": v}});
                let Reply::Put { body, created } = put(&mut s, ResourceKind::PublicIp, n, body).unwrap() else { panic!() };
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
        s.update_address_locations(&scope(), &publish(json!([{"address": "10.1.0.1", "services": ["U"]}]))).unwrap();
        s.update_address_locations(&scope(), &publish(json!([]))).unwrap();
        let unreg = json!({"action": "PartialUpdate", "serviceRequests": [{"isDelete": true, "service": {"name": "u", "properties": {"serviceType": "Inbound"}}}]});
        for _ in 0..2 {
            assert_eq!(s.update_services(&scope(), &unreg).unwrap_err().code, codes::OVERLAY_MAPPINGS);
        }
        s.update_services(&scope(), &unreg).unwrap();
        assert_eq!(s.update_services(&scope(), &unreg).unwrap_err().status, 404);
    }

    #[test]
    fn full_update_of_services_removes_the_unlisted_but_keeps_the_default() {
        let mut s = state_with_lb("u");
        s.seed_default_natgw(&scope()).unwrap();
        let full = json!({"action": "FullUpdate", "serviceRequests": []});
        s.update_services(&scope(), &full).unwrap();
        assert_eq!(s.inventory(&scope())["sgw_services"], json!({"default-natgw": "Outbound"}));
        // Malformed requests are refused with a format error, not a panic.
        for bad in [json!(null), json!({"action": "Sideways"}), json!({"action": "PartialUpdate", "serviceRequests": [{"service": {}}]})] {
            assert_eq!(s.update_services(&scope(), &bad).unwrap_err().status, 400, "{bad}");
        }
        for bad in [
            json!({"action": "PartialUpdate", "addressLocations": [{"addressLocation": "nope", "addressUpdateAction": "FullUpdate", "addresses": []}]}),
            json!({"action": "PartialUpdate", "addressLocations": [{"addressLocation": "10.0.0.1", "addressUpdateAction": "Sideways"}]}),
            json!({"action": "PartialUpdate", "addressLocations": [{"addressLocation": "10.0.0.1", "addresses": {}}]}),
            json!({"action": "PartialUpdate", "addressLocations": [{"addressLocation": "10.0.0.1", "addresses": [{"address": "10.1.0.1", "services": "u"}]}]}),
        ] {
            assert_eq!(s.update_address_locations(&scope(), &bad).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn unknown_subscriptions_and_resource_groups_are_refused_and_groups_are_apart() {
        let mut s = fresh();
        let other = ScopeKey::new("s", "other");
        s.add_resource_group(&other, "westus");
        let list = |s: &mut EmulatorState, scope: &ScopeKey| {
            s.apply(scope, Method::Get, &Target::Collection(ResourceKind::PublicIp), None, &Conditions::NONE)
        };
        put(&mut s, ResourceKind::PublicIp, "p", json!({"location": "eastus2"})).unwrap();
        assert_eq!(list(&mut s, &other).unwrap(), Reply::List(vec![]));
        let Reply::List(mine) = list(&mut s, &ScopeKey::new("S", "R")).unwrap() else { panic!() };
        assert_eq!(mine.len(), 1, "scopes compare case-insensitively");
        assert_eq!(list(&mut s, &ScopeKey::new("t", "r")).unwrap_err().code, codes::SUBSCRIPTION_NOT_FOUND);
        assert_eq!(list(&mut s, &ScopeKey::new("s", "nope")).unwrap_err().code, codes::RESOURCE_GROUP_NOT_FOUND);
        // A reference into another resource group is refused.
        let lb = json!({"location": "westus", "properties": {"frontendIPConfigurations": [
            {"name": "fe", "properties": {"publicIPAddress": {"id": format!("{}/publicIPAddresses/p", net())}}}]}});
        let e = s
            .apply(&other, Method::Put, &Target::Resource(ResourceKind::LoadBalancer, "lb".into()), Some(&lb), &Conditions::NONE)
            .unwrap_err();
        assert_eq!(e.code, codes::INVALID_RESOURCE_REFERENCE);
        // A reference that is not a resource ID is refused.
        let lb = json!({"location": "eastus2", "properties": {"frontendIPConfigurations": [
            {"name": "fe", "properties": {"publicIPAddress": {"id": "p"}}}]}});
        assert_eq!(put(&mut s, ResourceKind::LoadBalancer, "lb", lb).unwrap_err().code, codes::LINKED_INVALID_PROPERTY_ID);
        // Moving a resource to another region is refused.
        assert_eq!(
            put(&mut s, ResourceKind::PublicIp, "p", json!({"location": "westus"})).unwrap_err().code,
            codes::INVALID_RESOURCE_LOCATION
        );
        put(&mut s, ResourceKind::PublicIp, "p", json!({"location": "East US 2"})).unwrap();
    }
}
