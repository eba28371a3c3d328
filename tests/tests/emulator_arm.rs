//! The emulator judged as ARM would be: what a stock Azure client sends and expects, over raw
//! HTTP and through the project's transport. Deletes of missing resources, the ServiceGateway
//! POST answers, the REST spec's partial-update shapes, load balancer children, public IP echoes,
//! `location`, provisioning states during long-running operations, `If-Match`, polling URLs that
//! do not trust the Host header, a minimum poll interval on both sides, resource groups kept
//! apart, and bearer tokens checked when the emulator is given credentials.

mod emulator_support;

use difftracker_engine::io::*;
use difftracker_runtime::backend::CloudBackend;
use difftracker_runtime::transport::{ArmTransport, BearerToken, StaticToken, TransportOptions};
use difftracker_simulation::emulator::{
    codes, Emulator, EmulatorAuth, EmulatorBackend, EmulatorHandle, EmulatorOptions, EmulatorScope, LroMode, PollHeaders, PollingOptions,
};
use emulator_support::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const V: &str = "api-version=2025-05-01";

fn polling(in_progress_polls: u32) -> EmulatorOptions {
    EmulatorOptions {
        lro: LroMode::Polling(PollingOptions { in_progress_polls, headers: PollHeaders::Both, ..Default::default() }),
        ..Default::default()
    }
}

fn net(h: &EmulatorHandle) -> String {
    h.emulator().options().scope.provider_path()
}

fn url(h: &EmulatorHandle, rest: &str) -> String {
    format!("{}/{rest}?{V}", net(h))
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

fn pip_body(h: &EmulatorHandle) -> String {
    let loc = &h.emulator().options().scope.location;
    json!({"location": loc, "properties": {"publicIPAddressVersion": "IPv4", "publicIPAllocationMethod": "Static"}, "sku": {"name": "StandardV2"}})
        .to_string()
}

/// The path and query of an absolute URL a polling header handed out.
fn path_of(absolute: &str) -> String {
    let rest = absolute.split_once("://").map(|(_, r)| r).unwrap_or(absolute);
    rest[rest.find('/').unwrap_or(rest.len())..].to_string()
}

/// Polls an `Azure-AsyncOperation` URL until it is no longer InProgress; returns its status.
async fn poll_until_done(h: &EmulatorHandle, op_url: &str) -> String {
    for _ in 0..20 {
        let (status, _, body) = raw_http(h.addr(), "GET", &path_of(op_url), None).await;
        assert_eq!(status, 200, "{body}");
        let s = json_of(&body)["status"].as_str().unwrap_or("").to_string();
        if s != "InProgress" {
            return s;
        }
    }
    panic!("the operation at {op_url} never finished");
}

// ------------------------------------------------------------------------ item 12

#[tokio::test]
async fn deleting_a_missing_resource_answers_204() {
    for options in [EmulatorOptions::default(), polling(1)] {
        let (h, t) = start(options).await;
        for kind in ["publicIPAddresses/nope-pip", "loadBalancers/nope", "natGateways/nope"] {
            let (status, head, body) = raw_http(h.addr(), "DELETE", &url(&h, kind), None).await;
            assert_eq!(status, 204, "DELETE {kind}: {head}{body}");
            assert!(header(&head, "azure-asyncoperation").is_none() && header(&head, "location").is_none(), "{head}");
        }
        // The transport takes it as done.
        t.perform(CloudCall::DeletePublicIp { name: "nope-pip".into() }).await.unwrap();
    }
}

#[tokio::test]
async fn service_gateway_posts_answer_with_a_body_a_client_can_parse() {
    let (h, t) = start(EmulatorOptions::default()).await;
    let body = r#"{"action":"PartialUpdate","addressLocations":[]}"#;
    let (status, head, text) =
        raw_http(h.addr(), "POST", &url(&h, "serviceGateways/servicegateway/updateAddressLocations"), Some(body)).await;
    assert_eq!(status, 200, "{head}");
    assert!(header(&head, "content-type").is_some_and(|c| c.starts_with("application/json")), "{head}");
    assert_eq!(json_of(&text), json!({"status": "Succeeded"}));
    let body = r#"{"action":"PartialUpdate","serviceRequests":[]}"#;
    let (status, _, text) = raw_http(h.addr(), "POST", &url(&h, "serviceGateways/servicegateway/updateServices"), Some(body)).await;
    assert_eq!((status, json_of(&text)), (200, json!({"status": "Succeeded"})));
    // The transport still takes the 200 as done (AZURE-WIRE.md 1.6).
    t.perform(publish(vec![loc("10.0.0.9", UpdateAction::FullUpdate, &[])])).await.unwrap();

    // Polling: 202 with a Location whose final answer is JSON too.
    let (h, _t) = start(polling(1)).await;
    let (status, head, _) = raw_http(h.addr(), "POST", &url(&h, "serviceGateways/servicegateway/updateServices"), Some(body)).await;
    assert_eq!(status, 202);
    let location = path_of(header(&head, "location").expect("Location"));
    let (status, _, _) = raw_http(h.addr(), "GET", &location, None).await;
    assert_eq!(status, 202, "in progress");
    let (status, _, text) = raw_http(h.addr(), "GET", &location, None).await;
    assert_eq!((status, json_of(&text)), (200, json!({"status": "Succeeded"})));
}

#[tokio::test]
async fn partial_updates_in_the_rest_spec_shapes_are_accepted() {
    let (h, t) = start(EmulatorOptions::default()).await;
    let u = "3f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f";
    t.perform(put_pip(&format!("{u}-pip"), IpVersion::V4)).await.unwrap();
    t.perform(put_lb(u)).await.unwrap();
    t.perform(register_inbound(u)).await.unwrap();
    t.perform(publish(vec![
        loc("10.224.0.4", UpdateAction::FullUpdate, &[("10.244.1.7", &[u]), ("10.244.1.8", &[u])]),
        loc("10.224.0.5", UpdateAction::FullUpdate, &[("10.244.2.3", &[u])]),
    ]))
    .await
    .unwrap();
    // As in the REST spec's example: an address with no `services` is deleted; a location with
    // no `addresses` (and no `addressUpdateAction`) is deleted.
    let body = json!({"action": "PartialUpdate", "addressLocations": [
        {"addressLocation": "10.224.0.4", "addressUpdateAction": "PartialUpdate", "addresses": [{"address": "10.244.1.7"}]},
        {"addressLocation": "10.224.0.5"}]});
    let (status, _, text) =
        raw_http(h.addr(), "POST", &url(&h, "serviceGateways/servicegateway/updateAddressLocations"), Some(&body.to_string())).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(h.inventory()["address_locations"], json!({"10.224.0.4": {"10.244.1.8": [u]}}));
    // A service request for a delete needs no properties.
    t.perform(publish(vec![loc("10.224.0.4", UpdateAction::PartialUpdate, &[])])).await.unwrap();
    let body = json!({"action": "PartialUpdate", "serviceRequests": [{"isDelete": true, "service": {"name": u}}]});
    let (status, _, text) =
        raw_http(h.addr(), "POST", &url(&h, "serviceGateways/servicegateway/updateServices"), Some(&body.to_string())).await;
    assert_eq!(status, 200, "{text}");
    assert!(h.inventory()["sgw_services"].get(u).is_none());
}

#[tokio::test]
async fn load_balancer_children_carry_ids_etags_types_and_states() {
    let (h, _t) = start(EmulatorOptions::default()).await;
    let n = net(&h);
    let (status, _, _) = raw_http(h.addr(), "PUT", &url(&h, "publicIPAddresses/lb1-pip"), Some(&pip_body(&h))).await;
    assert_eq!(status, 201);
    let lb = json!({
        "location": "eastus2",
        "sku": {"name": "Service"},
        "properties": {
            "frontendIPConfigurations": [{"name": "fe-a", "properties": {"publicIPAddress": {"id": format!("{n}/publicIPAddresses/lb1-pip")}}}],
            "backendAddressPools": [{"name": "pool-a"}],
            "loadBalancingRules": [{"name": "rule-tcp-80", "properties": {
                "protocol": "Tcp", "frontendPort": 80, "backendPort": 8080,
                "frontendIPConfiguration": {"id": format!("{n}/loadBalancers/lb1/frontendIPConfigurations/fe-a")},
                "backendAddressPool": {"id": format!("{n}/loadBalancers/lb1/backendAddressPools/pool-a")}}}]}});
    let (status, _, put) = raw_http(h.addr(), "PUT", &url(&h, "loadBalancers/lb1"), Some(&lb.to_string())).await;
    assert_eq!(status, 201, "{put}");
    let (status, _, got) = raw_http(h.addr(), "GET", &url(&h, "loadBalancers/lb1"), None).await;
    assert_eq!(status, 200);
    for v in [json_of(&put), json_of(&got)] {
        let lb_id = format!("{n}/loadBalancers/lb1");
        let etag = v["etag"].as_str().expect("LB etag").to_string();
        for (key, segment, name) in [
            ("frontendIPConfigurations", "frontendIPConfigurations", "fe-a"),
            ("backendAddressPools", "backendAddressPools", "pool-a"),
            ("loadBalancingRules", "loadBalancingRules", "rule-tcp-80"),
        ] {
            let child = &v["properties"][key][0];
            assert_eq!(child["id"], json!(format!("{lb_id}/{segment}/{name}")), "{key}: {child}");
            assert_eq!(child["etag"], json!(etag), "{key}");
            assert_eq!(child["type"], json!(format!("Microsoft.Network/loadBalancers/{segment}")), "{key}");
            assert_eq!(child["properties"]["provisioningState"], "Succeeded", "{key}");
        }
    }
    // The public IP names the frontend that really uses it.
    let (_, _, pip) = raw_http(h.addr(), "GET", &url(&h, "publicIPAddresses/lb1-pip"), None).await;
    assert_eq!(json_of(&pip)["properties"]["ipConfiguration"]["id"], json!(format!("{n}/loadBalancers/lb1/frontendIPConfigurations/fe-a")));
    // A rule naming a frontend the load balancer does not have is an invalid reference.
    let mut bad = lb.clone();
    bad["properties"]["loadBalancingRules"][0]["properties"]["frontendIPConfiguration"]["id"] =
        json!(format!("{n}/loadBalancers/lb1/frontendIPConfigurations/missing"));
    let (status, _, text) = raw_http(h.addr(), "PUT", &url(&h, "loadBalancers/lb1"), Some(&bad.to_string())).await;
    assert_eq!((status, json_of(&text)["error"]["code"].as_str()), (400, Some("InvalidResourceReference")));
}

#[tokio::test]
async fn a_public_ip_echoes_its_sku_tags_idle_timeout_and_allocation_method() {
    let (h, t) = start(EmulatorOptions::default()).await;
    let body = json!({
        "location": "eastus2",
        "tags": {"team": "net", "env": "test"},
        "sku": {"name": "Standard", "tier": "Global"},
        "properties": {"publicIPAddressVersion": "IPv4", "publicIPAllocationMethod": "Static", "idleTimeoutInMinutes": 17}});
    let (status, _, put) = raw_http(h.addr(), "PUT", &url(&h, "publicIPAddresses/echo"), Some(&body.to_string())).await;
    assert_eq!(status, 201, "{put}");
    let (_, _, got) = raw_http(h.addr(), "GET", &url(&h, "publicIPAddresses/echo"), None).await;
    for v in [json_of(&put), json_of(&got)] {
        assert_eq!(v["sku"], json!({"name": "Standard", "tier": "Global"}), "{v}");
        assert_eq!(v["tags"], json!({"team": "net", "env": "test"}), "{v}");
        assert_eq!(v["properties"]["idleTimeoutInMinutes"], 17, "{v}");
        assert_eq!(v["properties"]["publicIPAllocationMethod"], "Static", "{v}");
        assert_eq!(v["location"], "eastus2");
    }
    // What the engine sends still comes back as it was sent.
    let CallOutput::PublicIp(info) = t.perform(put_pip("engine-pip", IpVersion::V6)).await.unwrap() else { panic!() };
    assert_eq!(info.version, IpVersion::V6);
    let (_, _, got) = raw_http(h.addr(), "GET", &url(&h, "publicIPAddresses/engine-pip"), None).await;
    let v = json_of(&got);
    assert_eq!((v["sku"]["name"].as_str(), v["properties"]["idleTimeoutInMinutes"].as_u64()), (Some("StandardV2"), Some(4)));
    // An idle timeout Azure would refuse is refused.
    let mut bad = body.clone();
    bad["properties"]["idleTimeoutInMinutes"] = json!(0);
    let (status, _, _) = raw_http(h.addr(), "PUT", &url(&h, "publicIPAddresses/echo"), Some(&bad.to_string())).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_tracked_resource_without_a_location_is_refused() {
    let (h, _t) = start(EmulatorOptions::default()).await;
    for (path, body) in [
        ("publicIPAddresses/noloc", json!({"properties": {"publicIPAddressVersion": "IPv4"}})),
        ("loadBalancers/noloc", json!({"sku": {"name": "Service"}, "properties": {}})),
        ("natGateways/noloc", json!({"sku": {"name": "StandardV2"}, "properties": {}})),
    ] {
        let (status, head, text) = raw_http(h.addr(), "PUT", &url(&h, path), Some(&body.to_string())).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert_eq!(json_of(&text)["error"]["code"], "LocationRequired", "{path}");
        assert_eq!(header(&head, "x-ms-error-code"), Some("locationrequired"));
    }
    assert!(h.inventory()["public_ips"].get("noloc").is_none());
}

#[tokio::test]
async fn a_get_during_a_long_running_operation_shows_it_in_progress() {
    let (h, _t) = start(polling(1)).await;
    let pip = url(&h, "publicIPAddresses/slow");
    let (status, head, _) = raw_http(h.addr(), "PUT", &pip, Some(&pip_body(&h))).await;
    assert_eq!(status, 201);
    let op = header(&head, "azure-asyncoperation").expect("Azure-AsyncOperation").to_string();
    let (status, _, got) = raw_http(h.addr(), "GET", &pip, None).await;
    assert_eq!((status, json_of(&got)["properties"]["provisioningState"].as_str()), (200, Some("Updating")));
    let (_, _, list) = raw_http(h.addr(), "GET", &url(&h, "publicIPAddresses"), None).await;
    let listed = json_of(&list)["value"].as_array().unwrap().iter().find(|p| p["name"] == "slow").cloned().unwrap();
    assert_eq!(listed["properties"]["provisioningState"], "Updating");
    assert_eq!(poll_until_done(&h, &op).await, "Succeeded");
    let (_, _, got) = raw_http(h.addr(), "GET", &pip, None).await;
    assert_eq!(json_of(&got)["properties"]["provisioningState"], "Succeeded");

    let (status, head, _) = raw_http(h.addr(), "DELETE", &pip, None).await;
    assert_eq!(status, 202);
    let op = header(&head, "azure-asyncoperation").expect("Azure-AsyncOperation").to_string();
    let (status, _, got) = raw_http(h.addr(), "GET", &pip, None).await;
    assert_eq!((status, json_of(&got)["properties"]["provisioningState"].as_str()), (200, Some("Deleting")), "{got}");
    assert_eq!(poll_until_done(&h, &op).await, "Succeeded");
    let (status, _, _) = raw_http(h.addr(), "GET", &pip, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_stale_if_match_is_refused_with_412() {
    let (h, _t) = start(EmulatorOptions::default()).await;
    let pip = url(&h, "publicIPAddresses/guarded");
    // If-Match on a resource that does not exist.
    let (status, _, text) = raw_http_with(h.addr(), "PUT", &pip, &[("If-Match", "*")], Some(&pip_body(&h))).await;
    assert_eq!((status, json_of(&text)["error"]["code"].as_str()), (412, Some("PreconditionFailed")), "{text}");
    let (status, _, put) = raw_http(h.addr(), "PUT", &pip, Some(&pip_body(&h))).await;
    assert_eq!(status, 201);
    let etag = json_of(&put)["etag"].as_str().unwrap().to_string();
    // The current etag passes and changes the etag; the old one is then stale.
    let (status, _, put2) = raw_http_with(h.addr(), "PUT", &pip, &[("If-Match", &etag)], Some(&pip_body(&h))).await;
    assert_eq!(status, 200, "{put2}");
    let etag2 = json_of(&put2)["etag"].as_str().unwrap().to_string();
    assert_ne!(etag, etag2);
    let (status, _, text) = raw_http_with(h.addr(), "PUT", &pip, &[("If-Match", &etag)], Some(&pip_body(&h))).await;
    assert_eq!((status, json_of(&text)["error"]["code"].as_str()), (412, Some("PreconditionFailed")));
    let (status, _, _) = raw_http_with(h.addr(), "DELETE", &pip, &[("If-Match", &etag)], None).await;
    assert_eq!(status, 412);
    // If-None-Match: * refuses to overwrite.
    let (status, _, _) = raw_http_with(h.addr(), "PUT", &pip, &[("If-None-Match", "*")], Some(&pip_body(&h))).await;
    assert_eq!(status, 412);
    let (_, _, got) = raw_http(h.addr(), "GET", &pip, None).await;
    assert_eq!(json_of(&got)["etag"].as_str(), Some(etag2.as_str()), "nothing changed");
    let (status, _, _) = raw_http_with(h.addr(), "DELETE", &pip, &[("If-Match", &etag2)], None).await;
    assert_eq!(status, 200);
}

// ------------------------------------------------------------------------ item 9

#[tokio::test]
async fn polling_urls_and_next_links_do_not_trust_the_host_header() {
    let (h, _t) = start(EmulatorOptions { page_size: Some(1), ..polling(1) }).await;
    let forged = [("Host", "attacker.example:4444")];
    let (status, head, _) = raw_http_with(h.addr(), "PUT", &url(&h, "publicIPAddresses/p"), &forged, Some(&pip_body(&h))).await;
    assert_eq!(status, 201);
    let ours = format!("http://{}/", h.addr());
    for name in ["azure-asyncoperation", "location"] {
        let v = header(&head, name).unwrap_or_else(|| panic!("{name} in {head}"));
        assert!(v.starts_with(&ours), "{name}: {v}");
    }
    let (_, _, list) = raw_http_with(h.addr(), "GET", &url(&h, "publicIPAddresses"), &forged, None).await;
    let next = json_of(&list)["nextLink"].as_str().expect("nextLink").to_string();
    assert!(next.starts_with(&ours), "{next}");
}

#[tokio::test]
async fn a_retry_after_of_zero_is_answered_as_one_second() {
    let options = EmulatorOptions {
        lro: LroMode::Polling(PollingOptions { in_progress_polls: 1, retry_after_s: Some(0), ..Default::default() }),
        ..Default::default()
    };
    let (h, _t) = start(options).await;
    let (_, head, _) = raw_http(h.addr(), "PUT", &url(&h, "publicIPAddresses/p"), Some(&pip_body(&h))).await;
    assert_eq!(header(&head, "retry-after"), Some("1"), "{head}");
    let op = header(&head, "azure-asyncoperation").unwrap().to_string();
    let (_, head, body) = raw_http(h.addr(), "GET", &path_of(&op), None).await;
    assert_eq!(json_of(&body)["status"], "InProgress");
    assert_eq!(header(&head, "retry-after"), Some("1"), "{head}");
}

/// A server that answers every PUT with 201 + `Azure-AsyncOperation` and every poll with
/// `InProgress`, both with `Retry-After: 0`; counts the polls.
async fn eager_server(polls: Arc<AtomicUsize>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let polls = polls.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut got = Vec::new();
                // Read the head and the announced body.
                loop {
                    let Ok(n) = s.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&got).to_string();
                let (status, body, extra) = if text.starts_with("PUT ") {
                    (
                        "201 Created",
                        r#"{"properties":{"provisioningState":"Updating"}}"#.to_string(),
                        format!("Azure-AsyncOperation: http://{addr}/op/1\r\n"),
                    )
                } else {
                    polls.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", r#"{"status":"InProgress"}"#.to_string(), String::new())
                };
                let rsp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nRetry-After: 0\r\n{extra}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(rsp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_transport_polls_no_faster_than_its_floor_whatever_retry_after_says() {
    let polls = Arc::new(AtomicUsize::new(0));
    let addr = eager_server(polls.clone()).await;
    let cfg = EmulatorOptions::default().scope.tenant_config(&format!("http://{addr}"));
    // The production defaults, with a short operation bound.
    let options = TransportOptions { operation_timeout: Duration::from_millis(2500), ..TransportOptions::default() };
    let t = ArmTransport::unauthenticated(cfg, options).unwrap();
    let e = t.perform(put_pip("p", IpVersion::V4)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    let n = polls.load(Ordering::SeqCst);
    // At most one poll a second (a floor of 1 s); without it, hundreds in 2.5 s.
    assert!(n <= 3, "{n} polls in 2.5 s");
}

// ------------------------------------------------------------------------ item 11

#[tokio::test]
async fn a_resource_is_seen_only_in_its_own_subscription_and_resource_group() {
    let (h, t) = start(EmulatorOptions::default()).await;
    t.perform(put_pip("mine-pip", IpVersion::V4)).await.unwrap();
    let scope = h.emulator().options().scope.clone();
    // Another subscription, through the transport: its list must not show our public IP.
    let other_sub = scope.tenant_config(&h.base_url()).with_network_subscription("11111111-2222-3333-4444-555555555555");
    let other = ArmTransport::unauthenticated(other_sub, TransportOptions::fast_for_tests()).unwrap();
    expect_code(other.perform(CloudCall::ListPublicIps).await, 404, "SubscriptionNotFound");
    // Another resource group of our subscription.
    let mut other_rg = scope.tenant_config(&h.base_url());
    other_rg.resource_group = "someone-elses-rg".into();
    let other = ArmTransport::unauthenticated(other_rg, TransportOptions::fast_for_tests()).unwrap();
    expect_code(other.perform(CloudCall::ListPublicIps).await, 404, "ResourceGroupNotFound");
    // A delete there is not taken as "already gone", and does not touch ours.
    expect_code(other.perform(CloudCall::DeletePublicIp { name: "mine-pip".into() }).await, 404, "ResourceGroupNotFound");
    expect_code(other.perform(CloudCall::GetNatGateway { name: "default-natgw".into() }).await, 404, "ResourceGroupNotFound");
    expect_code(other.perform(unregister("default-natgw", ServiceType::Outbound)).await, 404, "ResourceGroupNotFound");
    assert!(h.inventory()["public_ips"].get("mine-pip").is_some());
    let (status, _, text) = raw_http(
        h.addr(),
        "GET",
        &format!(
            "/subscriptions/{}/resourceGroups/nope/providers/Microsoft.Network/serviceGateways/servicegateway/services?{V}",
            scope.subscription
        ),
        None,
    )
    .await;
    assert_eq!((status, json_of(&text)["error"]["code"].as_str()), (404, Some("ResourceGroupNotFound")));
}

fn with_token(h: &EmulatorHandle, token: &str) -> ArmTransport {
    let tokens = Arc::new(StaticToken(BearerToken::new(token)));
    ArmTransport::new(h.tenant_config(), tokens, TransportOptions::fast_for_tests()).unwrap()
}

#[tokio::test]
async fn the_bearer_token_is_checked_when_the_emulator_is_given_credentials() {
    let (h, anonymous) = start(EmulatorOptions { auth: EmulatorAuth::Token("s3cret".into()), ..polling(1) }).await;
    let e = expect_code(anonymous.perform(CloudCall::ListPublicIps).await, 401, codes::AUTHENTICATION_FAILED);
    assert!(e.message.contains("missing"), "{e}");
    expect_code(with_token(&h, "stolen").perform(CloudCall::ListPublicIps).await, 401, codes::INVALID_AUTHENTICATION_TOKEN);
    // The right token works, long-running operations and their polls included.
    let good = with_token(&h, "s3cret");
    good.perform(put_pip("p", IpVersion::V4)).await.unwrap();
    good.perform(CloudCall::DeletePublicIp { name: "p".into() }).await.unwrap();
    // A poll needs the token too; a 401 carries a challenge; the inventory is the emulator's own.
    let (status, head, _) = raw_http(h.addr(), "PUT", &url(&h, "publicIPAddresses/q"), Some(&pip_body(&h))).await;
    assert_eq!(status, 401);
    assert!(header(&head, "www-authenticate").is_some_and(|c| c.starts_with("bearer ")), "{head}");
    let auth = [("Authorization", "Bearer s3cret")];
    let (status, head, _) = raw_http_with(h.addr(), "PUT", &url(&h, "publicIPAddresses/q"), &auth, Some(&pip_body(&h))).await;
    assert_eq!(status, 201);
    let op = path_of(header(&head, "azure-asyncoperation").unwrap());
    assert_eq!(raw_http(h.addr(), "GET", &op, None).await.0, 401);
    assert_eq!(raw_http_with(h.addr(), "GET", &op, &auth, None).await.0, 200);
    assert_eq!(raw_http(h.addr(), "GET", "/_emulator/inventory", None).await.0, 200);
    // The token is checked before the route, as at ARM's front door.
    assert_eq!(raw_http(h.addr(), "GET", "/subscriptions/x/nonsense", None).await.0, 401);
    assert_eq!(raw_http_with(h.addr(), "GET", "/subscriptions/x/nonsense", &auth, None).await.0, 404);

    // "Any bearer": any non-empty bearer token, nothing else.
    let (h, anonymous) = start(EmulatorOptions { auth: EmulatorAuth::AnyBearer, ..Default::default() }).await;
    expect_code(anonymous.perform(CloudCall::ListPublicIps).await, 401, codes::AUTHENTICATION_FAILED);
    with_token(&h, "whatever").perform(CloudCall::ListPublicIps).await.unwrap();
    for bad in ["Basic dXNlcjpwYXNz", "Bearer ", "Bearer"] {
        let (status, _, body) = raw_http_with(h.addr(), "GET", &url(&h, "publicIPAddresses"), &[("Authorization", bad)], None).await;
        assert_eq!((status, json_of(&body)["error"]["code"].as_str()), (401, Some(codes::AUTHENTICATION_FAILED)), "{bad}");
    }
}

#[tokio::test]
async fn two_resource_groups_in_one_emulator_are_kept_apart() {
    let b_scope = EmulatorScope {
        subscription: "22222222-0000-0000-0000-000000000000".into(),
        resource_group: "MC_other_cluster".into(),
        location: "westus3".into(),
        vnet_name: "other-vnet".into(),
    };
    let (h, a) = start(EmulatorOptions { extra_scopes: vec![b_scope.clone()], ..polling(0) }).await;
    let b = ArmTransport::unauthenticated(b_scope.tenant_config(&h.base_url()), TransportOptions::fast_for_tests()).unwrap();
    let u = "3f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f";
    let CallOutput::PublicIp(ip_a) = a.perform(put_pip(&format!("{u}-pip"), IpVersion::V4)).await.unwrap() else { panic!() };
    a.perform(put_lb(u)).await.unwrap();
    a.perform(register_inbound(u)).await.unwrap();
    a.perform(publish(vec![loc("10.224.0.4", UpdateAction::FullUpdate, &[("10.244.1.7", &[u])])])).await.unwrap();
    // B sees none of it, and has its own default-natgw and ServiceGateway.
    let CallOutput::PublicIps(ips) = b.perform(CloudCall::ListPublicIps).await.unwrap() else { panic!() };
    assert_eq!(ips.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["default-natgw-pip"]);
    assert_eq!(b.perform(CloudCall::ListLoadBalancers).await.unwrap(), CallOutput::Names(vec![]));
    assert_eq!(b.perform(CloudCall::GetAddressLocations).await.unwrap(), CallOutput::AddressLocations(vec![]));
    let CallOutput::SgwServices(svcs) = b.perform(CloudCall::GetSgwServices).await.unwrap() else { panic!() };
    assert_eq!(svcs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["default-natgw"]);
    // The same name in B is another resource with another address; deleting it leaves A's.
    let CallOutput::PublicIp(ip_b) = b.perform(put_pip(&format!("{u}-pip"), IpVersion::V4)).await.unwrap() else { panic!() };
    assert_ne!(ip_a.ip_address, ip_b.ip_address);
    b.perform(CloudCall::DeletePublicIp { name: format!("{u}-pip") }).await.unwrap();
    assert_eq!(h.inventory()["public_ips"][format!("{u}-pip")], json!(ip_a.ip_address));
    let b_inv = h.emulator().inventory_of(&b_scope.key());
    assert_eq!(b_inv["load_balancers"], json!([]));
    assert!(b_inv["public_ips"].get(format!("{u}-pip")).is_none());
    // B cannot point at A's public IP.
    let a_pip = format!("{}/publicIPAddresses/{u}-pip", h.emulator().options().scope.provider_path());
    let lb = json!({"location": "westus3", "properties": {"frontendIPConfigurations": [{"name": "fe", "properties": {"publicIPAddress": {"id": a_pip}}}]}});
    let (status, _, body) =
        raw_http(h.addr(), "PUT", &format!("{}/loadBalancers/thief?{V}", b_scope.provider_path()), Some(&lb.to_string())).await;
    assert_eq!((status, json_of(&body)["error"]["code"].as_str()), (400, Some(codes::INVALID_RESOURCE_REFERENCE)));
    // B's polling URLs name B's subscription and region.
    let (_, head, _) =
        raw_http(h.addr(), "PUT", &format!("{}/publicIPAddresses/x?{V}", b_scope.provider_path()), Some(r#"{"location":"westus3"}"#)).await;
    let op = header(&head, "azure-asyncoperation").unwrap();
    assert!(op.contains(&format!("/subscriptions/{}/providers/microsoft.network/locations/westus3/", b_scope.subscription)), "{op}");
}

#[tokio::test]
async fn the_in_process_backend_checks_scope_and_token_as_http_does() {
    let emulator = Emulator::new(EmulatorOptions::default());
    let scope = emulator.options().scope.clone();
    let mut elsewhere = scope.tenant_config("http://emulator.invalid");
    elsewhere.resource_group = "not-ours".into();
    let b = EmulatorBackend::new(emulator.clone(), elsewhere);
    for call in [CloudCall::ListPublicIps, CloudCall::DeletePublicIp { name: "x".into() }, CloudCall::GetNatGateway { name: "x".into() }] {
        expect_code(b.call(call).await, 404, codes::RESOURCE_GROUP_NOT_FOUND);
    }
    let other_sub = scope.tenant_config("http://emulator.invalid").with_network_subscription("33333333-0000-0000-0000-000000000000");
    expect_code(
        EmulatorBackend::new(emulator.clone(), other_sub).call(CloudCall::ListNatGateways).await,
        404,
        codes::SUBSCRIPTION_NOT_FOUND,
    );
    // Deleting what is not there is done.
    let ours = EmulatorBackend::new(emulator, scope.tenant_config("http://emulator.invalid"));
    assert_eq!(ours.call(CloudCall::DeleteLoadBalancer { name: "nope".into() }).await.unwrap(), CallOutput::Done);

    let guarded = Emulator::new(EmulatorOptions { auth: EmulatorAuth::Token("t0k".into()), ..Default::default() });
    let cfg = scope.tenant_config("http://emulator.invalid");
    expect_code(EmulatorBackend::new(guarded.clone(), cfg.clone()).call(CloudCall::ListPublicIps).await, 401, codes::AUTHENTICATION_FAILED);
    let wrong = EmulatorBackend::new(guarded.clone(), cfg.clone()).with_token("nope");
    expect_code(wrong.call(CloudCall::ListPublicIps).await, 401, codes::INVALID_AUTHENTICATION_TOKEN);
    EmulatorBackend::new(guarded, cfg).with_token("t0k").call(CloudCall::ListPublicIps).await.unwrap();
}
