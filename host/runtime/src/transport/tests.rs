//! Transport unit tests: URL building, name validation, request bodies, and the HTTP behaviour
//! (paging, LROs, retries, malformed answers) against scripted loopback servers.

use super::*;
use crate::backend::CloudBackend;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use axum::response::Response;
use difftracker_engine::io::*;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

// ------------------------------------------------------------------------ scripted server

#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn canned(status: u16, body: &str) -> Canned {
    Canned { status, headers: Vec::new(), body: body.to_string() }
}

impl Canned {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: HeaderMap,
    body: String,
}

#[derive(Default)]
struct Script {
    queue: Mutex<VecDeque<Canned>>,
    sticky_last: bool,
    seen: Mutex<Vec<Seen>>,
    base: Mutex<String>,
}

struct ScriptedServer {
    script: Arc<Script>,
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ScriptedServer {
    async fn start(responses: Vec<Canned>) -> Self {
        Self::start_with(responses, false).await
    }
    /// The last response is repeated forever.
    async fn start_sticky(responses: Vec<Canned>) -> Self {
        Self::start_with(responses, true).await
    }
    async fn start_with(responses: Vec<Canned>, sticky_last: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let script = Arc::new(Script { queue: Mutex::new(responses.into()), sticky_last, ..Default::default() });
        *script.base.lock().unwrap() = base.clone();
        let app = axum::Router::new().fallback(scripted).with_state(script.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        ScriptedServer { script, base, _stop: tx }
    }
    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }
    fn transport(&self) -> ArmTransport {
        ArmTransport::unauthenticated(cfg(&self.base), TransportOptions::fast_for_tests()).expect("transport")
    }
}

async fn scripted(
    axum::extract::State(script): axum::extract::State<Arc<Script>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path_and_query: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let next = {
        let mut q = script.queue.lock().unwrap();
        if q.len() == 1 && script.sticky_last {
            q.front().cloned()
        } else {
            q.pop_front()
        }
    };
    let base = script.base.lock().unwrap().clone();
    let c = next.unwrap_or_else(|| canned(599, "script exhausted"));
    let mut r = Response::new(Body::from(c.body.replace("{base}", &base)));
    *r.status_mut() = StatusCode::from_u16(c.status).unwrap();
    for (k, v) in c.headers {
        r.headers_mut().insert(k, v.replace("{base}", &base).parse().unwrap());
    }
    r
}

fn cfg(base: &str) -> TenantAzureConfig {
    TenantAzureConfig::new(base, "sub-1", "rg-1", "eastus2", "vnet-1")
}

const NET: &str = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Network";

fn path_only(s: &Seen) -> &str {
    s.path_and_query.split('?').next().unwrap()
}

// ------------------------------------------------------------------------ URLs and names

#[test]
fn urls_and_ids_come_from_the_tenant_config() {
    let c = cfg("https://management.azure.com/");
    assert_eq!(c.endpoint(), "https://management.azure.com");
    assert_eq!(c.provider_path(), NET);
    assert_eq!(c.resource_id(ResourceKind::PublicIp, "u-pip").unwrap(), format!("{NET}/publicIPAddresses/u-pip"));
    assert_eq!(c.collection_path(ResourceKind::LoadBalancer), format!("{NET}/loadBalancers"));
    assert_eq!(c.frontend_id("u").unwrap(), format!("{NET}/loadBalancers/u/frontendIPConfigurations/frontend"));
    assert_eq!(c.backend_pool_id("u", "u").unwrap(), format!("{NET}/loadBalancers/u/backendAddressPools/u"));
    assert_eq!(c.service_gateway_id(), format!("{NET}/serviceGateways/servicegateway"));
    assert_eq!(c.sgw_path(SgwOperation::UpdateAddressLocations), format!("{NET}/serviceGateways/servicegateway/updateAddressLocations"));
    assert_eq!(c.vnet_id(), "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Network/virtualNetworks/vnet-1");
    assert_eq!(
        c.url(&c.collection_path(ResourceKind::NatGateway)),
        format!("https://management.azure.com{NET}/natGateways?api-version=2025-05-01")
    );
    let c2 = c.clone().with_network_subscription("net-sub").with_vnet_resource_group("vnet-rg");
    assert_eq!(c2.network_subscription(), "net-sub");
    assert_eq!(c2.provider_path(), "/subscriptions/net-sub/resourceGroups/rg-1/providers/Microsoft.Network");
    assert_eq!(c2.vnet_id(), "/subscriptions/net-sub/resourceGroups/vnet-rg/providers/Microsoft.Network/virtualNetworks/vnet-1");
    assert!(c2.validate().is_ok());
}

#[test]
fn names_that_could_leave_the_collection_are_refused() {
    for bad in ["", "a/b", "../x", "..", ".", "a?b", "a#b", "a%2fb", "a b", "ä", "x.", "a\\b", &"x".repeat(81)] {
        assert!(validate_name("name", bad).is_err(), "{bad:?} should be refused");
    }
    for good in ["3f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f-pip", "egress.a_b-pip-v6", "a", &"x".repeat(80)] {
        assert!(validate_name("name", good).is_ok(), "{good:?} should be accepted");
    }
    let c = cfg("https://management.azure.com");
    assert!(c.resource_id(ResourceKind::LoadBalancer, "../../other").is_err());
    assert!(matches!(c.resource_id(ResourceKind::LoadBalancer, ".."), Err(NameError::DotSegment { .. })));
    assert!(matches!(c.resource_id(ResourceKind::LoadBalancer, "x/y"), Err(NameError::ForbiddenChar { ch: '/', .. })));
    assert!(matches!(c.backend_pool_id("lb", "p?q"), Err(NameError::ForbiddenChar { ch: '?', .. })));
}

#[test]
fn bad_tenant_configs_are_refused() {
    assert!(cfg("management.azure.com").validate().is_err());
    assert!(cfg("https://host/path").validate().is_err());
    assert!(cfg("https://").validate().is_err());
    let mut c = cfg("http://127.0.0.1:1");
    c.resource_group = "rg/../../x".into();
    assert!(c.validate().is_err());
    let mut c = cfg("http://127.0.0.1:1");
    c.resource_group = "MC_prod(aks1)_eastus2".into();
    assert!(c.validate().is_ok());
    c.network_subscription_id = Some("a#b".into());
    assert!(c.validate().is_err());
}

#[tokio::test]
async fn a_bad_name_never_reaches_the_wire() {
    let s = ScriptedServer::start(vec![]).await;
    let t = s.transport();
    for call in [
        CloudCall::PutPublicIp { name: "../x".into(), version: IpVersion::V4 },
        CloudCall::DeleteLoadBalancer { name: "a/b".into() },
        CloudCall::GetNatGateway { name: "a?b".into() },
        CloudCall::PutLoadBalancer(LoadBalancerSpec { name: "ok".into(), public_ip: "x#y".into(), rules: vec![] }),
        CloudCall::UpdateServices(vec![SgwServiceRequest {
            name: "x".into(),
            service_type: ServiceType::Inbound,
            is_delete: false,
            backend_pools: vec![BackendPool { load_balancer: "..".into(), pool: "p".into() }],
            nat_gateway: NatReference::Absent,
            is_default: None,
        }]),
    ] {
        let e = t.perform(call.clone()).await.expect_err("refused");
        assert_eq!((e.kind, e.status, e.code.as_str()), (ErrorKind::Http, 400, "InvalidResourceName"), "{call:?}: {e}");
    }
    assert!(s.seen().is_empty());
}

// ------------------------------------------------------------------------ bodies

#[test]
fn request_bodies_match_the_wire_spec() {
    let c = cfg("https://management.azure.com");
    let pip = wire::public_ip_body(&c, "u-pip", IpVersion::V6).unwrap();
    assert_eq!(
        pip,
        json!({"id": format!("{NET}/publicIPAddresses/u-pip"), "location": "eastus2", "name": "u-pip",
               "properties": {"publicIPAddressVersion": "IPv6", "publicIPAllocationMethod": "Static"},
               "sku": {"name": "StandardV2"}})
    );
    // Keys are emitted alphabetically.
    assert!(pip.to_string().starts_with("{\"id\":"));

    let spec = LoadBalancerSpec {
        name: "u".into(),
        public_ip: "u-pip".into(),
        rules: vec![
            LbRule { protocol: TransportProtocol::Tcp, frontend_port: 80, backend_port: 8080, idle_timeout_minutes: 4 },
            LbRule { protocol: TransportProtocol::Udp, frontend_port: 53, backend_port: 5353, idle_timeout_minutes: 10 },
        ],
    };
    let lb = wire::load_balancer_body(&c, &spec).unwrap();
    assert_eq!(lb["sku"], json!({"name": "Service"}));
    assert_eq!(lb["properties"]["scope"], "Public");
    assert_eq!(lb["properties"]["backendAddressPools"], json!([{"name": "u", "properties": {}}]));
    assert_eq!(
        lb["properties"]["frontendIPConfigurations"][0]["properties"]["publicIPAddress"]["id"],
        format!("{NET}/publicIPAddresses/u-pip")
    );
    let rules = lb["properties"]["loadBalancingRules"].as_array().unwrap();
    assert_eq!(rules[0]["name"], "rule-tcp-80");
    assert_eq!(
        rules[0]["properties"],
        json!({"backendAddressPool": {"id": format!("{NET}/loadBalancers/u/backendAddressPools/u")}, "backendPort": 8080,
               "enableFloatingIP": false, "enableTcpReset": true,
               "frontendIPConfiguration": {"id": format!("{NET}/loadBalancers/u/frontendIPConfigurations/frontend")},
               "frontendPort": 80, "idleTimeoutInMinutes": 4, "protocol": "Tcp"})
    );
    assert_eq!(rules[1]["name"], "rule-udp-53");
    assert!(rules[1]["properties"].get("enableTcpReset").is_none());
    assert_eq!(rules[1]["properties"]["protocol"], "Udp");
    let no_rules = wire::load_balancer_body(&c, &LoadBalancerSpec { rules: vec![], ..spec }).unwrap();
    assert!(no_rules["properties"].get("loadBalancingRules").is_none());

    let nat = wire::nat_gateway_body(
        &c,
        &NatGatewaySpec { name: "egress-a".into(), public_ips: vec!["egress-a-pip".into()], public_ips_v6: vec![] },
    )
    .unwrap();
    assert_eq!(
        nat["properties"],
        json!({"publicIpAddresses": [{"id": format!("{NET}/publicIPAddresses/egress-a-pip")}],
               "serviceGateway": {"id": format!("{NET}/serviceGateways/servicegateway")}})
    );
    let nat6 = wire::nat_gateway_body(
        &c,
        &NatGatewaySpec { name: "e".into(), public_ips: vec!["e-pip".into()], public_ips_v6: vec!["e-pip-v6".into()] },
    )
    .unwrap();
    assert_eq!(nat6["properties"]["publicIpAddressesV6"], json!([{"id": format!("{NET}/publicIPAddresses/e-pip-v6")}]));

    let reqs = vec![
        SgwServiceRequest {
            name: "u".into(),
            service_type: ServiceType::Inbound,
            is_delete: false,
            backend_pools: vec![BackendPool { load_balancer: "u".into(), pool: "u".into() }],
            nat_gateway: NatReference::Absent,
            is_default: None,
        },
        SgwServiceRequest {
            name: "egress-a".into(),
            service_type: ServiceType::Outbound,
            is_delete: false,
            backend_pools: vec![],
            nat_gateway: NatReference::Set("egress-a".into()),
            is_default: None,
        },
        SgwServiceRequest {
            name: "egress-b".into(),
            service_type: ServiceType::Outbound,
            is_delete: false,
            backend_pools: vec![],
            nat_gateway: NatReference::Clear,
            is_default: Some(false),
        },
    ];
    let us = wire::update_services_body(&c, &reqs).unwrap();
    assert_eq!(us["action"], "PartialUpdate");
    assert_eq!(
        us["serviceRequests"][0],
        json!({"isDelete": false, "service": {"name": "u", "properties": {
            "loadBalancerBackendPools": [{"id": format!("{NET}/loadBalancers/u/backendAddressPools/u"), "name": "u",
                "properties": {"virtualNetwork": {"id": format!("{NET}/virtualNetworks/vnet-1")}}}],
            "serviceType": "Inbound"}}})
    );
    assert_eq!(us["serviceRequests"][1]["service"]["properties"]["publicNatGatewayId"], format!("{NET}/natGateways/egress-a"));
    let clear = &us["serviceRequests"][2]["service"]["properties"];
    assert_eq!(clear.get("publicNatGatewayId"), Some(&Value::Null));
    assert_eq!(clear["isDefault"], false);

    let al = wire::update_address_locations_body(&[
        LocationUpdate {
            location: "10.224.0.4".into(),
            action: UpdateAction::FullUpdate,
            addresses: vec![AddressUpdate { address: "10.244.1.7".into(), services: vec!["u".into()] }],
        },
        LocationUpdate { location: "10.224.0.6".into(), action: UpdateAction::PartialUpdate, addresses: vec![] },
    ]);
    assert_eq!(
        al,
        json!({"action": "PartialUpdate", "addressLocations": [
            {"addressLocation": "10.224.0.4", "addressUpdateAction": "FullUpdate", "addresses": [{"address": "10.244.1.7", "services": ["u"]}]},
            {"addressLocation": "10.224.0.6", "addressUpdateAction": "PartialUpdate", "addresses": []}]})
    );

    let detach = wire::detach_nat_body(
        r#"{"etag":"W/\"1\"","name":"e","properties":{"provisioningState":"Succeeded","serviceGateway":{"id":"x"}},"sku":{"name":"StandardV2","tier":"Regional"}}"#,
    )
    .unwrap();
    assert_eq!(detach["properties"]["serviceGateway"], Value::Null);
    assert_eq!(detach["sku"], json!({"name": "StandardV2"}));
    assert_eq!(detach["etag"], "W/\"1\"");
    assert!(wire::detach_nat_body("not json").is_err());
}

// ------------------------------------------------------------------------ HTTP behaviour

#[tokio::test]
async fn list_follows_next_link_across_pages() {
    let s = ScriptedServer::start(vec![
        canned(
            200,
            &format!(r#"{{"value":[{{"name":"lb-a"}}],"nextLink":"{{base}}{NET}/loadBalancers?api-version=2025-05-01&$skiptoken=1"}}"#),
        ),
        canned(200, r#"{"value":[{"name":"lb-b"},{"name":"lb-c"}]}"#),
    ])
    .await;
    let out = s.transport().perform(CloudCall::ListLoadBalancers).await.unwrap();
    assert_eq!(out, CallOutput::Names(vec!["lb-a".into(), "lb-b".into(), "lb-c".into()]));
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path_and_query, format!("{NET}/loadBalancers?api-version=2025-05-01"));
    assert!(seen[1].path_and_query.ends_with("$skiptoken=1"));
    assert_eq!(seen[0].headers.get("accept").unwrap(), "application/json");
    assert!(seen[0].headers.get("authorization").is_none());
}

#[tokio::test]
async fn a_next_link_off_the_arm_endpoint_is_refused() {
    let s = ScriptedServer::start(vec![canned(200, r#"{"value":[],"nextLink":"http://198.51.100.1/steal"}"#)]).await;
    let e = s.transport().perform(CloudCall::ListNatGateways).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e}");
    assert!(e.message.contains("not on the ARM endpoint"), "{e}");
    assert_eq!(s.seen().len(), 1);
}

#[tokio::test]
async fn put_polls_azure_async_operation_then_gets_the_resource() {
    let op = "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/op1?api-version=2025-05-01";
    let s = ScriptedServer::start(vec![
        canned(201, r#"{"name":"u-pip","properties":{"provisioningState":"Updating"}}"#)
            .header("azure-asyncoperation", op)
            .header("retry-after", "0"),
        canned(200, r#"{"status":"InProgress"}"#),
        canned(200, r#"{"status":"Succeeded"}"#),
        canned(
            200,
            r#"{"name":"u-pip","properties":{"ipAddress":"20.1.2.3","publicIPAddressVersion":"IPv4","provisioningState":"Succeeded"}}"#,
        ),
    ])
    .await;
    let out = s.transport().perform(CloudCall::PutPublicIp { name: "u-pip".into(), version: IpVersion::V4 }).await.unwrap();
    assert_eq!(
        out,
        CallOutput::PublicIp(PublicIpInfo {
            name: "u-pip".into(),
            ip_address: Some("20.1.2.3".into()),
            version: IpVersion::V4,
            attached: false
        })
    );
    let seen = s.seen();
    let calls: Vec<(String, String)> = seen.iter().map(|x| (x.method.clone(), path_only(x).to_string())).collect();
    assert_eq!(
        calls,
        vec![
            ("PUT".into(), format!("{NET}/publicIPAddresses/u-pip")),
            ("GET".into(), "/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/op1".into()),
            ("GET".into(), "/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/op1".into()),
            ("GET".into(), format!("{NET}/publicIPAddresses/u-pip")),
        ]
    );
    assert_eq!(seen[0].headers.get("content-type").unwrap(), "application/json");
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(body["properties"]["publicIPAddressVersion"], "IPv4");
}

#[tokio::test]
async fn delete_polls_location_until_done() {
    let loc = "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operationResults/op2?api-version=2025-05-01";
    let s = ScriptedServer::start(vec![canned(202, "").header("location", loc), canned(202, ""), canned(204, "")]).await;
    let out = s.transport().perform(CloudCall::DeleteLoadBalancer { name: "u".into() }).await.unwrap();
    assert_eq!(out, CallOutput::Done);
    assert_eq!(s.seen().len(), 3);
    assert!(s.seen()[2].path_and_query.contains("operationResults/op2"));
}

#[tokio::test]
async fn post_prefers_azure_async_operation_over_location() {
    let s = ScriptedServer::start(vec![
        canned(202, "")
            .header("azure-asyncoperation", "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/7")
            .header("location", "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operationResults/7"),
        canned(200, r#"{"status":"Succeeded"}"#),
    ])
    .await;
    s.transport().perform(CloudCall::UpdateAddressLocations(vec![])).await.unwrap();
    let seen = s.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].path_and_query.contains("/operations/7"));
}

#[tokio::test]
async fn an_lro_that_ends_failed_is_operation_failed_with_its_code() {
    let s = ScriptedServer::start(vec![
        canned(201, "{}")
            .header("azure-asyncoperation", "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/9"),
        canned(200, r#"{"status":"Failed","error":{"code":"InternalServerError","message":"boom"}}"#),
    ])
    .await;
    let spec = LoadBalancerSpec { name: "u".into(), public_ip: "u-pip".into(), rules: vec![] };
    let e = s.transport().perform(CloudCall::PutLoadBalancer(spec)).await.unwrap_err();
    assert_eq!((e.kind, e.status, e.code.as_str()), (ErrorKind::OperationFailed, 200, "InternalServerError"), "{e}");
    assert!(e.message.contains("boom") && e.message.contains(&format!("PUT {NET}/loadBalancers/u")), "{e}");

    let s = ScriptedServer::start(vec![
        canned(202, "")
            .header("azure-asyncoperation", "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/9"),
        canned(200, r#"{"status":"Canceled"}"#),
    ])
    .await;
    let e = s.transport().perform(CloudCall::DeletePublicIp { name: "p".into() }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::OperationFailed);
}

#[tokio::test]
async fn put_without_polling_headers_follows_provisioning_state() {
    let s = ScriptedServer::start(vec![
        canned(201, r#"{"name":"n","properties":{"provisioningState":"Updating"}}"#),
        canned(200, r#"{"name":"n","properties":{"provisioningState":"Updating"}}"#),
        canned(200, r#"{"name":"n","properties":{"provisioningState":"Succeeded","serviceGateway":{"id":"x"}}}"#),
    ])
    .await;
    let spec = NatGatewaySpec { name: "n".into(), public_ips: vec!["n-pip".into()], public_ips_v6: vec![] };
    assert_eq!(s.transport().perform(CloudCall::PutNatGateway(spec)).await.unwrap(), CallOutput::Done);
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn throttling_honours_retry_after_then_succeeds() {
    let s = ScriptedServer::start(vec![
        canned(429, r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#).header("retry-after", "0"),
        canned(200, ""),
    ])
    .await;
    let out = s.transport().perform(CloudCall::UpdateAddressLocations(vec![])).await.unwrap();
    assert_eq!(out, CallOutput::Done);
    assert_eq!(s.seen().len(), 2);
    assert_eq!(s.seen()[1].method, "POST");
}

#[tokio::test]
async fn throttling_beyond_the_retries_reaches_the_engine_typed() {
    let s = ScriptedServer::start_sticky(vec![canned(429, r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#)
        .header("retry-after-ms", "1")
        .header("x-ms-error-code", "SubscriptionRequestsThrottled")])
    .await;
    let e = s.transport().perform(CloudCall::GetSgwServices).await.unwrap_err();
    assert_eq!((e.kind, e.status, e.code.as_str()), (ErrorKind::Throttled, 429, "SubscriptionRequestsThrottled"), "{e}");
    assert_eq!(e.retry_after_ms, Some(1));
    assert!(e.message.contains("slow down"));
    // One attempt plus max_retries (2) retries.
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn a_retry_after_beyond_the_bound_is_not_waited_for() {
    let s = ScriptedServer::start_sticky(vec![canned(429, "").header("retry-after", "120")]).await;
    let e = s.transport().perform(CloudCall::ListPublicIps).await.unwrap_err();
    assert_eq!((e.kind, e.retry_after_ms), (ErrorKind::Throttled, Some(120_000)));
    assert_eq!(s.seen().len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let s = ScriptedServer::start(vec![
        canned(503, ""),
        canned(500, r#"{"error":{"code":"InternalServerError","message":"x"}}"#),
        canned(200, r#"{"value":[{"name":"u","properties":{"serviceType":"Inbound","loadBalancerBackendPools":[{"id":"/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/loadBalancers/u/backendAddressPools/u"}]}}]}"#),
    ])
    .await;
    let out = s.transport().perform(CloudCall::GetSgwServices).await.unwrap();
    assert_eq!(
        out,
        CallOutput::SgwServices(vec![SgwService {
            name: "u".into(),
            service_type: ServiceType::Inbound,
            backend_pools: vec![BackendPool { load_balancer: "u".into(), pool: "u".into() }],
            nat_gateway: None,
            is_default: false,
        }])
    );
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn server_errors_beyond_the_retries_carry_status_and_code() {
    let s = ScriptedServer::start_sticky(vec![canned(500, r#"{"error":{"code":"InternalServerError","message":"down"}}"#)]).await;
    let e = s.transport().perform(CloudCall::DeleteNatGateway { name: "n".into() }).await.unwrap_err();
    assert_eq!((e.kind, e.status, e.code.as_str(), e.retry_after_ms), (ErrorKind::Http, 500, "InternalServerError", None));
    assert!(e.message.starts_with(&format!("DELETE {NET}/natGateways/n")), "{e}");
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn not_found_is_success_on_deletes_and_unregistration_only() {
    let nf = || canned(404, r#"{"error":{"code":"ResourceNotFound","message":"gone"}}"#);
    let s = ScriptedServer::start(vec![nf(), nf(), nf(), nf(), nf(), nf()]).await;
    let t = s.transport();
    assert_eq!(t.perform(CloudCall::DeletePublicIp { name: "p".into() }).await.unwrap(), CallOutput::Done);
    assert_eq!(t.perform(CloudCall::GetNatGateway { name: "n".into() }).await.unwrap(), CallOutput::NatGateway(None));
    let unregister = SgwServiceRequest {
        name: "u".into(),
        service_type: ServiceType::Inbound,
        is_delete: true,
        backend_pools: vec![],
        nat_gateway: NatReference::Absent,
        is_default: None,
    };
    assert_eq!(t.perform(CloudCall::UpdateServices(vec![unregister.clone()])).await.unwrap(), CallOutput::Done);
    // A batch's 404 says only that one of its services is gone: the others were not unregistered.
    let other = SgwServiceRequest { name: "v".into(), ..unregister.clone() };
    let e = t.perform(CloudCall::UpdateServices(vec![unregister.clone(), other])).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Http, 404));
    let register = SgwServiceRequest { is_delete: false, ..unregister };
    let e = t.perform(CloudCall::UpdateServices(vec![register])).await.unwrap_err();
    assert_eq!((e.kind, e.status, e.code.as_str()), (ErrorKind::Http, 404, "ResourceNotFound"));
    let e = t.perform(CloudCall::ListLoadBalancers).await.unwrap_err();
    assert_eq!(e.status, 404);
}

#[tokio::test]
async fn sgw_post_200_is_done_unless_it_names_an_error() {
    let s = ScriptedServer::start(vec![
        canned(200, "").header("azure-asyncoperation", "{base}/ignored"),
        canned(204, ""),
        canned(200, r#"{"error":{"code":"ServiceWithOverlayMappingsCannotBeDeleted","message":"still mapped"}}"#),
    ])
    .await;
    let t = s.transport();
    t.perform(CloudCall::UpdateAddressLocations(vec![])).await.unwrap();
    t.perform(CloudCall::UpdateAddressLocations(vec![])).await.unwrap();
    let e = t.perform(CloudCall::UpdateAddressLocations(vec![])).await.unwrap_err();
    assert_eq!((e.kind, e.status, e.code.as_str()), (ErrorKind::Http, 200, "ServiceWithOverlayMappingsCannotBeDeleted"));
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn malformed_responses_are_invalid_response_naming_method_and_path() {
    let pip = CloudCall::PutPublicIp { name: "u-pip".into(), version: IpVersion::V4 };
    let op = "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/1";
    let cases: Vec<(CloudCall, Vec<Canned>, &str, String)> = vec![
        (CloudCall::GetSgwServices, vec![canned(200, "not json")], "GET", format!("{NET}/serviceGateways/servicegateway/services")),
        (
            CloudCall::GetAddressLocations,
            vec![canned(200, r#"{"items":[]}"#)],
            "GET",
            format!("{NET}/serviceGateways/servicegateway/addressLocations"),
        ),
        (
            CloudCall::GetSgwServices,
            vec![canned(200, r#"{"value":[{"name":"x","properties":{"serviceType":"Sideways"}}]}"#)],
            "GET",
            format!("{NET}/serviceGateways/servicegateway/services"),
        ),
        (CloudCall::ListLoadBalancers, vec![canned(200, r#"{"value":[{"id":"no-name"}]}"#)], "GET", format!("{NET}/loadBalancers")),
        (CloudCall::ListPublicIps, vec![canned(200, r#"{"value":[1]}"#)], "GET", format!("{NET}/publicIPAddresses")),
        (CloudCall::ListNatGateways, vec![canned(200, r#"{"value":[],"nextLink":7}"#)], "GET", format!("{NET}/natGateways")),
        (CloudCall::GetNatGateway { name: "n".into() }, vec![canned(200, r#"{"properties":{}}"#)], "GET", format!("{NET}/natGateways/n")),
        (CloudCall::GetNatGateway { name: "n".into() }, vec![canned(302, "")], "GET", format!("{NET}/natGateways/n")),
        (pip.clone(), vec![canned(200, "<html>")], "PUT", format!("{NET}/publicIPAddresses/u-pip")),
        (pip.clone(), vec![canned(204, "")], "PUT", format!("{NET}/publicIPAddresses/u-pip")),
        (
            pip.clone(),
            vec![canned(201, "{}").header("azure-asyncoperation", op), canned(200, r#"{"state":"x"}"#)],
            "PUT",
            format!("{NET}/publicIPAddresses/u-pip"),
        ),
        (
            pip.clone(),
            vec![canned(201, "{}").header("azure-asyncoperation", op), canned(200, r#"{"status":"Succeeded"}"#), canned(200, "[")],
            "PUT",
            format!("{NET}/publicIPAddresses/u-pip"),
        ),
        (CloudCall::DeletePublicIp { name: "p".into() }, vec![canned(202, "")], "DELETE", format!("{NET}/publicIPAddresses/p")),
        (
            CloudCall::UpdateServices(vec![SgwServiceRequest {
                name: "u".into(),
                service_type: ServiceType::Inbound,
                is_delete: false,
                backend_pools: vec![],
                nat_gateway: NatReference::Absent,
                is_default: None,
            }]),
            vec![canned(202, "")],
            "POST",
            format!("{NET}/serviceGateways/servicegateway/updateServices"),
        ),
        (
            CloudCall::UpdateAddressLocations(vec![]),
            vec![canned(201, "")],
            "POST",
            format!("{NET}/serviceGateways/servicegateway/updateAddressLocations"),
        ),
        (CloudCall::DetachNatGateway { name: "n".into(), raw: "{not json".into() }, vec![], "PUT", format!("{NET}/natGateways/n")),
    ];
    for (i, (call, script, method, path)) in cases.into_iter().enumerate() {
        let s = ScriptedServer::start(script).await;
        let e = s.transport().perform(call.clone()).await.expect_err("malformed answer must fail");
        assert_eq!(e.kind, ErrorKind::InvalidResponse, "case {i} {call:?}: {e}");
        assert!(e.message.contains(&format!("{method} {path}")), "case {i}: message {:?} names no {method} {path}", e.message);
    }
}

#[tokio::test]
async fn a_call_is_bounded_by_the_operation_timeout() {
    let s = ScriptedServer::start_sticky(vec![
        canned(202, "").header("location", "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operationResults/1"),
        canned(202, ""),
    ])
    .await;
    let mut o = TransportOptions::fast_for_tests();
    o.operation_timeout = std::time::Duration::from_millis(100);
    let t = ArmTransport::unauthenticated(cfg(&s.base), o).unwrap();
    let e = t.perform(CloudCall::DeleteLoadBalancer { name: "u".into() }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
}

#[tokio::test]
async fn connection_failures_become_transport_errors() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let t = ArmTransport::unauthenticated(cfg(&base), TransportOptions::fast_for_tests()).unwrap();
    let e = t.call(CloudCall::ListLoadBalancers).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Transport, 0), "{e}");
    assert!(e.message.contains(&format!("GET {NET}/loadBalancers")), "{e}");
}

#[tokio::test]
async fn bearer_tokens_are_sent_and_never_printed() {
    let s = ScriptedServer::start(vec![canned(200, r#"{"value":[]}"#)]).await;
    let tok = BearerToken::new("s3cr3t");
    assert!(!format!("{tok:?}").contains("s3cr3t"));
    let t = ArmTransport::new(cfg(&s.base), Arc::new(StaticToken(tok)), TransportOptions::fast_for_tests()).unwrap();
    t.perform(CloudCall::ListLoadBalancers).await.unwrap();
    assert_eq!(s.seen()[0].headers.get("authorization").unwrap(), "Bearer s3cr3t");
    let cred = AzureCredentialConfig::ClientSecret { tenant_id: "t".into(), client_id: "c".into(), client_secret: "hush".into() };
    assert!(!format!("{cred:?}").contains("hush"));
}

#[test]
fn azure_identity_credentials_can_be_built() {
    let cred = AzureCredentialConfig::ClientSecret {
        tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
        client_id: "c".into(),
        client_secret: "hush".into(),
    };
    let tokens = AzureIdentityTokens::new(&cred).expect("client secret credential");
    assert!(!format!("{tokens:?}").contains("hush"));
    let token_file = std::env::temp_dir().join(format!("difftracker-wi-token-{}", std::process::id()));
    std::fs::write(&token_file, "header.payload.signature").unwrap();
    let wi = AzureCredentialConfig::WorkloadIdentity {
        tenant_id: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
        client_id: Some("c".into()),
        token_file: Some(token_file.clone()),
    };
    let built = AzureIdentityTokens::new(&wi);
    let _ = std::fs::remove_file(&token_file);
    assert!(built.is_ok(), "{:?}", built.err());
    assert!(AzureIdentityTokens::new(&AzureCredentialConfig::ManagedIdentity { user_assigned_id: Some("c".into()) }).is_ok());
}

#[test]
fn retry_after_forms_are_understood() {
    let mut h = reqwest::header::HeaderMap::new();
    assert_eq!(retry_after(&h), None);
    h.insert("retry-after", "7".parse().unwrap());
    assert_eq!(retry_after(&h), Some(std::time::Duration::from_secs(7)));
    h.insert("x-ms-retry-after-ms", "250".parse().unwrap());
    assert_eq!(retry_after(&h), Some(std::time::Duration::from_millis(250)));
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
    assert_eq!(retry_after(&h), Some(std::time::Duration::ZERO));
    h.insert("retry-after", "soon".parse().unwrap());
    assert_eq!(retry_after(&h), None);
}

#[derive(Debug)]
struct CountingCredential {
    calls: std::sync::atomic::AtomicU32,
    lifetime_s: i64,
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for CountingCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        assert_eq!(scopes, [ARM_SCOPE]);
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Ok(azure_core::credentials::AccessToken::new(
            format!("token-{n}"),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::seconds(self.lifetime_s),
        ))
    }
}

#[tokio::test]
async fn tokens_are_cached_and_refreshed_before_expiry() {
    use std::sync::atomic::Ordering;
    let long = Arc::new(CountingCredential { calls: 0.into(), lifetime_s: 3600 });
    let tokens = AzureIdentityTokens::from_credential(long.clone(), ARM_SCOPE);
    for _ in 0..3 {
        assert_eq!(tokens.token().await.unwrap().unwrap().secret(), "token-1");
    }
    assert_eq!(long.calls.load(Ordering::SeqCst), 1);
    // A token with less than the refresh margin (5 minutes) left is replaced on every use.
    let short = Arc::new(CountingCredential { calls: 0.into(), lifetime_s: 60 });
    let tokens = AzureIdentityTokens::from_credential(short.clone(), ARM_SCOPE);
    assert_eq!(tokens.token().await.unwrap().unwrap().secret(), "token-1");
    assert_eq!(tokens.token().await.unwrap().unwrap().secret(), "token-2");
    // The transport sends the cached token.
    let s = ScriptedServer::start(vec![canned(200, r#"{"value":[]}"#), canned(200, r#"{"value":[]}"#)]).await;
    let tokens = Arc::new(AzureIdentityTokens::from_credential(long.clone(), ARM_SCOPE));
    let t = ArmTransport::new(cfg(&s.base), tokens, TransportOptions::fast_for_tests()).unwrap();
    t.perform(CloudCall::ListNatGateways).await.unwrap();
    t.perform(CloudCall::ListNatGateways).await.unwrap();
    let seen = s.seen();
    assert_eq!(seen[0].headers.get("authorization").unwrap(), "Bearer token-2");
    assert_eq!(seen[1].headers.get("authorization").unwrap(), "Bearer token-2");
}

// ------------------------------------------------------------------------ memory bounds

/// A raw HTTP/1.1 server that answers every request with `head` and then `body_len` bytes of JSON
/// whitespace followed by `tail`, written in 64 KiB chunks (chunked encoding when `chunked`,
/// else one `Content-Length` covering it all). Counts the body bytes it managed to write.
struct StreamingServer {
    base: String,
    written: Arc<std::sync::atomic::AtomicUsize>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl StreamingServer {
    async fn start(body_len: usize, tail: &'static str, chunked: bool) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (w, c) = (written.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let w = w.clone();
                tokio::spawn(async move {
                    // The request head (the transport sends no body on GET).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|x| x == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let total = body_len + tail.len();
                    let framing = if chunked { "Transfer-Encoding: chunked".to_string() } else { format!("Content-Length: {total}") };
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n");
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b' '; 64 << 10];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        let ok = if chunked {
                            sock.write_all(format!("{n:x}\r\n").as_bytes()).await.is_ok()
                                && sock.write_all(&chunk[..n]).await.is_ok()
                                && sock.write_all(b"\r\n").await.is_ok()
                        } else {
                            sock.write_all(&chunk[..n]).await.is_ok()
                        };
                        if !ok {
                            return;
                        }
                        w.fetch_add(n, Ordering::SeqCst);
                        left -= n;
                    }
                    let end = if chunked { format!("{:x}\r\n{tail}\r\n0\r\n\r\n", tail.len()) } else { tail.to_string() };
                    let _ = sock.write_all(end.as_bytes()).await;
                    w.fetch_add(tail.len(), Ordering::SeqCst);
                    let _ = sock.flush().await;
                });
            }
        });
        StreamingServer { base, written, connections }
    }
}

#[tokio::test]
async fn a_response_body_over_the_cap_is_a_transport_error_and_is_not_read_to_the_end() {
    use std::sync::atomic::Ordering;
    // 64 MiB of whitespace and then a valid list: a transport that buffers whole bodies accepts it.
    const BODY: usize = 64 << 20;
    for chunked in [true, false] {
        let s = StreamingServer::start(BODY, r#"{"value":[]}"#, chunked).await;
        let mut o = TransportOptions::fast_for_tests();
        o.max_response_bytes = 1 << 20;
        let t = ArmTransport::unauthenticated(cfg(&s.base), o).unwrap();
        let e = t.perform(CloudCall::ListLoadBalancers).await.expect_err("a 64 MiB body is over a 1 MiB cap");
        assert_eq!(e.kind, ErrorKind::Transport, "chunked {chunked}: {e}");
        assert!(e.message.contains("1048576 bytes"), "chunked {chunked}: the message names the cap: {e}");
        assert!(e.message.contains(&format!("GET {NET}/loadBalancers")), "chunked {chunked}: {e}");
        // The body was abandoned at the cap (plus what the sockets buffer), not read to its end,
        // and an excess is not retried.
        assert!(s.written.load(Ordering::SeqCst) < BODY / 2, "chunked {chunked}: the server wrote the whole body");
        assert_eq!(s.connections.load(Ordering::SeqCst), 1, "chunked {chunked}: an oversized answer is not retried");
    }
}

#[tokio::test]
async fn a_declared_content_length_over_the_cap_is_refused_before_reading() {
    // Declares 1 TiB and sends nothing of it: refused on the header alone.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n{").await;
                // Hold the connection open, as a slow peer would.
                tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            });
        }
    });
    let t = ArmTransport::unauthenticated(cfg(&base), TransportOptions::fast_for_tests()).unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(60), t.perform(CloudCall::ListPublicIps))
        .await
        .expect("guard: the call ends")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transport, "{e}");
    assert!(e.message.contains("1099511627776") && e.message.contains("16777216"), "{e}");
}

#[tokio::test]
async fn a_list_whose_next_link_never_ends_stops_at_the_page_cap() {
    let page = format!(r#"{{"value":[{{"name":"lb"}}],"nextLink":"{{base}}{NET}/loadBalancers?api-version=2025-05-01&$skiptoken=again"}}"#);
    let s = ScriptedServer::start_sticky(vec![canned(200, &page)]).await;
    let mut o = TransportOptions::fast_for_tests();
    o.max_pages = 5;
    let t = ArmTransport::unauthenticated(cfg(&s.base), o).unwrap();
    let e = t.perform(CloudCall::ListLoadBalancers).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e}");
    assert!(e.message.contains("more than 5 pages"), "{e}");
    assert_eq!(s.seen().len(), 5);
}

#[tokio::test]
async fn a_list_stops_at_the_item_cap() {
    let items: Vec<String> = (0..1000).map(|i| format!(r#"{{"name":"lb-{i}"}}"#)).collect();
    let page =
        format!(r#"{{"value":[{}],"nextLink":"{{base}}{NET}/loadBalancers?api-version=2025-05-01&$skiptoken=again"}}"#, items.join(","));
    let s = ScriptedServer::start_sticky(vec![canned(200, &page)]).await;
    let mut o = TransportOptions::fast_for_tests();
    o.max_list_items = 2500;
    let t = ArmTransport::unauthenticated(cfg(&s.base), o).unwrap();
    let e = t.perform(CloudCall::ListLoadBalancers).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e}");
    assert!(e.message.contains("more than 2500 items"), "{e}");
    assert_eq!(s.seen().len(), 3, "the third page crosses the cap; no fourth is fetched");
}

#[tokio::test]
async fn a_list_stops_at_the_byte_cap() {
    let page = format!(
        r#"{{"value":[{{"name":"lb","tags":{{"pad":"{}"}}}}],"nextLink":"{{base}}{NET}/natGateways?api-version=2025-05-01&$skiptoken=again"}}"#,
        "p".repeat(100_000)
    );
    let s = ScriptedServer::start_sticky(vec![canned(200, &page)]).await;
    let mut o = TransportOptions::fast_for_tests();
    o.max_list_bytes = 250_000;
    let t = ArmTransport::unauthenticated(cfg(&s.base), o).unwrap();
    let e = t.perform(CloudCall::ListNatGateways).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e}");
    assert!(e.message.contains("more than 250000 bytes"), "{e}");
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn a_huge_arm_error_is_cut_to_a_bounded_length_on_a_char_boundary() {
    // 10 MB of two-byte characters in the message, 100 KB of code.
    let message = "é".repeat(5_000_000);
    let code = "C".repeat(100_000);
    let body = json!({ "error": { "code": code, "message": message } }).to_string();
    let check = |e: &CallError, what: &str| {
        assert!(e.message.len() <= 4096 + 512, "{what}: the message keeps {} bytes", e.message.len());
        assert!(e.message.contains("é") && e.message.contains("truncated"), "{what}: {}", &e.message[..200.min(e.message.len())]);
        assert!(e.code.len() <= 4096 + 64, "{what}: the code keeps {} bytes", e.code.len());
        assert!(e.code.starts_with("CCCC") && e.code.contains("truncated"), "{what}");
    };

    // An ARM error answer.
    let s = ScriptedServer::start(vec![canned(400, &body)]).await;
    let e = s.transport().perform(CloudCall::DeletePublicIp { name: "u-pip".into() }).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Http, 400));
    check(&e, "HTTP 400");

    // A long-running operation that ends Failed with it.
    let op = "{base}/subscriptions/sub-1/providers/Microsoft.Network/locations/eastus2/operations/op1?api-version=2025-05-01";
    let failed = json!({ "status": "Failed", "error": { "code": code, "message": message } }).to_string();
    let s = ScriptedServer::start(vec![canned(202, "").header("azure-asyncoperation", op), canned(200, &failed)]).await;
    let e = s.transport().perform(CloudCall::DeleteLoadBalancer { name: "u".into() }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::OperationFailed);
    check(&e, "LRO Failed");

    // A PUT whose body ends in provisioningState Failed.
    let failed =
        json!({ "name": "u", "properties": { "provisioningState": "Failed" }, "error": { "code": code, "message": message } }).to_string();
    let s = ScriptedServer::start(vec![canned(201, &failed)]).await;
    let e = s.transport().perform(CloudCall::PutPublicIp { name: "u-pip".into(), version: IpVersion::V4 }).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::OperationFailed);
    check(&e, "provisioningState Failed");
}

/// Scenario 128, on the wire: service types in any casing parse, `InboundOutbound` included; an
/// unknown type, or a malformed page, reaches the engine as `invalid-response` (which fails its
/// start-up loudly).
#[tokio::test]
async fn s128_service_types_parse_in_any_casing_an_unknown_one_or_a_bad_page_is_invalid() {
    let body = r#"{"value":[{"name":"a","properties":{"serviceType":"inbound"}},
        {"name":"b","properties":{"serviceType":"INBOUNDOUTBOUND"}},{"name":"c","properties":{"serviceType":"Outbound"}}]}"#;
    let s = ScriptedServer::start(vec![canned(200, body)]).await;
    match s.transport().perform(CloudCall::GetSgwServices).await.unwrap() {
        CallOutput::SgwServices(list) => {
            let types: Vec<(&str, ServiceType)> = list.iter().map(|x| (x.name.as_str(), x.service_type)).collect();
            assert_eq!(types, vec![("a", ServiceType::Inbound), ("b", ServiceType::InboundOutbound), ("c", ServiceType::Outbound)]);
        }
        other => panic!("{other:?}"),
    }
    let s = ScriptedServer::start(vec![canned(200, r#"{"value":[{"name":"x","properties":{"serviceType":"Sideways"}}]}"#)]).await;
    let e = s.transport().perform(CloudCall::GetSgwServices).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "{e}");
    assert!(e.message.contains("unknown serviceType"), "{e}");
    let s = ScriptedServer::start(vec![canned(200, r#"{"items":[]}"#)]).await;
    let e = s.transport().perform(CloudCall::GetSgwServices).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidResponse, "a page without value: {e}");
}
