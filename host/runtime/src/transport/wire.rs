//! Request bodies (AZURE-WIRE.md section 3) and response decoding, shared by the HTTP transport
//! and the in-process emulator backend. Bodies are `serde_json::Value`s, whose maps keep keys in
//! alphabetical order, as the Go client emits them.

use super::config::{id_segment_after, NameError, ResourceKind, TenantAzureConfig};
use difftracker_engine::io::{
    AddressLocation, AddressUpdate, BackendPool, IpVersion, LoadBalancerSpec, LocationUpdate, NatGatewayInfo, NatGatewaySpec, NatReference,
    PublicIpInfo, ServiceType, SgwService, SgwServiceRequest, TransportProtocol, UpdateAction,
};
use serde_json::{json, Map, Value};

pub fn ip_version_str(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "IPv4",
        IpVersion::V6 => "IPv6",
    }
}

pub fn service_type_str(t: ServiceType) -> &'static str {
    match t {
        ServiceType::Inbound => "Inbound",
        ServiceType::Outbound => "Outbound",
        ServiceType::InboundOutbound => "InboundOutbound",
    }
}

pub fn parse_service_type(s: &str) -> Option<ServiceType> {
    match s.to_ascii_lowercase().as_str() {
        "inbound" => Some(ServiceType::Inbound),
        "outbound" => Some(ServiceType::Outbound),
        "inboundoutbound" => Some(ServiceType::InboundOutbound),
        _ => None,
    }
}

fn update_action_str(a: UpdateAction) -> &'static str {
    match a {
        UpdateAction::FullUpdate => "FullUpdate",
        UpdateAction::PartialUpdate => "PartialUpdate",
    }
}

/// §3.1 PUT Public IP.
pub fn public_ip_body(cfg: &TenantAzureConfig, name: &str, version: IpVersion) -> Result<Value, NameError> {
    Ok(json!({
        "id": cfg.resource_id(ResourceKind::PublicIp, name)?,
        "location": cfg.location,
        "name": name,
        "properties": {
            "publicIPAddressVersion": ip_version_str(version),
            "publicIPAllocationMethod": "Static",
        },
        "sku": { "name": "StandardV2" },
    }))
}

/// §3.4 PUT Load balancer: one frontend on the public IP, one backend pool named after the load
/// balancer, one rule per port (the key is omitted when there are none).
pub fn load_balancer_body(cfg: &TenantAzureConfig, spec: &LoadBalancerSpec) -> Result<Value, NameError> {
    let name = spec.name.as_str();
    let lb_id = cfg.resource_id(ResourceKind::LoadBalancer, name)?;
    let pip_id = cfg.resource_id(ResourceKind::PublicIp, &spec.public_ip)?;
    let frontend_id = cfg.frontend_id(name)?;
    let pool_id = cfg.backend_pool_id(name, name)?;
    let mut props = Map::new();
    props.insert("backendAddressPools".into(), json!([{ "name": name, "properties": {} }]));
    props.insert("frontendIPConfigurations".into(), json!([{ "name": "frontend", "properties": { "publicIPAddress": { "id": pip_id } } }]));
    if !spec.rules.is_empty() {
        let rules: Vec<Value> = spec
            .rules
            .iter()
            .map(|r| {
                let (proto, proto_name) = match r.protocol {
                    TransportProtocol::Tcp => ("tcp", "Tcp"),
                    TransportProtocol::Udp => ("udp", "Udp"),
                };
                let mut p = Map::new();
                p.insert("backendAddressPool".into(), json!({ "id": pool_id }));
                p.insert("backendPort".into(), json!(r.backend_port));
                p.insert("enableFloatingIP".into(), json!(false));
                if r.protocol == TransportProtocol::Tcp {
                    p.insert("enableTcpReset".into(), json!(true));
                }
                p.insert("frontendIPConfiguration".into(), json!({ "id": frontend_id }));
                p.insert("frontendPort".into(), json!(r.frontend_port));
                p.insert("idleTimeoutInMinutes".into(), json!(r.idle_timeout_minutes));
                p.insert("protocol".into(), json!(proto_name));
                json!({ "name": format!("rule-{proto}-{}", r.frontend_port), "properties": Value::Object(p) })
            })
            .collect();
        props.insert("loadBalancingRules".into(), Value::Array(rules));
    }
    props.insert("scope".into(), json!("Public"));
    Ok(json!({
        "id": lb_id,
        "location": cfg.location,
        "name": name,
        "properties": Value::Object(props),
        "sku": { "name": "Service" },
    }))
}

/// §3.7 PUT NAT gateway referencing the ServiceGateway.
pub fn nat_gateway_body(cfg: &TenantAzureConfig, spec: &NatGatewaySpec) -> Result<Value, NameError> {
    let id = cfg.resource_id(ResourceKind::NatGateway, &spec.name)?;
    let ids = |names: &[String]| -> Result<Vec<Value>, NameError> {
        names.iter().map(|n| Ok(json!({ "id": cfg.resource_id(ResourceKind::PublicIp, n)? }))).collect()
    };
    let mut props = Map::new();
    props.insert("publicIpAddresses".into(), Value::Array(ids(&spec.public_ips)?));
    if !spec.public_ips_v6.is_empty() {
        props.insert("publicIpAddressesV6".into(), Value::Array(ids(&spec.public_ips_v6)?));
    }
    props.insert("serviceGateway".into(), json!({ "id": cfg.service_gateway_id() }));
    Ok(json!({
        "id": id,
        "location": cfg.location,
        "name": spec.name,
        "properties": Value::Object(props),
        "sku": { "name": "StandardV2" },
    }))
}

/// §3.8 the NAT gateway as read, echoed with `"serviceGateway": null`. The echo goes through the
/// SDK model upstream, so the SKU keeps only its name.
pub fn detach_nat_body(raw: &str) -> Result<Value, String> {
    let mut v: Value = serde_json::from_str(raw).map_err(|e| format!("the NAT gateway to echo is not JSON: {e}"))?;
    let obj = v.as_object_mut().ok_or("the NAT gateway to echo is not a JSON object")?;
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    let props = props.as_object_mut().ok_or("the NAT gateway's properties are not an object")?;
    props.insert("serviceGateway".into(), Value::Null);
    if let Some(sku) = obj.get_mut("sku").and_then(Value::as_object_mut) {
        sku.retain(|k, _| k == "name");
    }
    Ok(v)
}

/// §3.13 POST updateServices.
pub fn update_services_body(cfg: &TenantAzureConfig, reqs: &[SgwServiceRequest]) -> Result<Value, NameError> {
    let vnet_id = cfg.vnet_id();
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        super::config::validate_name("ServiceGateway service", &r.name)?;
        let mut pools = Vec::with_capacity(r.backend_pools.len());
        for p in &r.backend_pools {
            pools.push(json!({
                "id": cfg.backend_pool_id(&p.load_balancer, &p.pool)?,
                "name": p.pool,
                "properties": { "virtualNetwork": { "id": vnet_id } },
            }));
        }
        let mut props = Map::new();
        if let Some(d) = r.is_default {
            props.insert("isDefault".into(), json!(d));
        }
        props.insert("loadBalancerBackendPools".into(), Value::Array(pools));
        match &r.nat_gateway {
            NatReference::Absent => {}
            NatReference::Set(n) => {
                props.insert("publicNatGatewayId".into(), json!(cfg.resource_id(ResourceKind::NatGateway, n)?));
            }
            NatReference::Clear => {
                props.insert("publicNatGatewayId".into(), Value::Null);
            }
        }
        props.insert("serviceType".into(), json!(service_type_str(r.service_type)));
        out.push(json!({
            "isDelete": r.is_delete,
            "service": { "name": r.name, "properties": Value::Object(props) },
        }));
    }
    Ok(json!({ "action": "PartialUpdate", "serviceRequests": out }))
}

/// §3.14 POST updateAddressLocations.
pub fn update_address_locations_body(locs: &[LocationUpdate]) -> Value {
    let out: Vec<Value> = locs
        .iter()
        .map(|l| {
            json!({
                "addressLocation": l.location,
                "addressUpdateAction": update_action_str(l.action),
                "addresses": l.addresses.iter().map(|a| json!({ "address": a.address, "services": a.services })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "action": "PartialUpdate", "addressLocations": out })
}

// ------------------------------------------------------------------------ responses

fn is_set(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

/// A public IP as ARM returns it. `fallback` fills the name and version when a PUT's final body
/// omits them.
pub fn parse_public_ip(v: &Value, fallback: Option<(&str, IpVersion)>) -> Result<PublicIpInfo, String> {
    let obj = v.as_object().ok_or("public IP is not a JSON object")?;
    let name = match obj.get("name").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => fallback.map(|f| f.0.to_string()).ok_or("public IP has no name")?,
    };
    let props = obj.get("properties").and_then(Value::as_object);
    let version = match props.and_then(|p| p.get("publicIPAddressVersion")).and_then(Value::as_str) {
        Some(s) if s.eq_ignore_ascii_case("IPv6") => IpVersion::V6,
        Some(_) => IpVersion::V4,
        None => fallback.map(|f| f.1).unwrap_or(IpVersion::V4),
    };
    let ip_address = props.and_then(|p| p.get("ipAddress")).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    let attached = props.map(|p| is_set(p.get("ipConfiguration")) || is_set(p.get("natGateway"))).unwrap_or(false);
    Ok(PublicIpInfo { name, ip_address, version, attached })
}

pub fn parse_names(items: &[Value]) -> Result<Vec<String>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| v.get("name").and_then(Value::as_str).map(String::from).ok_or(format!("value[{i}] has no name")))
        .collect()
}

pub fn parse_nat_gateway(v: &Value, raw: String) -> Result<NatGatewayInfo, String> {
    let obj = v.as_object().ok_or("NAT gateway is not a JSON object")?;
    let name = obj.get("name").and_then(Value::as_str).ok_or("NAT gateway has no name")?.to_string();
    let references_service_gateway =
        obj.get("properties").and_then(Value::as_object).map(|p| is_set(p.get("serviceGateway"))).unwrap_or(false);
    Ok(NatGatewayInfo { name, references_service_gateway, raw })
}

/// §3.11. Entries without a name, properties or service type are skipped; an unknown service type
/// is an error (the engine refuses to start on an incomplete view).
pub fn parse_sgw_services(items: &[Value]) -> Result<Vec<SgwService>, String> {
    let mut out = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let Some(name) = v.get("name").and_then(Value::as_str).filter(|s| !s.is_empty()) else { continue };
        let Some(props) = v.get("properties").and_then(Value::as_object) else { continue };
        let Some(st) = props.get("serviceType").and_then(Value::as_str) else { continue };
        let service_type = parse_service_type(st).ok_or(format!("value[{i}] ({name}) has unknown serviceType {st:?}"))?;
        let mut backend_pools = Vec::new();
        if let Some(pools) = props.get("loadBalancerBackendPools") {
            let pools = match pools {
                Value::Null => &[][..],
                Value::Array(a) => a.as_slice(),
                _ => return Err(format!("value[{i}] ({name}) loadBalancerBackendPools is not an array")),
            };
            for p in pools {
                let Some(id) = p.get("id").and_then(Value::as_str) else { continue };
                let lb = id_segment_after(id, "loadBalancers");
                let pool = id_segment_after(id, "backendAddressPools");
                match (lb, pool) {
                    (Some(lb), Some(pool)) => backend_pools.push(BackendPool { load_balancer: lb.into(), pool: pool.into() }),
                    _ => return Err(format!("value[{i}] ({name}) has a backend pool ID that names no pool: {id:?}")),
                }
            }
        }
        let nat_gateway = match props.get("publicNatGatewayId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(
                id_segment_after(s, "natGateways")
                    .ok_or(format!("value[{i}] ({name}) publicNatGatewayId names no NAT gateway: {s:?}"))?
                    .to_string(),
            ),
            Some(_) => return Err(format!("value[{i}] ({name}) publicNatGatewayId is not a string")),
        };
        let is_default = props.get("isDefault").and_then(Value::as_bool).unwrap_or(false);
        out.push(SgwService { name: name.into(), service_type, backend_pools, nat_gateway, is_default });
    }
    Ok(out)
}

/// §3.12. Entries with an empty location or address are skipped; IPs are passed on as NRP wrote
/// them (the engine canonicalises).
pub fn parse_address_locations(items: &[Value]) -> Result<Vec<AddressLocation>, String> {
    let mut out = Vec::new();
    for (i, v) in items.iter().enumerate() {
        let Some(location) = v.get("addressLocation").and_then(Value::as_str).filter(|s| !s.is_empty()) else { continue };
        let mut addresses = Vec::new();
        match v.get("addresses") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                for (j, addr) in a.iter().enumerate() {
                    let Some(address) = addr.get("address").and_then(Value::as_str).filter(|s| !s.is_empty()) else { continue };
                    let services = match addr.get("services") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(s)) => s
                            .iter()
                            .map(|x| x.as_str().map(String::from))
                            .collect::<Option<Vec<_>>>()
                            .ok_or(format!("value[{i}].addresses[{j}].services holds a non-string"))?,
                        Some(_) => return Err(format!("value[{i}].addresses[{j}].services is not an array")),
                    };
                    addresses.push(AddressUpdate { address: address.into(), services });
                }
            }
            Some(_) => return Err(format!("value[{i}].addresses is not an array")),
        }
        out.push(AddressLocation { location: location.into(), addresses });
    }
    Ok(out)
}

/// The ARM error of a body: `error.code`/`error.message`, or a top-level `code`/`message`.
pub fn arm_error_of(body: &Value) -> Option<(String, String)> {
    let e = body.get("error").filter(|e| e.is_object()).unwrap_or(body);
    let code = e.get("code").and_then(Value::as_str)?.to_string();
    let message = e.get("message").and_then(Value::as_str).unwrap_or("").to_string();
    Some((code, message))
}

/// Whether an ARM error code says the subscription or resource group of a request does not exist
/// (as opposed to the resource): such a 404 is never "already gone".
pub fn is_missing_scope(code: &str) -> bool {
    code.eq_ignore_ascii_case("SubscriptionNotFound") || code.eq_ignore_ascii_case("ResourceGroupNotFound")
}
