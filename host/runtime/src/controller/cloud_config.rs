//! The Azure side of `difftracker run`: cloud-provider-azure's own `azure.json` (the keys
//! upstream reads for the network resources and the credential), overridable key by key from
//! flags, turned into a [`TenantAzureConfig`] and a credential choice.
//!
//! Unknown keys are ignored (an `azure.json` written for the upstream provider carries many this
//! controller has no use for); a known key of the wrong type, a missing required key or a value
//! ARM would refuse is an error naming the key and the file.

use crate::transport::{AzureCredentialConfig, TenantAzureConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest `azure.json` read (it is a few hundred bytes in practice).
pub const MAX_CLOUD_CONFIG_BYTES: u64 = 1 << 20;

/// The keys of `azure.json` this controller reads, as upstream names them.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AzureJson {
    pub cloud: Option<String>,
    /// A custom cloud's ARM endpoint (upstream reads it from the environment file; accepted here).
    pub resource_manager_endpoint: Option<String>,
    pub tenant_id: Option<String>,
    pub subscription_id: Option<String>,
    pub resource_group: Option<String>,
    pub location: Option<String>,
    pub vnet_name: Option<String>,
    pub vnet_resource_group: Option<String>,
    #[serde(rename = "networkResourceSubscriptionID")]
    pub network_resource_subscription_id: Option<String>,
    pub aad_client_id: Option<String>,
    pub aad_client_secret: Option<String>,
    pub use_managed_identity_extension: Option<bool>,
    #[serde(rename = "userAssignedIdentityID")]
    pub user_assigned_identity_id: Option<String>,
    pub aad_federated_token_file: Option<String>,
    pub use_federated_workload_identity_extension: Option<bool>,
}

impl AzureJson {
    /// Reads and parses `path`; errors name the file and, for a bad key, the key.
    pub fn load(path: &Path) -> Result<AzureJson, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("cloud config {shown}: {e}"))?;
        if meta.len() > MAX_CLOUD_CONFIG_BYTES {
            return Err(format!("cloud config {shown}: {} bytes, larger than the {MAX_CLOUD_CONFIG_BYTES} accepted", meta.len()));
        }
        let text = std::fs::read(path).map_err(|e| format!("cloud config {shown}: {e}"))?;
        AzureJson::parse(&text).map_err(|e| format!("cloud config {shown}: {e}"))
    }

    /// Parses the JSON text of an `azure.json`.
    pub fn parse(text: &[u8]) -> Result<AzureJson, String> {
        let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        if !value.is_object() {
            return Err(format!("expected a JSON object, found {}", crate::k8s::json_type_name(&value)));
        }
        // Field by field, so that the error names the key (serde's own message names only a type).
        let object = value.as_object().into_iter().flatten();
        for (key, v) in object {
            let want_bool = matches!(key.as_str(), "useManagedIdentityExtension" | "useFederatedWorkloadIdentityExtension");
            let known = KNOWN_KEYS.contains(&key.as_str());
            if known && want_bool && !v.is_boolean() && !v.is_null() {
                return Err(format!("`{key}` must be true or false, found {}", crate::k8s::json_type_name(v)));
            }
            if known && !want_bool && !v.is_string() && !v.is_null() {
                return Err(format!("`{key}` must be a string, found {}", crate::k8s::json_type_name(v)));
            }
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

const KNOWN_KEYS: [&str; 15] = [
    "cloud",
    "resourceManagerEndpoint",
    "tenantId",
    "subscriptionId",
    "resourceGroup",
    "location",
    "vnetName",
    "vnetResourceGroup",
    "networkResourceSubscriptionID",
    "aadClientId",
    "aadClientSecret",
    "useManagedIdentityExtension",
    "userAssignedIdentityID",
    "aadFederatedTokenFile",
    "useFederatedWorkloadIdentityExtension",
];

/// `--credential`: how ARM calls are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// No token (the emulator).
    None,
    /// Whatever the environment offers, chosen as the Azure identity libraries do
    /// ([`AzureCredentialConfig::from_env`]).
    Env,
    WorkloadIdentity,
    ManagedIdentity,
    /// A client secret (`aadClientId`/`aadClientSecret` of the cloud config).
    ClientSecret,
}

/// The ARM endpoint of a named Azure cloud (the `cloud` key).
pub fn arm_endpoint_of_cloud(cloud: &str) -> Option<&'static str> {
    match cloud.trim().to_ascii_lowercase().as_str() {
        "" | "azurepubliccloud" | "azurecloud" => Some("https://management.azure.com"),
        "azurechinacloud" => Some("https://management.chinacloudapi.cn"),
        "azureusgovernmentcloud" | "azureusgovernment" => Some("https://management.usgovcloudapi.net"),
        _ => None,
    }
}

/// Flags that override the cloud config key by key (`None`: not given).
#[derive(Clone, Debug, Default)]
pub struct AzureOverrides {
    pub arm_endpoint: Option<String>,
    pub subscription: Option<String>,
    pub resource_group: Option<String>,
    pub location: Option<String>,
    pub vnet: Option<String>,
    pub vnet_resource_group: Option<String>,
    pub network_subscription: Option<String>,
    pub credential: Option<CredentialKind>,
}

/// The resolved Azure side: where the resources are and how to authenticate.
#[derive(Clone, Debug, PartialEq)]
pub struct AzureSide {
    pub config: TenantAzureConfig,
    /// `None`: no token is sent.
    pub credential: Option<AzureCredentialConfig>,
}

/// Combines a cloud config (when given) with the flags, flags winning. Errors name the missing
/// or invalid key and say which flag or key provides it.
pub fn resolve(file: Option<(&AzureJson, &Path)>, flags: &AzureOverrides) -> Result<AzureSide, String> {
    let json = file.map(|(j, _)| j.clone()).unwrap_or_default();
    let source = file.map_or("no --cloud-config given".to_string(), |(_, p)| format!("cloud config {}", p.display()));
    let pick = |flag: &Option<String>, key: Option<String>| flag.clone().or(key).filter(|v| !v.trim().is_empty());
    let required = |flag: &Option<String>, key: Option<String>, flag_name: &str, key_name: &str| {
        pick(flag, key)
            .ok_or_else(|| format!("the Azure {key_name} is missing: pass {flag_name}, or set `{key_name}` in the cloud config ({source})"))
    };
    let arm_endpoint = match pick(&flags.arm_endpoint, json.resource_manager_endpoint.clone()) {
        Some(e) => e,
        None => {
            let cloud = json.cloud.clone().unwrap_or_default();
            arm_endpoint_of_cloud(&cloud)
                .ok_or_else(|| format!("`cloud` is {cloud:?}, not a cloud this controller knows: pass --arm-endpoint ({source})"))?
                .to_string()
        }
    };
    let subscription = required(&flags.subscription, json.subscription_id.clone(), "--subscription", "subscriptionId")?;
    let resource_group = required(&flags.resource_group, json.resource_group.clone(), "--resource-group", "resourceGroup")?;
    let location = required(&flags.location, json.location.clone(), "--location", "location")?;
    let vnet = required(&flags.vnet, json.vnet_name.clone(), "--vnet", "vnetName")?;
    let mut config = TenantAzureConfig::new(arm_endpoint, subscription, resource_group, location, vnet);
    if let Some(rg) = pick(&flags.vnet_resource_group, json.vnet_resource_group.clone()) {
        config = config.with_vnet_resource_group(rg);
    }
    if let Some(sub) = pick(&flags.network_subscription, json.network_resource_subscription_id.clone()) {
        config = config.with_network_subscription(sub);
    }
    config.validate().map_err(|e| format!("{e} ({source})"))?;
    let credential = credential_of(&json, flags.credential, &source)?;
    Ok(AzureSide { config, credential })
}

/// The credential: the flag when given, else what the cloud config asks for the way upstream
/// reads it (workload identity, then managed identity, then a client secret).
fn credential_of(json: &AzureJson, flag: Option<CredentialKind>, source: &str) -> Result<Option<AzureCredentialConfig>, String> {
    let kind = match flag {
        Some(k) => k,
        None if json.use_federated_workload_identity_extension == Some(true) || json.aad_federated_token_file.is_some() => {
            CredentialKind::WorkloadIdentity
        }
        None if json.use_managed_identity_extension == Some(true) => CredentialKind::ManagedIdentity,
        None if json.aad_client_secret.as_deref().is_some_and(|s| !s.is_empty()) => CredentialKind::ClientSecret,
        None => {
            return Err(format!(
                "no credential configured: pass --credential none|env|workload-identity|managed-identity, or set \
                 `useManagedIdentityExtension`, `aadFederatedTokenFile` or `aadClientId`/`aadClientSecret` ({source})"
            ))
        }
    };
    let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    Ok(match kind {
        CredentialKind::None => None,
        CredentialKind::Env => Some(AzureCredentialConfig::from_env()),
        CredentialKind::WorkloadIdentity => Some(AzureCredentialConfig::WorkloadIdentity {
            tenant_id: non_empty(&json.tenant_id),
            client_id: non_empty(&json.aad_client_id),
            token_file: non_empty(&json.aad_federated_token_file).map(PathBuf::from),
        }),
        CredentialKind::ManagedIdentity => {
            Some(AzureCredentialConfig::ManagedIdentity { user_assigned_id: non_empty(&json.user_assigned_identity_id) })
        }
        CredentialKind::ClientSecret => {
            let missing = |key: &str| format!("a client-secret credential needs `{key}` ({source})");
            Some(AzureCredentialConfig::ClientSecret {
                tenant_id: non_empty(&json.tenant_id).ok_or_else(|| missing("tenantId"))?,
                client_id: non_empty(&json.aad_client_id).ok_or_else(|| missing("aadClientId"))?,
                client_secret: non_empty(&json.aad_client_secret).ok_or_else(|| missing("aadClientSecret"))?,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "cloud": "AzurePublicCloud", "tenantId": "t-1", "subscriptionId": "sub-1", "resourceGroup": "rg-1",
        "location": "westeurope", "vnetName": "vnet-1", "vnetResourceGroup": "rg-net",
        "networkResourceSubscriptionID": "sub-net", "useManagedIdentityExtension": true,
        "userAssignedIdentityID": "client-9", "loadBalancerSku": "standard", "maximumLoadBalancerRuleCount": 250
    }"#;

    fn path() -> &'static Path {
        Path::new("azure.json")
    }

    #[test]
    fn an_upstream_azure_json_resolves_with_its_unknown_keys_ignored() {
        let json = AzureJson::parse(FULL.as_bytes()).unwrap();
        let side = resolve(Some((&json, path())), &AzureOverrides::default()).unwrap();
        assert_eq!(side.config.endpoint(), "https://management.azure.com");
        assert_eq!(side.config.subscription_id, "sub-1");
        assert_eq!(side.config.network_subscription(), "sub-net");
        assert_eq!(side.config.vnet_resource_group(), "rg-net");
        assert_eq!(side.config.location, "westeurope");
        assert!(
            matches!(side.credential, Some(AzureCredentialConfig::ManagedIdentity { user_assigned_id: Some(ref id) }) if id == "client-9")
        );
    }

    #[test]
    fn flags_override_the_file_and_none_sends_no_token() {
        let json = AzureJson::parse(FULL.as_bytes()).unwrap();
        let flags = AzureOverrides {
            arm_endpoint: Some("http://127.0.0.1:9".into()),
            resource_group: Some("rg-2".into()),
            credential: Some(CredentialKind::None),
            ..AzureOverrides::default()
        };
        let side = resolve(Some((&json, path())), &flags).unwrap();
        assert_eq!(side.config.endpoint(), "http://127.0.0.1:9");
        assert_eq!(side.config.resource_group, "rg-2");
        assert!(side.credential.is_none());
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let e = AzureJson::parse(br#"{"subscriptionId": 42}"#).unwrap_err();
        assert!(e.contains("`subscriptionId` must be a string"), "{e}");
        let e = AzureJson::parse(br#"{"useManagedIdentityExtension": "yes"}"#).unwrap_err();
        assert!(e.contains("`useManagedIdentityExtension` must be true or false"), "{e}");
        assert!(AzureJson::parse(b"[1]").unwrap_err().contains("expected a JSON object"));
        assert!(AzureJson::parse(b"{").unwrap_err().contains("not JSON"));

        let json = AzureJson::parse(br#"{"subscriptionId": "s", "resourceGroup": "rg", "location": "l"}"#).unwrap();
        let e = resolve(Some((&json, path())), &AzureOverrides::default()).unwrap_err();
        assert!(e.contains("vnetName") && e.contains("--vnet") && e.contains("azure.json"), "{e}");
        let e = resolve(None, &AzureOverrides { credential: Some(CredentialKind::None), ..Default::default() }).unwrap_err();
        assert!(e.contains("subscriptionId") && e.contains("no --cloud-config given"), "{e}");
    }

    #[test]
    fn an_unknown_cloud_or_credential_is_refused() {
        let json = AzureJson::parse(
            br#"{"cloud": "AzureMoonCloud", "subscriptionId": "s", "resourceGroup": "rg", "location": "l", "vnetName": "v"}"#,
        )
        .unwrap();
        let e = resolve(Some((&json, path())), &AzureOverrides::default()).unwrap_err();
        assert!(e.contains("AzureMoonCloud") && e.contains("--arm-endpoint"), "{e}");
        let json = AzureJson::parse(br#"{"subscriptionId": "s", "resourceGroup": "rg", "location": "l", "vnetName": "v"}"#).unwrap();
        let e = resolve(Some((&json, path())), &AzureOverrides::default()).unwrap_err();
        assert!(e.contains("no credential configured"), "{e}");
        let json = AzureJson::parse(
            br#"{"subscriptionId": "s", "resourceGroup": "rg", "location": "l", "vnetName": "v", "aadClientSecret": "x"}"#,
        )
        .unwrap();
        let e = resolve(Some((&json, path())), &AzureOverrides::default()).unwrap_err();
        assert!(e.contains("tenantId"), "{e}");
    }

    #[test]
    fn a_bad_name_is_refused_with_the_file_named() {
        let json = AzureJson::parse(br#"{"subscriptionId": "s/../x", "resourceGroup": "rg", "location": "l", "vnetName": "v"}"#).unwrap();
        let e =
            resolve(Some((&json, path())), &AzureOverrides { credential: Some(CredentialKind::None), ..Default::default() }).unwrap_err();
        assert!(e.contains("azure.json"), "{e}");
    }
}
