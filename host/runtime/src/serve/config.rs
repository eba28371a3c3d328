//! The configuration file of `difftracker serve`: TOML, one `[host]` table and one `[[tenant]]`
//! table per tenant (`examples/tenants.toml` is a commented example).
//!
//! Every error names where it is: the file, then `[host]` or the tenant (its position and
//! name), then the key, e.g. `tenants.toml: tenant 2 ("beta"): memory_mib: must be between 16
//! and 4096, found 0`. Unknown keys are errors (a misspelt limit must not silently fall back to
//! its default). Relative paths are relative to the file's directory. Reading the file is
//! bounded by [`MAX_CONFIG_BYTES`] and the tenants by [`MAX_TENANTS`].

use crate::controller::{resolve_azure, AzureJson, AzureOverrides, AzureSide, CredentialKind};
use crate::executor::{DEFAULT_GLOBAL_CAP, DEFAULT_TENANT_CAP};
use crate::wasm::SandboxLimits;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Most tenants one host runs.
pub const MAX_TENANTS: usize = 10_000;
/// Where the host serves by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// Instance slots each tenant may hold at once: its engine, one being swapped in, one being
/// rebuilt after a trap.
pub const SLOTS_PER_TENANT: u32 = 3;
/// Slots beyond those, for tenants added by a reload.
pub const SPARE_SLOTS: u32 = 16;

/// A parsed, checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    /// The file it was read from (errors and reloads name it).
    pub path: PathBuf,
    pub host: HostSettings,
    pub tenants: Vec<TenantSpec>,
}

/// The `[host]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSettings {
    /// Where `/metrics`, `/healthz`, `/readyz`, the status page and the admin API are served.
    pub listen: SocketAddr,
    /// The admin API's bearer token; no admin API without it. Created (random, mode 0600) when
    /// the file does not exist.
    pub admin_token_file: Option<PathBuf>,
    /// Calls in flight across all tenants.
    pub max_calls_in_flight: usize,
    /// Instance slots of the wasmtime runtime, fixed for the process's life: by default
    /// [`SLOTS_PER_TENANT`] per configured tenant plus [`SPARE_SLOTS`].
    pub instance_slots: u32,
}

/// Where a tenant's cluster is.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterSource {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// An in-repo API server started in the process, empty (`cluster = "embedded"`).
    Embedded,
    /// An in-repo API server that plays this trace of watch events at `speed` times real time.
    Trace { path: PathBuf, speed: f64 },
}

/// Which engine component a tenant runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentSource {
    /// The engine embedded in the binary (`component` absent or `"bundled"`).
    Bundled,
    /// A component the binary carries under a name (`"builtin:NAME"`), e.g. the deliberately
    /// misbehaving one of the simulation kit.
    Builtin(String),
    /// A `.wasm` file.
    File(PathBuf),
}

/// A tenant's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantLimits {
    /// Guest memory, CPU deadline per guest call, per-tick caps.
    pub sandbox: SandboxLimits,
    /// Operations the engine runs at once (10, as upstream).
    pub operations_in_flight: u32,
    /// Calls of the tenant in flight at once.
    pub calls_in_flight: usize,
}

/// One `[[tenant]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantSpec {
    pub name: String,
    pub cluster: ClusterSource,
    /// Where the tenant's resources are. With `embedded_arm` the endpoint is a placeholder the
    /// host replaces with its embedded emulator's.
    pub azure: AzureSide,
    pub embedded_arm: bool,
    /// A token file that overrides `azure.credential`.
    pub token_file: Option<PathBuf>,
    pub component: ComponentSource,
    pub limits: TenantLimits,
    pub seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostTable {
    listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    max_calls_in_flight: Option<usize>,
    instance_slots: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantTable {
    name: String,
    kubeconfig: Option<PathBuf>,
    cluster: Option<String>,
    trace: Option<PathBuf>,
    trace_speed: Option<f64>,
    cloud_config: Option<PathBuf>,
    arm_endpoint: Option<String>,
    subscription: Option<String>,
    resource_group: Option<String>,
    location: Option<String>,
    vnet: Option<String>,
    vnet_resource_group: Option<String>,
    network_subscription: Option<String>,
    credential: Option<String>,
    token_file: Option<PathBuf>,
    component: Option<String>,
    seed: Option<u64>,
    memory_mib: Option<u64>,
    cpu_deadline_ms: Option<u64>,
    operations_in_flight: Option<u32>,
    calls_in_flight: Option<usize>,
}

/// The placeholder endpoint of a tenant on the embedded emulator.
const EMBEDDED_ENDPOINT_PLACEHOLDER: &str = "http://127.0.0.1";

impl ServeConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<ServeConfig, String> {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(format!("{shown}: {} bytes, larger than the {MAX_CONFIG_BYTES} accepted", meta.len()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        ServeConfig::parse(&text, path)
    }

    /// Checks the TOML `text` of the file at `path` (relative paths in it are relative to the
    /// file's directory). Errors start with the file's name.
    pub fn parse(text: &str, path: &Path) -> Result<ServeConfig, String> {
        let shown = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        parse_tables(text, &base)
            .map(|(host, tenants)| ServeConfig { path: path.to_path_buf(), host, tenants })
            .map_err(|e| format!("{shown}: {e}"))
    }

    pub fn tenant(&self, name: &str) -> Option<&TenantSpec> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

fn parse_tables(text: &str, base: &Path) -> Result<(HostSettings, Vec<TenantSpec>), String> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| one_line(&e.to_string()))?;
    let host_value = table.remove("host");
    let tenant_values = table.remove("tenant");
    if let Some(key) = table.keys().next() {
        return Err(format!("unknown top-level key `{key}`: expected a [host] table and [[tenant]] tables"));
    }
    let host: HostTable = match host_value {
        Some(v) => v.try_into().map_err(|e: toml::de::Error| format!("[host]: {}", one_line(e.message())))?,
        None => HostTable { listen: None, admin_token_file: None, max_calls_in_flight: None, instance_slots: None },
    };
    let tenant_values = match tenant_values {
        None => Vec::new(),
        Some(toml::Value::Array(values)) => values,
        Some(_) => return Err("`tenant` must be an array of tables: write each as [[tenant]]".into()),
    };
    if tenant_values.len() > MAX_TENANTS {
        return Err(format!("{} tenants, more than the {MAX_TENANTS} one host runs", tenant_values.len()));
    }
    let mut names = BTreeSet::new();
    let mut tenants = Vec::with_capacity(tenant_values.len());
    for (i, value) in tenant_values.into_iter().enumerate() {
        let position = i + 1;
        let label = match value.get("name").and_then(toml::Value::as_str) {
            Some(name) => format!("tenant {position} ({name:?})"),
            None => format!("tenant {position}"),
        };
        let raw: TenantTable = value.try_into().map_err(|e: toml::de::Error| format!("{label}: {}", one_line(e.message())))?;
        let spec = tenant_spec(raw, base).map_err(|e| format!("{label}: {e}"))?;
        if !names.insert(spec.name.clone()) {
            return Err(format!("{label}: name: another tenant is already named {:?}", spec.name));
        }
        tenants.push(spec);
    }
    let listen_text = host.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen = listen_text.parse().map_err(|_| format!("[host]: listen: not an address:port, found {listen_text:?}"))?;
    let max_calls_in_flight = in_range("[host]: max_calls_in_flight", host.max_calls_in_flight, DEFAULT_GLOBAL_CAP, 1, 100_000)?;
    let needed = (tenants.len() as u32).saturating_mul(SLOTS_PER_TENANT);
    let instance_slots = match host.instance_slots {
        None => needed + SPARE_SLOTS,
        Some(n) if n >= needed.max(1) && n <= 100_000 => n,
        Some(n) => {
            return Err(format!(
                "[host]: instance_slots: {n} is too few for {} tenants ({SLOTS_PER_TENANT} each: the engine, a swap, a recovery) \
                 or more than 100000; at least {needed}",
                tenants.len()
            ))
        }
    };
    let admin_token_file = host.admin_token_file.map(|p| base.join(p));
    Ok((HostSettings { listen, admin_token_file, max_calls_in_flight, instance_slots }, tenants))
}

/// toml's messages span several lines (a source excerpt); logs and HTTP answers want one.
fn one_line(message: &str) -> String {
    message
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .collect::<Vec<_>>()
        .join(" ")
}

fn in_range<T: PartialOrd + Copy + std::fmt::Display>(key: &str, value: Option<T>, default: T, min: T, max: T) -> Result<T, String> {
    match value {
        None => Ok(default),
        Some(v) if v >= min && v <= max => Ok(v),
        Some(v) => Err(format!("{key}: must be between {min} and {max}, found {v}")),
    }
}

/// A tenant name: what Kubernetes accepts as a label value and a URL path segment takes as is.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("name: {name:?} must be 1-63 lower-case letters, digits and '-', not starting or ending with '-'"))
    }
}

/// A stable subscription id of its own for a tenant on the embedded emulator.
fn embedded_subscription(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(name.as_bytes());
    let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("00000000-0000-4000-8000-{hex}")
}

fn tenant_spec(raw: TenantTable, base: &Path) -> Result<TenantSpec, String> {
    check_name(&raw.name)?;
    let cluster = match (&raw.kubeconfig, raw.cluster.as_deref(), &raw.trace) {
        (Some(k), None, None) => ClusterSource::Kubeconfig(base.join(k)),
        (None, Some("embedded"), None) => ClusterSource::Embedded,
        (None, Some(other), None) => return Err(format!("cluster: {other:?} is not a cluster source; the one value is \"embedded\"")),
        (None, None, Some(t)) => {
            let speed = raw.trace_speed.unwrap_or(1.0);
            if !(speed.is_finite() && speed > 0.0 && speed <= 10_000.0) {
                return Err(format!("trace_speed: must be above 0 and at most 10000, found {speed}"));
            }
            ClusterSource::Trace { path: base.join(t), speed }
        }
        (None, None, None) => return Err("no cluster: set one of `kubeconfig`, `cluster = \"embedded\"` or `trace`".into()),
        _ => return Err("more than one cluster: set only one of `kubeconfig`, `cluster` and `trace`".into()),
    };
    if raw.trace_speed.is_some() && !matches!(cluster, ClusterSource::Trace { .. }) {
        return Err("trace_speed: only a `trace` cluster has a speed".into());
    }
    let embedded_arm = match raw.arm_endpoint.as_deref() {
        Some("embedded") => true,
        Some(_) => false,
        // A simulated cluster talks to the simulated cloud unless told otherwise.
        None => raw.cloud_config.is_none() && !matches!(cluster, ClusterSource::Kubeconfig(_)),
    };
    let credential = match raw.credential.as_deref() {
        None => None,
        Some("none") => Some(CredentialKind::None),
        Some("env") => Some(CredentialKind::Env),
        Some("workload-identity") => Some(CredentialKind::WorkloadIdentity),
        Some("managed-identity") => Some(CredentialKind::ManagedIdentity),
        Some("client-secret") => Some(CredentialKind::ClientSecret),
        Some(other) => {
            return Err(format!(
                "credential: {other:?} is not one of none, env, workload-identity, managed-identity, client-secret \
                 (or give `token_file`)"
            ))
        }
    };
    if raw.token_file.is_some() && credential.is_some() {
        return Err("token_file: a fixed token and `credential` exclude each other".into());
    }
    let embedded_defaults = embedded_arm && raw.cloud_config.is_none();
    let default = |given: &Option<String>, fallback: String| given.clone().or(embedded_defaults.then_some(fallback));
    let flags = AzureOverrides {
        arm_endpoint: if embedded_arm { Some(EMBEDDED_ENDPOINT_PLACEHOLDER.into()) } else { raw.arm_endpoint.clone() },
        subscription: default(&raw.subscription, embedded_subscription(&raw.name)),
        resource_group: default(&raw.resource_group, format!("rg-{}", raw.name)),
        location: default(&raw.location, "eastus2".into()),
        vnet: default(&raw.vnet, format!("vnet-{}", raw.name)),
        vnet_resource_group: raw.vnet_resource_group.clone(),
        network_subscription: raw.network_subscription.clone(),
        // A fixed token, or the embedded emulator without one, needs no identity.
        credential: credential.or((raw.token_file.is_some() || embedded_arm).then_some(CredentialKind::None)),
    };
    let file = match &raw.cloud_config {
        Some(p) => {
            let path = base.join(p);
            Some((AzureJson::load(&path).map_err(|e| format!("cloud_config: {e}"))?, path))
        }
        None => None,
    };
    let azure = resolve_azure(file.as_ref().map(|(j, p)| (j, p.as_path())), &flags).map_err(|e| format!("Azure side: {e}"))?;
    let component = match raw.component.as_deref() {
        None | Some("bundled") => ComponentSource::Bundled,
        Some(name) if name.starts_with("builtin:") => ComponentSource::Builtin(name["builtin:".len()..].to_string()),
        Some(path) => ComponentSource::File(base.join(path)),
    };
    let defaults = SandboxLimits::default();
    let memory_mib = in_range("memory_mib", raw.memory_mib, (defaults.memory_bytes >> 20) as u64, 16, 4096)?;
    let cpu_deadline_ms = in_range("cpu_deadline_ms", raw.cpu_deadline_ms, defaults.cpu_deadline.as_millis() as u64, 10, 60_000)?;
    let limits = TenantLimits {
        sandbox: SandboxLimits {
            memory_bytes: (memory_mib as usize) << 20,
            cpu_deadline: Duration::from_millis(cpu_deadline_ms),
            ..defaults
        },
        operations_in_flight: in_range("operations_in_flight", raw.operations_in_flight, 10, 1, 1000)?,
        calls_in_flight: in_range("calls_in_flight", raw.calls_in_flight, DEFAULT_TENANT_CAP, 1, 10_000)?,
    };
    Ok(TenantSpec {
        name: raw.name,
        cluster,
        azure,
        embedded_arm,
        token_file: raw.token_file.map(|p| base.join(p)),
        component,
        limits,
        seed: raw.seed.unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServeConfig, String> {
        ServeConfig::parse(text, Path::new("/etc/difftracker/tenants.toml"))
    }

    const THREE: &str = r#"
        [host]
        listen = "127.0.0.1:9191"
        admin_token_file = "admin.token"

        [[tenant]]
        name = "alpha"
        trace = "trace.jsonl"
        trace_speed = 20.0

        [[tenant]]
        name = "beta"
        cluster = "embedded"
        memory_mib = 64
        cpu_deadline_ms = 500
        calls_in_flight = 4

        [[tenant]]
        name = "gamma"
        kubeconfig = "/clusters/gamma.yaml"
        arm_endpoint = "https://management.azure.com"
        subscription = "sub-g"
        resource_group = "rg-g"
        location = "westeurope"
        vnet = "vnet-g"
        credential = "managed-identity"
        component = "engines/v2.wasm"
    "#;

    #[test]
    fn a_configuration_of_three_tenants_is_read_with_defaults_and_relative_paths() {
        let config = parse(THREE).unwrap();
        assert_eq!(config.host.listen, "127.0.0.1:9191".parse::<SocketAddr>().unwrap());
        assert_eq!(config.host.admin_token_file.as_deref(), Some(Path::new("/etc/difftracker/admin.token")));
        assert_eq!(config.host.max_calls_in_flight, DEFAULT_GLOBAL_CAP);
        assert_eq!(config.host.instance_slots, 3 * SLOTS_PER_TENANT + SPARE_SLOTS);
        let names: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "gamma"]);

        let alpha = config.tenant("alpha").unwrap();
        assert_eq!(alpha.cluster, ClusterSource::Trace { path: "/etc/difftracker/trace.jsonl".into(), speed: 20.0 });
        assert!(alpha.embedded_arm, "a simulated cluster uses the embedded emulator by default");
        assert_eq!(alpha.azure.config.resource_group, "rg-alpha");
        assert_eq!(alpha.component, ComponentSource::Bundled);
        assert_eq!(alpha.limits.operations_in_flight, 10);

        let beta = config.tenant("beta").unwrap();
        assert_eq!(beta.limits.sandbox.memory_bytes, 64 << 20);
        assert_eq!(beta.limits.sandbox.cpu_deadline, Duration::from_millis(500));
        assert_eq!(beta.limits.calls_in_flight, 4);
        assert_ne!(alpha.azure.config.subscription_id, beta.azure.config.subscription_id, "each embedded tenant has its own subscription");

        let gamma = config.tenant("gamma").unwrap();
        assert_eq!(gamma.cluster, ClusterSource::Kubeconfig("/clusters/gamma.yaml".into()));
        assert!(!gamma.embedded_arm);
        assert_eq!(gamma.azure.config.endpoint(), "https://management.azure.com");
        assert!(gamma.azure.credential.is_some());
        assert_eq!(gamma.component, ComponentSource::File("/etc/difftracker/engines/v2.wasm".into()));
    }

    #[test]
    fn errors_name_the_file_the_tenant_and_the_key() {
        let cases = [
            (
                "[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\nmemory_mb = 5\n",
                "tenants.toml: tenant 1 (\"a\"): unknown field `memory_mb`",
            ),
            (
                "[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\nmemory_mib = 0\n",
                "tenant 1 (\"a\"): memory_mib: must be between 16 and 4096, found 0",
            ),
            ("[[tenant]]\nname = \"a\"\n", "tenant 1 (\"a\"): no cluster"),
            ("[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\ntrace = \"t\"\n", "more than one cluster"),
            ("[[tenant]]\nname = \"A_b\"\ncluster = \"embedded\"\n", "name: \"A_b\" must be"),
            ("[[tenant]]\ncluster = \"embedded\"\n", "tenant 1: missing field `name`"),
            (
                "[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\n[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\n",
                "tenant 2 (\"a\"): name: another tenant is already named \"a\"",
            ),
            ("[host]\nlisten = \"nowhere\"\n", "[host]: listen: not an address:port"),
            ("[host]\nport = 1\n", "[host]: unknown field `port`"),
            ("[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\ncpu_deadline_ms = \"fast\"\n", "tenant 1 (\"a\"): invalid type"),
            ("[[tenant]]\nname = \"a\"\nkubeconfig = \"k\"\n", "tenant 1 (\"a\"): Azure side: the Azure subscriptionId is missing"),
            ("[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\ncredential = \"magic\"\n", "credential: \"magic\" is not one of"),
            ("tenant = 3\n", "`tenant` must be an array of tables"),
            ("[tenants]\n", "unknown top-level key `tenants`"),
            ("[[tenant]\n", "tenants.toml: "),
            (
                "[host]\ninstance_slots = 2\n[[tenant]]\nname = \"a\"\ncluster = \"embedded\"\n",
                "instance_slots: 2 is too few for 1 tenants",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "for {text:?}: {e:?} does not contain {want:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn an_empty_file_is_a_host_with_no_tenants() {
        let config = parse("").unwrap();
        assert!(config.tenants.is_empty());
        assert_eq!(config.host.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.host.instance_slots, SPARE_SLOTS);
    }

    #[test]
    fn the_bundled_example_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/tenants.toml"));
        let config = ServeConfig::load(path).unwrap();
        assert_eq!(config.tenants.len(), 3);
        assert!(config.tenants.iter().any(|t| matches!(&t.component, ComponentSource::Builtin(n) if n == "misbehaving")));
    }
}
