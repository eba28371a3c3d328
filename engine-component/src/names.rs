//! The Kubernetes names the engine reads and writes, in one place for hosts and tests to use
//! instead of copies: the egress label and Service annotations it reads, the finalizers it owns
//! (ENGINE.md 8.3; hosts add and remove them on its calls) and the reasons of the Warning
//! Events it records.

/// The Pod label whose value names the egress identity (2.4).
pub const EGRESS_LABEL: &str = "kubernetes.azure.com/service-egress-gateway";
/// The finalizer the engine owns on egress Pods.
pub const POD_FINALIZER: &str = "servicegateway.azure.com/pod-cleanup";
/// The ServiceGateway's own finalizer on Services.
pub const SERVICE_CLEANUP_FINALIZER: &str = "servicegateway.azure.com/service-cleanup";
/// Upstream's load balancer finalizer, which the engine adds and removes with its own.
pub const LOAD_BALANCER_CLEANUP_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// The finalizers the engine owns on Services, in the order they are added.
pub const SERVICE_FINALIZERS: [&str; 2] = [SERVICE_CLEANUP_FINALIZER, LOAD_BALANCER_CLEANUP_FINALIZER];

/// Service annotations admission reads (2.2).
pub const ANNOTATION_INTERNAL: &str = "service.beta.kubernetes.io/azure-load-balancer-internal";
pub const ANNOTATION_IDLE_TIMEOUT: &str = "service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout";

// Warning Event reasons on Services: admission rejections (2.2), then a terminal create/update,
// then the identity checks of admission (names Azure cannot hold, a UID another Service owns).
pub const REASON_INTERNAL: &str = "UnsupportedInternalLoadBalancer";
pub const REASON_SESSION_AFFINITY: &str = "UnsupportedSessionAffinity";
pub const REASON_LB_IP: &str = "UnsupportedLoadBalancerIP";
pub const REASON_DUAL_STACK: &str = "UnsupportedDualStack";
pub const REASON_IDLE_TIMEOUT: &str = "InvalidIdleTimeout";
pub const REASON_NAMED_PORT: &str = "UnsupportedNamedTargetPort";
pub const REASON_PROTOCOL: &str = "UnsupportedProtocol";
pub const REASON_COLLISION: &str = "UnsupportedBackendPortCollision";
pub const REASON_CONFIGURATION_REJECTED: &str = "ServiceGatewayConfigurationRejected";
/// The Service's UID gives Azure resource names Azure cannot hold (non-ASCII, longer than 80
/// characters with its suffix, `/`, `?`, `#`, `%`, spaces, a trailing dot...): terminal.
pub const REASON_INVALID_RESOURCE_NAME: &str = "ServiceGatewayInvalidResourceName";
/// Another live Service already owns this UID (identities are lower-cased UIDs): this one is
/// ignored, the owner's load balancer is neither adopted nor torn down.
pub const REASON_DUPLICATE_UID: &str = "ServiceGatewayDuplicateServiceUID";

// Warning Event reasons on egress Pods (2.4, 8.3).
pub const REASON_INVALID_EGRESS_LABEL: &str = "ServiceGatewayInvalidEgressLabel";
pub const REASON_RESERVED_EGRESS_LABEL: &str = "ServiceGatewayReservedEgressLabel";
pub const REASON_INVALID_POD_IP: &str = "ServiceGatewayInvalidPodIP";
pub const REASON_NO_NODE_LOCATION: &str = "ServiceGatewayNoNodeLocation";
pub const REASON_FINALIZER_ADD_FAILED: &str = "ServiceGatewayFinalizerAddFailed";
