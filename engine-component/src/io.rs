//! The engine's edge: what comes in (Kubernetes events, call completions) and what goes out
//! (calls started through [`Io`]).
//!
//! These types mirror the domain records of the WIT packages (`clb:difftracker@0.3.0`, and
//! `@0.2.0` before it: the records are the same, the errors and metric kinds are 0.3.0's) one to
//! one. The component glue (`wit/`) converts between them and the generated bindings; a native
//! host (replay with `--engine native`, the unit tests) uses them directly. They are plain data
//! with serde, so the host, traces and snapshots share one vocabulary.

use serde::{Deserialize, Serialize};

/// Identifies one started call, unique per tenant. The engine keeps a counter above every id it
/// knows of (in its snapshot): a host that takes the engine's ids ([`NumberedIo`], WIT 0.3.0)
/// gets them from it; one that allocates its own ([`Io`], WIT 0.2.0, the native host) returns
/// them and the counter follows.
pub type CallId = u64;

// ------------------------------------------------------------------------ Kubernetes inputs

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub deletion_timestamp: Option<String>,
    pub finalizers: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

impl ObjectMeta {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef { namespace: self.namespace.clone(), name: self.name.clone(), uid: self.uid.clone() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntOrString {
    Int(i32),
    Str(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub protocol: String,
    pub port: i32,
    pub target_port: Option<IntOrString>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LoadBalancerIngress {
    pub ip: String,
    pub hostname: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub meta: ObjectMeta,
    pub service_type: String,
    pub load_balancer_class: Option<String>,
    pub ports: Vec<ServicePort>,
    pub ip_families: Vec<String>,
    pub session_affinity: String,
    pub load_balancer_ip: String,
    pub external_traffic_policy: String,
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub addresses: Vec<String>,
    pub ready: Option<bool>,
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSlice {
    pub meta: ObjectMeta,
    pub owner_references: Vec<OwnerReference>,
    pub address_type: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub uid: String,
    pub internal_ips: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub meta: ObjectMeta,
    pub node_name: String,
    pub phase: String,
    pub pod_ip: String,
    pub pod_ips: Vec<String>,
    pub host_ip: String,
    pub host_ips: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KubeEvent {
    ServiceApplied(Service),
    ServiceDeleted(Service),
    EndpointSliceApplied(EndpointSlice),
    EndpointSliceDeleted(EndpointSlice),
    NodeApplied(Node),
    NodeDeleted(Node),
    PodApplied(Pod),
    PodDeleted(Pod),
    /// Every object of the initial lists has been delivered (as applied events): what came
    /// before is the cluster as it was at start-up, what comes after are watch events. The
    /// start-up pass (ENGINE.md 9) waits for it.
    InitialListsComplete,
}

// ------------------------------------------------------------------------ Cloud calls

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TransportProtocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbRule {
    pub protocol: TransportProtocol,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub idle_timeout_minutes: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerSpec {
    pub name: String,
    pub public_ip: String,
    pub rules: Vec<LbRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatGatewaySpec {
    pub name: String,
    pub public_ips: Vec<String>,
    pub public_ips_v6: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    Inbound,
    Outbound,
    InboundOutbound,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendPool {
    pub load_balancer: String,
    pub pool: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatReference {
    Absent,
    Set(String),
    Clear,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgwServiceRequest {
    pub name: String,
    pub service_type: ServiceType,
    pub is_delete: bool,
    pub backend_pools: Vec<BackendPool>,
    pub nat_gateway: NatReference,
    pub is_default: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgwService {
    pub name: String,
    pub service_type: ServiceType,
    pub backend_pools: Vec<BackendPool>,
    pub nat_gateway: Option<String>,
    pub is_default: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UpdateAction {
    FullUpdate,
    PartialUpdate,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AddressUpdate {
    pub address: String,
    pub services: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationUpdate {
    pub location: String,
    pub action: UpdateAction,
    pub addresses: Vec<AddressUpdate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressLocation {
    pub location: String,
    pub addresses: Vec<AddressUpdate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIpInfo {
    pub name: String,
    pub ip_address: Option<String>,
    pub version: IpVersion,
    pub attached: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatGatewayInfo {
    pub name: String,
    pub references_service_gateway: bool,
    pub raw: String,
}

/// Every ARM/NRP call of AZURE-WIRE.md section 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloudCall {
    PutPublicIp { name: String, version: IpVersion },
    DeletePublicIp { name: String },
    ListPublicIps,
    PutLoadBalancer(LoadBalancerSpec),
    DeleteLoadBalancer { name: String },
    ListLoadBalancers,
    PutNatGateway(NatGatewaySpec),
    DetachNatGateway { name: String, raw: String },
    GetNatGateway { name: String },
    DeleteNatGateway { name: String },
    ListNatGateways,
    GetSgwServices,
    GetAddressLocations,
    UpdateServices(Vec<SgwServiceRequest>),
    UpdateAddressLocations(Vec<LocationUpdate>),
}

impl CloudCall {
    /// `METHOD kind`, as AZURE-WIRE.md section 0 and the fault files name calls.
    pub fn label(&self) -> &'static str {
        match self {
            CloudCall::PutPublicIp { .. } => "PUT publicIPAddresses",
            CloudCall::DeletePublicIp { .. } => "DELETE publicIPAddresses",
            CloudCall::ListPublicIps => "GET publicIPAddresses",
            CloudCall::PutLoadBalancer(_) => "PUT loadBalancers",
            CloudCall::DeleteLoadBalancer { .. } => "DELETE loadBalancers",
            CloudCall::ListLoadBalancers => "GET loadBalancers",
            CloudCall::PutNatGateway(_) | CloudCall::DetachNatGateway { .. } => "PUT natGateways",
            CloudCall::GetNatGateway { .. } | CloudCall::ListNatGateways => "GET natGateways",
            CloudCall::DeleteNatGateway { .. } => "DELETE natGateways",
            CloudCall::GetSgwServices => "GET services",
            CloudCall::GetAddressLocations => "GET addressLocations",
            CloudCall::UpdateServices(_) => "POST updateServices",
            CloudCall::UpdateAddressLocations(_) => "POST updateAddressLocations",
        }
    }
}

// ------------------------------------------------------------------------ Kubernetes writes

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    Service,
    Pod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KubeCall {
    AddServiceFinalizers(ObjectRef),
    RemoveServiceFinalizers(ObjectRef),
    PatchServiceIngress(ObjectRef, Vec<LoadBalancerIngress>),
    AddPodFinalizer(ObjectRef),
    RemovePodFinalizer(ObjectRef),
}

impl KubeCall {
    pub fn label(&self) -> &'static str {
        match self {
            KubeCall::AddServiceFinalizers(_) => "add-service-finalizers",
            KubeCall::RemoveServiceFinalizers(_) => "remove-service-finalizers",
            KubeCall::PatchServiceIngress(..) => "patch-service-ingress",
            KubeCall::AddPodFinalizer(_) => "add-pod-finalizer",
            KubeCall::RemovePodFinalizer(_) => "remove-pod-finalizer",
        }
    }
}

/// A Kubernetes Event the engine records (fire and forget).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeEventRecord {
    pub target: ObjectRef,
    pub kind: ObjectKind,
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
}

/// Any call the engine starts and later receives a completion for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Cloud(CloudCall),
    Kube(KubeCall),
}

impl Call {
    pub fn label(&self) -> &'static str {
        match self {
            Call::Cloud(c) => c.label(),
            Call::Kube(k) => k.label(),
        }
    }
}

// ------------------------------------------------------------------------ Completions

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallOutput {
    Done,
    PublicIp(PublicIpInfo),
    NatGateway(Option<NatGatewayInfo>),
    PublicIps(Vec<PublicIpInfo>),
    Names(Vec<String>),
    SgwServices(Vec<SgwService>),
    AddressLocations(Vec<AddressLocation>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    Http,
    Throttled,
    Timeout,
    Transport,
    InvalidResponse,
    OperationFailed,
    NotFound,
    Replaced,
    Conflict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallError {
    pub kind: ErrorKind,
    pub status: u16,
    pub code: String,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

impl CallError {
    pub fn http(status: u16, code: &str, message: &str) -> Self {
        CallError { kind: ErrorKind::Http, status, code: code.into(), message: message.into(), retry_after_ms: None }
    }
    pub fn of_kind(kind: ErrorKind, message: &str) -> Self {
        CallError { kind, status: 0, code: String::new(), message: message.into(), retry_after_ms: None }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if self.status != 0 {
            write!(f, " {}", self.status)?;
        }
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub id: CallId,
    pub outcome: Result<CallOutput, CallError>,
}

// ------------------------------------------------------------------------ Engine surface

/// The default cap on a server's `Retry-After`: 5 minutes, the park cooldown (ENGINE.md 4.3).
pub const DEFAULT_MAX_RETRY_AFTER_MS: u64 = 5 * 60 * 1_000;

/// The default least time between the starts of two ServiceGateway POSTs of a kind: two
/// seconds, about two `updateAddressLocations` at NRP, so a fast NRP is not sent one request per
/// event, and registrations that arrive one by one share a call.
pub const DEFAULT_SGW_POST_INTERVAL_MS: u64 = 2_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantConfig {
    pub tenant: String,
    pub seed: u64,
    /// The longest `Retry-After` (a throttled call's `retry_after_ms`) the engine honours before
    /// the next attempt of that operation or location sync; `None` means
    /// [`DEFAULT_MAX_RETRY_AFTER_MS`], 0 ignores `Retry-After` (backoff only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_after_ms: Option<u64>,
    /// The byte budget of one ServiceGateway POST (`updateAddressLocations`, `updateServices`),
    /// its body estimated as the wire encodes it (ENGINE.md 5.5); `None` means
    /// [`DEFAULT_MAX_REQUEST_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// The entry budget of one ServiceGateway POST: locations plus addresses of an
    /// `updateAddressLocations`, services of an `updateServices`; `None` means
    /// [`DEFAULT_MAX_REQUEST_ENTRIES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_entries: Option<u32>,
    /// Operations run at once (ENGINE.md 4.2); `None` means
    /// [`crate::dispatcher::MAX_CONCURRENT_OPERATIONS`], as upstream. Held to 1..=1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_operations_in_flight: Option<u32>,
    /// The least time between the starts of two ServiceGateway POSTs of a kind: two location
    /// syncs a trigger asks for (ENGINE.md 7), two `updateServices` batches (5.5); `None` means
    /// [`DEFAULT_SGW_POST_INTERVAL_MS`], 0 starts each at once, as upstream (WIT
    /// `tenant-config.sgw-post-interval-ms`, 0.3.0; a 0.2.0 component posts at once, as it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgw_post_interval_ms: Option<u64>,
}

impl TenantConfig {
    /// The `Retry-After` cap in force.
    pub fn retry_after_cap_ms(&self) -> u64 {
        self.max_retry_after_ms.unwrap_or(DEFAULT_MAX_RETRY_AFTER_MS)
    }

    /// The cap on operations in flight in force.
    pub fn operations_cap(&self) -> usize {
        self.max_operations_in_flight.map_or(crate::dispatcher::MAX_CONCURRENT_OPERATIONS, |n| n.clamp(1, 1000) as usize)
    }

    /// The ServiceGateway POST interval in force.
    pub fn sgw_post_interval_ms(&self) -> u64 {
        self.sgw_post_interval_ms.unwrap_or(DEFAULT_SGW_POST_INTERVAL_MS)
    }

    /// The request budget in force.
    pub fn request_budget(&self) -> RequestBudget {
        RequestBudget {
            max_bytes: self.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
            max_entries: self.max_request_entries.unwrap_or(DEFAULT_MAX_REQUEST_ENTRIES),
        }
    }
}

// ------------------------------------------------------------------------ Request budget

/// The request body NRP accepts on its ServiceGateway POSTs, as the emulator enforces it:
/// 2 MiB (a larger one is answered `413`).
pub const NRP_MAX_REQUEST_BYTES: u64 = 2 << 20;

/// The default byte budget of one ServiceGateway POST: 1 MiB, half of [`NRP_MAX_REQUEST_BYTES`].
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;

/// The default entry budget of one ServiceGateway POST: 10,000 locations and addresses.
pub const DEFAULT_MAX_REQUEST_ENTRIES: u32 = 10_000;

/// What one ServiceGateway POST may carry. A request always carries at least one entry, even
/// one that alone exceeds the budget (it cannot be split further).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestBudget {
    pub max_bytes: u64,
    pub max_entries: u32,
}

impl RequestBudget {
    /// Whether a request of `bytes` and `entries` is within the budget.
    pub fn fits(&self, bytes: u64, entries: u64) -> bool {
        bytes <= self.max_bytes && entries <= u64::from(self.max_entries)
    }
}

/// Bytes of `s` as a JSON string literal, quotes included: never less than the encoder writes
/// (a control character is counted as a six-byte `\u00XX` escape).
pub fn json_string_bytes(s: &str) -> u64 {
    let inner: u64 = s
        .chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8() as u64,
        })
        .sum();
    inner + 2
}

/// `{"action":"PartialUpdate","addressLocations":[]}`: the body of an `updateAddressLocations`
/// without its locations.
pub const LOCATION_REQUEST_ENVELOPE_BYTES: u64 = 48;

/// Bytes one location entry adds without its addresses (its separating comma included),
/// `{"addressLocation":L,"addressUpdateAction":"PartialUpdate","addresses":[]},`.
pub fn location_entry_bytes(location: &str) -> u64 {
    // `{"addressLocation":` 19, `,"addressUpdateAction":"PartialUpdate"` 38 (the longer action),
    // `,"addresses":[]}` 16, the comma 1.
    19 + json_string_bytes(location) + 38 + 16 + 1
}

/// Bytes one address entry adds to its location (its separating comma included),
/// `{"address":A,"services":[S,...]},`.
pub fn address_entry_bytes<'a>(address: &str, services: impl IntoIterator<Item = &'a str>) -> u64 {
    // `{"address":` 11, `,"services":[]}` 15, the comma 1; each service and its comma.
    let services: u64 = services.into_iter().map(|s| json_string_bytes(s) + 1).sum();
    11 + json_string_bytes(address) + 15 + 1 + services
}

/// The estimated body of an `updateAddressLocations` carrying `locations`: never less than the
/// wire encoding (compact JSON) the host sends.
pub fn location_request_bytes(locations: &[LocationUpdate]) -> u64 {
    LOCATION_REQUEST_ENVELOPE_BYTES
        + locations
            .iter()
            .map(|l| {
                location_entry_bytes(&l.location)
                    + l.addresses.iter().map(|a| address_entry_bytes(&a.address, a.services.iter().map(String::as_str))).sum::<u64>()
            })
            .sum::<u64>()
}

/// The entries of an `updateAddressLocations` carrying `locations`: each location and each
/// address counts one.
pub fn location_request_entries(locations: &[LocationUpdate]) -> u64 {
    locations.iter().map(|l| 1 + l.addresses.len() as u64).sum()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickOutcome {
    pub next_wake_ms: Option<u64>,
    pub calls_in_flight: u32,
}

/// How a host exposes a metric sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricKind {
    /// Goes up and down. The default of samples recorded before kinds existed.
    #[default]
    Gauge,
    /// Only grows: counters, and a histogram's `_bucket`, `_sum` and `_count` samples.
    Counter,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    #[serde(default)]
    pub kind: MetricKind,
}

/// Where the start-up pass (ENGINE.md 9) stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InitPhase {
    /// The five list calls and the initial cluster state (up to `InitialListsComplete`) are
    /// awaited; nothing runs.
    #[default]
    Listing,
    /// The start-up pass ran; the operations it scheduled run until the init gate (4.4) opens.
    /// Watch events are held until initialization completes.
    Reconciling,
    /// Ingress backfill and the orphan public IP sweep (steps 12, 13).
    Finishing,
    /// Initialized: watch events are applied as they come.
    Ready,
}

impl InitPhase {
    pub fn label(self) -> &'static str {
        match self {
            InitPhase::Listing => "listing",
            InitPhase::Reconciling => "reconciling",
            InitPhase::Finishing => "finishing",
            InitPhase::Ready => "ready",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initialization {
    pub phase: InitPhase,
    /// Whether `InitialListsComplete` was delivered.
    pub initial_lists_complete: bool,
    /// Start-up list attempts that failed so far (each is retried with backoff).
    pub failed_attempts: u32,
    /// Why the latest attempt failed; cleared once the lists succeed.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub states: Vec<(String, u32)>,
    pub operations_in_flight: u32,
    pub calls_in_flight: u32,
    pub pending_deletions: u32,
    pub pending_pod_deletions: u32,
    pub buffered_endpoint_deltas: u32,
    pub location_sync_in_flight: bool,
    pub settled: bool,
    pub initialization: Initialization,
    pub metrics: Vec<MetricSample>,
}

/// The engine's only way to act on the world, for a host that numbers the calls itself (WIT
/// 0.2.0, the native host): starting a call returns its id at once; the completion comes back
/// through a later tick ([`Engine::tick`](crate::Engine::tick)).
pub trait Io {
    fn start(&mut self, call: Call) -> CallId;
    fn record_event(&mut self, event: KubeEventRecord);
}

/// The same port for a host that takes the engine's call ids (WIT 0.3.0,
/// [`Engine::tick_numbered`](crate::Engine::tick_numbered)): the engine numbers every call from
/// its own counter and hands the id with it.
pub trait NumberedIo {
    fn start(&mut self, id: CallId, call: Call);
    fn record_event(&mut self, event: KubeEventRecord);
}

/// One tracked operation (a Service or an egress identity) as the engine sees it: what
/// `difftracker explain`, the status page and the replay timeline show. Built by
/// [`Engine::operation_statuses`](crate::Engine::operation_statuses), in identity order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationStatus {
    /// The identity: an inbound Service's UID (lower case) or an egress identity.
    pub identity: String,
    /// `inbound` or `outbound`.
    pub kind: String,
    /// The Kubernetes Service (inbound; empty for an egress identity).
    pub namespace: String,
    pub name: String,
    /// The state label (`not_started`, `creation_in_progress`, `created`, `deletion_pending`,
    /// `deletion_in_progress`, `update_in_progress`, `unknown`).
    pub state: String,
    /// Failed attempts of the current burst.
    pub retry_count: u32,
    pub last_attempt_ms: Option<u64>,
    /// When the next attempt may start (the retry timer, or a server's `Retry-After`).
    pub next_retry_at_ms: Option<u64>,
    /// The retry budget ran out: the op is parked until its park cooldown re-arms it.
    pub retries_exhausted: bool,
    /// A terminal error (e.g. a spec the cloud refuses): only a spec change moves it.
    pub terminal: bool,
    /// Its worker has a cloud call in flight.
    pub in_flight: bool,
    /// Endpoint changes held until the op exists in the cloud.
    pub buffered_endpoints: u32,
    /// What the op waits for before it can move, in a few words (empty when it has nothing to do).
    pub waiting_for: String,
    /// The id the op's calls carry from the engine's decision to ARM.
    pub correlation_id: String,
}
