//! A tenant's Azure coordinates, and the only place URLs and resource IDs are built.
//!
//! The engine names resources (`<uid>-pip`, `<uid>`, an egress identity); every path and every
//! resource ID written into a body comes from here, built from the tenant's own subscription and
//! resource group. Names are validated first, so a name can never climb out of its collection
//! (`..`, `/`) or smuggle a query (`?`, `#`, `%`).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The api-version of every call (AZURE-WIRE.md section 0).
pub const API_VERSION: &str = "2025-05-01";
/// The ServiceGateway's fixed, non-configurable name.
pub const SERVICE_GATEWAY_NAME: &str = "servicegateway";
/// Public cloud ARM endpoint.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// Token scope of the public cloud (audience `https://management.core.windows.net/` + `/.default`).
pub const ARM_SCOPE: &str = "https://management.core.windows.net//.default";
/// Longest Azure resource name the project uses (`<73 chars>-pip-v6`).
pub const MAX_NAME_LEN: usize = 80;

/// A name or configuration value that cannot be placed in an ARM URL.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong { what: &'static str, value: String, max: usize },
    #[error("{what} {value:?} contains the forbidden character {ch:?}")]
    ForbiddenChar { what: &'static str, value: String, ch: char },
    #[error("{what} {value:?} is or contains a relative path segment")]
    DotSegment { what: &'static str, value: String },
    #[error("ARM endpoint {value:?} is not usable: {reason}")]
    Endpoint { value: String, reason: String },
}

/// The ARM resource collections the engine writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    PublicIp,
    LoadBalancer,
    NatGateway,
}

impl ResourceKind {
    /// The path segment, spelled as ARM spells it.
    pub fn segment(self) -> &'static str {
        match self {
            ResourceKind::PublicIp => "publicIPAddresses",
            ResourceKind::LoadBalancer => "loadBalancers",
            ResourceKind::NatGateway => "natGateways",
        }
    }
    /// The ARM resource type.
    pub fn arm_type(self) -> &'static str {
        match self {
            ResourceKind::PublicIp => "Microsoft.Network/publicIPAddresses",
            ResourceKind::LoadBalancer => "Microsoft.Network/loadBalancers",
            ResourceKind::NatGateway => "Microsoft.Network/natGateways",
        }
    }
}

/// The four ServiceGateway sub-operations (calls #11 to #14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgwOperation {
    Services,
    AddressLocations,
    UpdateServices,
    UpdateAddressLocations,
}

impl SgwOperation {
    pub fn segment(self) -> &'static str {
        match self {
            SgwOperation::Services => "services",
            SgwOperation::AddressLocations => "addressLocations",
            SgwOperation::UpdateServices => "updateServices",
            SgwOperation::UpdateAddressLocations => "updateAddressLocations",
        }
    }
}

/// Where one tenant's resources live (AZURE-WIRE.md section 1.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantAzureConfig {
    /// `https://management.azure.com`, or the emulator's `http://127.0.0.1:PORT`.
    pub arm_endpoint: String,
    pub subscription_id: String,
    /// The subscription of every URL and resource ID; defaults to `subscription_id`.
    #[serde(default)]
    pub network_subscription_id: Option<String>,
    pub resource_group: String,
    /// Azure region, e.g. `eastus2`.
    pub location: String,
    pub vnet_name: String,
    /// Defaults to `resource_group`.
    #[serde(default)]
    pub vnet_resource_group: Option<String>,
}

impl TenantAzureConfig {
    pub fn new(
        arm_endpoint: impl Into<String>,
        subscription_id: impl Into<String>,
        resource_group: impl Into<String>,
        location: impl Into<String>,
        vnet_name: impl Into<String>,
    ) -> Self {
        TenantAzureConfig {
            arm_endpoint: arm_endpoint.into(),
            subscription_id: subscription_id.into(),
            network_subscription_id: None,
            resource_group: resource_group.into(),
            location: location.into(),
            vnet_name: vnet_name.into(),
            vnet_resource_group: None,
        }
    }

    pub fn with_network_subscription(mut self, sub: impl Into<String>) -> Self {
        self.network_subscription_id = Some(sub.into());
        self
    }

    pub fn with_vnet_resource_group(mut self, rg: impl Into<String>) -> Self {
        self.vnet_resource_group = Some(rg.into());
        self
    }

    /// The subscription used in every URL and ID.
    pub fn network_subscription(&self) -> &str {
        match &self.network_subscription_id {
            Some(s) if !s.is_empty() => s,
            _ => &self.subscription_id,
        }
    }

    pub fn vnet_resource_group(&self) -> &str {
        match &self.vnet_resource_group {
            Some(s) if !s.is_empty() => s,
            _ => &self.resource_group,
        }
    }

    /// The endpoint without a trailing slash.
    pub fn endpoint(&self) -> &str {
        self.arm_endpoint.trim_end_matches('/')
    }

    /// Checks every configured value; call once when the tenant is configured.
    pub fn validate(&self) -> Result<(), NameError> {
        let ep = self.endpoint();
        let rest = ep
            .strip_prefix("https://")
            .or_else(|| ep.strip_prefix("http://"))
            .ok_or_else(|| NameError::Endpoint { value: ep.into(), reason: "must start with http:// or https://".into() })?;
        if rest.is_empty() {
            return Err(NameError::Endpoint { value: ep.into(), reason: "has no host".into() });
        }
        if let Some(ch) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace()) {
            return Err(NameError::Endpoint { value: ep.into(), reason: format!("must be scheme://host[:port] only, found {ch:?}") });
        }
        validate_name("subscription", &self.subscription_id)?;
        validate_name("network subscription", self.network_subscription())?;
        validate_rg("resource group", &self.resource_group)?;
        validate_rg("VNet resource group", self.vnet_resource_group())?;
        validate_name("VNet name", &self.vnet_name)?;
        validate_name("location", &self.location)?;
        Ok(())
    }

    /// `/subscriptions/{netsub}/resourceGroups/{rg}/providers/Microsoft.Network`.
    pub fn provider_path(&self) -> String {
        format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network", self.network_subscription(), self.resource_group)
    }

    /// The collection path of a kind (list calls).
    pub fn collection_path(&self, kind: ResourceKind) -> String {
        format!("{}/{}", self.provider_path(), kind.segment())
    }

    /// The resource ID (also the URL path) of a named resource.
    pub fn resource_id(&self, kind: ResourceKind, name: &str) -> Result<String, NameError> {
        validate_name(kind.segment(), name)?;
        Ok(format!("{}/{}", self.collection_path(kind), name))
    }

    pub fn frontend_id(&self, lb: &str) -> Result<String, NameError> {
        Ok(format!("{}/frontendIPConfigurations/frontend", self.resource_id(ResourceKind::LoadBalancer, lb)?))
    }

    pub fn backend_pool_id(&self, lb: &str, pool: &str) -> Result<String, NameError> {
        validate_name("backend pool", pool)?;
        Ok(format!("{}/backendAddressPools/{}", self.resource_id(ResourceKind::LoadBalancer, lb)?, pool))
    }

    pub fn service_gateway_id(&self) -> String {
        format!("{}/serviceGateways/{}", self.provider_path(), SERVICE_GATEWAY_NAME)
    }

    pub fn vnet_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/virtualNetworks/{}",
            self.network_subscription(),
            self.vnet_resource_group(),
            self.vnet_name
        )
    }

    pub fn sgw_path(&self, op: SgwOperation) -> String {
        format!("{}/{}", self.service_gateway_id(), op.segment())
    }

    /// The absolute URL of a path built above, with the api-version.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}?api-version={}", self.endpoint(), path, API_VERSION)
    }
}

fn check_common(what: &'static str, value: &str, extra: &[char]) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, value: value.into(), max: MAX_NAME_LEN });
    }
    if let Some(ch) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(c))) {
        return Err(NameError::ForbiddenChar { what, value: value.into(), ch });
    }
    if value == "." || value.contains("..") || value.ends_with('.') {
        return Err(NameError::DotSegment { what, value: value.into() });
    }
    Ok(())
}

/// A resource name the engine gives: ASCII letters, digits, `-`, `_`, `.`; 1 to 80 characters; no
/// dot segments. Anything else (`/`, `?`, `#`, `%`, spaces, non-ASCII) is refused.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), NameError> {
    check_common(what, value, &[])
}

fn validate_rg(what: &'static str, value: &str) -> Result<(), NameError> {
    // Resource group names may also carry parentheses.
    check_common(what, value, &['(', ')'])
}

/// The segment after `/<kind>/` in a resource ID (case-insensitive), e.g. the load balancer name
/// of a backend pool ID.
pub fn id_segment_after<'a>(id: &'a str, kind: &str) -> Option<&'a str> {
    let parts: Vec<&str> = id.split('/').collect();
    parts.iter().position(|p| p.eq_ignore_ascii_case(kind)).and_then(|i| parts.get(i + 1).copied()).filter(|s| !s.is_empty())
}
