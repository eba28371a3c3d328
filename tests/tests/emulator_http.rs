//! The emulator over real HTTP on loopback, driven through the ARM transport: lifecycles in both
//! LRO modes, Azure's referential rules with Azure's error codes, address-location semantics,
//! paging, the inventory and the untouchable `default-natgw`.

mod emulator_support;

use difftracker_engine::io::*;
use difftracker_simulation::emulator::{codes, EmulatorOptions, LroMode, PollHeaders, PollingOptions, DEFAULT_NATGW, DEFAULT_NATGW_PIP};
use emulator_support::*;
use serde_json::{json, Value};
use UpdateAction::{FullUpdate, PartialUpdate};

const U1: &str = "3f1c2b9e-8d7a-4c55-9e11-0a2b3c4d5e6f";
const U2: &str = "0b7e3c1d-1111-4a4a-8b8b-123456789abc";

fn polling(headers: PollHeaders) -> EmulatorOptions {
    EmulatorOptions { lro: LroMode::Polling(PollingOptions { in_progress_polls: 2, headers, ..Default::default() }), ..Default::default() }
}

fn default_only_inventory(inv: &Value) -> Value {
    json!({
        "address_locations": {},
        "load_balancers": [],
        "nat_gateways": [DEFAULT_NATGW],
        "public_ips": { DEFAULT_NATGW_PIP: inv["public_ips"][DEFAULT_NATGW_PIP].clone() },
        "sgw_services": { DEFAULT_NATGW: "Outbound" },
    })
}

/// The whole inbound lifecycle in the engine's order (AZURE-WIRE.md §4.1, §4.2, §4.3).
async fn inbound_lifecycle(options: EmulatorOptions) {
    let (h, t) = start(options).await;
    let before = h.inventory();
    let out = t.perform(put_pip(&format!("{U1}-pip"), IpVersion::V4)).await.unwrap();
    let CallOutput::PublicIp(info) = out else { panic!("not a public IP: {out:?}") };
    let ip = info.ip_address.clone().expect("an allocated address");
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
    assert_eq!((info.version, info.attached), (IpVersion::V4, false));
    assert_eq!(t.perform(put_lb(U1)).await.unwrap(), CallOutput::Done);
    assert_eq!(t.perform(register_inbound(U1)).await.unwrap(), CallOutput::Done);
    t.perform(publish(vec![loc("10.224.0.4", FullUpdate, &[("10.244.1.7", &[U1]), ("10.244.1.8", &[U1])])])).await.unwrap();
    // Spec update: the LB alone is re-PUT.
    t.perform(CloudCall::PutLoadBalancer(LoadBalancerSpec {
        name: U1.into(),
        public_ip: format!("{U1}-pip"),
        rules: vec![LbRule { protocol: TransportProtocol::Udp, frontend_port: 53, backend_port: 5353, idle_timeout_minutes: 4 }],
    }))
    .await
    .unwrap();
    let inv = h.inventory();
    assert_eq!(inv["public_ips"][format!("{U1}-pip")], json!(ip));
    assert_eq!(inv["load_balancers"], json!([U1]));
    assert_eq!(inv["sgw_services"][U1], "Inbound");
    assert_eq!(inv["address_locations"], json!({"10.224.0.4": {"10.244.1.7": [U1], "10.244.1.8": [U1]}}));
    // The PIP now shows as attached.
    let CallOutput::PublicIps(ips) = t.perform(CloudCall::ListPublicIps).await.unwrap() else { panic!() };
    assert!(ips.iter().any(|p| p.name == format!("{U1}-pip") && p.attached && p.ip_address.as_deref() == Some(ip.as_str())));

    // Delete: drain, detach pool, delete LB, unregister, delete PIP.
    t.perform(publish(vec![loc("10.224.0.4", PartialUpdate, &[("10.244.1.7", &[]), ("10.244.1.8", &[])])])).await.unwrap();
    t.perform(detach_pool(U1)).await.unwrap();
    t.perform(CloudCall::DeleteLoadBalancer { name: U1.into() }).await.unwrap();
    t.perform(unregister(U1, ServiceType::Inbound)).await.unwrap();
    t.perform(CloudCall::DeletePublicIp { name: format!("{U1}-pip") }).await.unwrap();
    // Repeated deletes are 204s (nothing to delete) and an unregistration of an unknown service a 404, both success.
    t.perform(CloudCall::DeleteLoadBalancer { name: U1.into() }).await.unwrap();
    t.perform(unregister(U1, ServiceType::Inbound)).await.unwrap();
    t.perform(CloudCall::DeletePublicIp { name: format!("{U1}-pip") }).await.unwrap();
    assert_eq!(h.inventory(), before);
    assert_eq!(h.inventory(), default_only_inventory(&before));
}

#[tokio::test]
async fn inbound_lifecycle_synchronous() {
    inbound_lifecycle(EmulatorOptions::default()).await;
}

#[tokio::test]
async fn inbound_lifecycle_polling_both_headers() {
    inbound_lifecycle(polling(PollHeaders::Both)).await;
}

#[tokio::test]
async fn inbound_lifecycle_polling_azure_async_operation_only() {
    inbound_lifecycle(polling(PollHeaders::AsyncOperation)).await;
}

#[tokio::test]
async fn inbound_lifecycle_polling_location_only() {
    inbound_lifecycle(polling(PollHeaders::Location)).await;
}

#[tokio::test]
async fn outbound_lifecycle_with_nat_disassociation() {
    for options in [EmulatorOptions::default(), polling(PollHeaders::Both)] {
        let (h, t) = start(options).await;
        t.perform(put_pip("egress-a-pip", IpVersion::V4)).await.unwrap();
        let CallOutput::PublicIp(v6) = t.perform(put_pip("egress-a-pip-v6", IpVersion::V6)).await.unwrap() else { panic!() };
        assert!(v6.ip_address.unwrap().parse::<std::net::Ipv6Addr>().is_ok());
        t.perform(CloudCall::PutNatGateway(NatGatewaySpec {
            name: "egress-a".into(),
            public_ips: vec!["egress-a-pip".into()],
            public_ips_v6: vec!["egress-a-pip-v6".into()],
        }))
        .await
        .unwrap();
        t.perform(register_outbound("egress-a")).await.unwrap();
        let CallOutput::SgwServices(svcs) = t.perform(CloudCall::GetSgwServices).await.unwrap() else { panic!() };
        let e = svcs.iter().find(|s| s.name == "egress-a").unwrap();
        assert_eq!((e.service_type, e.nat_gateway.as_deref(), e.is_default), (ServiceType::Outbound, Some("egress-a"), false));
        assert!(svcs.iter().any(|s| s.name == DEFAULT_NATGW && s.is_default));

        // Disassociation: clear the NAT reference, then echo the NAT with serviceGateway null.
        t.perform(CloudCall::UpdateServices(vec![SgwServiceRequest {
            name: "egress-a".into(),
            service_type: ServiceType::Outbound,
            is_delete: false,
            backend_pools: vec![],
            nat_gateway: NatReference::Clear,
            is_default: None,
        }]))
        .await
        .unwrap();
        let CallOutput::NatGateway(Some(nat)) = t.perform(CloudCall::GetNatGateway { name: "egress-a".into() }).await.unwrap() else {
            panic!()
        };
        assert!(nat.references_service_gateway);
        t.perform(CloudCall::DetachNatGateway { name: "egress-a".into(), raw: nat.raw }).await.unwrap();
        let CallOutput::NatGateway(Some(nat)) = t.perform(CloudCall::GetNatGateway { name: "egress-a".into() }).await.unwrap() else {
            panic!()
        };
        assert!(!nat.references_service_gateway);
        t.perform(unregister("egress-a", ServiceType::Outbound)).await.unwrap();
        t.perform(CloudCall::DeleteNatGateway { name: "egress-a".into() }).await.unwrap();
        t.perform(CloudCall::DeletePublicIp { name: "egress-a-pip".into() }).await.unwrap();
        t.perform(CloudCall::DeletePublicIp { name: "egress-a-pip-v6".into() }).await.unwrap();
        assert_eq!(t.perform(CloudCall::GetNatGateway { name: "egress-a".into() }).await.unwrap(), CallOutput::NatGateway(None));
        let inv = h.inventory();
        assert_eq!(inv, default_only_inventory(&inv));
    }
}

// ------------------------------------------------------------------------ referential rules

#[tokio::test]
async fn load_balancer_before_its_public_ip_is_rejected() {
    let (h, t) = start(EmulatorOptions::default()).await;
    expect_code(t.perform(put_lb(U1)).await, 400, codes::INVALID_RESOURCE_REFERENCE);
    assert_eq!(h.inventory()["load_balancers"], json!([]));
}

#[tokio::test]
async fn nat_gateway_before_its_public_ip_is_rejected() {
    let (h, t) = start(EmulatorOptions::default()).await;
    expect_code(t.perform(put_nat("egress-a")).await, 400, codes::INVALID_RESOURCE_REFERENCE);
    assert_eq!(h.inventory()["nat_gateways"], json!([DEFAULT_NATGW]));
}

#[tokio::test]
async fn a_public_ip_in_use_cannot_be_deleted() {
    let (h, t) = start(EmulatorOptions::default()).await;
    t.perform(put_pip(&format!("{U1}-pip"), IpVersion::V4)).await.unwrap();
    t.perform(put_lb(U1)).await.unwrap();
    expect_code(t.perform(CloudCall::DeletePublicIp { name: format!("{U1}-pip") }).await, 400, codes::PUBLIC_IP_CANNOT_BE_DELETED);
    t.perform(put_pip("egress-a-pip", IpVersion::V4)).await.unwrap();
    t.perform(put_nat("egress-a")).await.unwrap();
    expect_code(t.perform(CloudCall::DeletePublicIp { name: "egress-a-pip".into() }).await, 400, codes::PUBLIC_IP_CANNOT_BE_DELETED);
    // A second LB may not take a PIP already in use.
    let stolen = CloudCall::PutLoadBalancer(LoadBalancerSpec { name: U2.into(), public_ip: format!("{U1}-pip"), rules: vec![] });
    expect_code(t.perform(stolen).await, 400, codes::PUBLIC_IP_IN_USE);
    // In the right order both go.
    t.perform(CloudCall::DeleteLoadBalancer { name: U1.into() }).await.unwrap();
    t.perform(CloudCall::DeletePublicIp { name: format!("{U1}-pip") }).await.unwrap();
    assert!(h.inventory()["public_ips"].get(format!("{U1}-pip")).is_none());
}

#[tokio::test]
async fn registering_before_the_load_balancer_or_nat_exists_is_rejected() {
    let (h, t) = start(EmulatorOptions::default()).await;
    expect_code(t.perform(register_inbound(U1)).await, 400, codes::INVALID_RESOURCE_REFERENCE);
    expect_code(t.perform(register_outbound("egress-a")).await, 400, codes::INVALID_RESOURCE_REFERENCE);
    assert_eq!(h.inventory()["sgw_services"], json!({ DEFAULT_NATGW: "Outbound" }));
}

#[tokio::test]
async fn unregistering_a_service_with_mapped_addresses_is_rejected() {
    let (h, t) = start(EmulatorOptions::default()).await;
    t.perform(put_pip(&format!("{U1}-pip"), IpVersion::V4)).await.unwrap();
    t.perform(put_lb(U1)).await.unwrap();
    t.perform(register_inbound(U1)).await.unwrap();
    t.perform(publish(vec![loc("10.224.0.4", FullUpdate, &[("10.244.1.7", &[U1])])])).await.unwrap();
    expect_code(t.perform(unregister(U1, ServiceType::Inbound)).await, 400, codes::OVERLAY_MAPPINGS);
    assert_eq!(h.inventory()["sgw_services"][U1], "Inbound");
    // After the drain it goes.
    t.perform(publish(vec![loc("10.224.0.4", PartialUpdate, &[("10.244.1.7", &[])])])).await.unwrap();
    t.perform(unregister(U1, ServiceType::Inbound)).await.unwrap();
    assert!(h.inventory()["sgw_services"].get(U1).is_none());
}

#[tokio::test]
async fn duplicate_locations_in_one_request_are_rejected() {
    let (h, t) = start(EmulatorOptions::default()).await;
    let dup = publish(vec![loc("10.224.0.4", FullUpdate, &[]), loc("10.224.0.4", PartialUpdate, &[])]);
    expect_code(t.perform(dup).await, 400, codes::DUPLICATE_LOCATIONS);
    // Duplicates by canonical IP too.
    let dup6 = publish(vec![loc("fd00:10:224::5", FullUpdate, &[]), loc("FD00:10:224:0::5", PartialUpdate, &[])]);
    expect_code(t.perform(dup6).await, 400, codes::DUPLICATE_LOCATIONS);
    assert_eq!(h.inventory()["address_locations"], json!({}));
}

#[tokio::test]
async fn publishing_an_address_for_an_unregistered_service_is_rejected() {
    let (h, t) = start(EmulatorOptions::default()).await;
    t.perform(put_pip(&format!("{U1}-pip"), IpVersion::V4)).await.unwrap();
    t.perform(put_lb(U1)).await.unwrap();
    // LB exists, registration not yet done.
    expect_code(
        t.perform(publish(vec![loc("10.224.0.4", FullUpdate, &[("10.244.1.7", &[U1])])])).await,
        400,
        codes::SERVICE_NOT_REGISTERED,
    );
    assert_eq!(h.inventory()["address_locations"], json!({}));
}

#[tokio::test]
async fn the_default_service_and_default_natgw_are_never_touched() {
    let (h, t) = start(EmulatorOptions::default()).await;
    let before = h.inventory();
    assert_eq!(before["sgw_services"], json!({ DEFAULT_NATGW: "Outbound" }));
    assert_eq!(before["nat_gateways"], json!([DEFAULT_NATGW]));
    assert!(before["public_ips"][DEFAULT_NATGW_PIP].is_string());
    expect_code(t.perform(unregister(DEFAULT_NATGW, ServiceType::Outbound)).await, 400, codes::MULTIPLE_DEFAULT);
    expect_code(
        t.perform(CloudCall::UpdateServices(vec![SgwServiceRequest {
            name: DEFAULT_NATGW.into(),
            service_type: ServiceType::Outbound,
            is_delete: false,
            backend_pools: vec![],
            nat_gateway: NatReference::Clear,
            is_default: Some(true),
        }]))
        .await,
        400,
        codes::MULTIPLE_DEFAULT,
    );
    // A second default service is refused.
    t.perform(put_pip("egress-b-pip", IpVersion::V4)).await.unwrap();
    t.perform(put_nat("egress-b")).await.unwrap();
    expect_code(
        t.perform(CloudCall::UpdateServices(vec![SgwServiceRequest {
            name: "egress-b".into(),
            service_type: ServiceType::Outbound,
            is_delete: false,
            backend_pools: vec![],
            nat_gateway: NatReference::Set("egress-b".into()),
            is_default: Some(true),
        }]))
        .await,
        400,
        codes::MULTIPLE_DEFAULT,
    );
    expect_code(t.perform(CloudCall::DeleteNatGateway { name: DEFAULT_NATGW.into() }).await, 409, codes::RP_OWNED);
    expect_code(t.perform(put_nat(DEFAULT_NATGW)).await, 409, codes::RP_OWNED);
    expect_code(t.perform(put_pip(DEFAULT_NATGW_PIP, IpVersion::V6)).await, 409, codes::RP_OWNED);
    let e = t.perform(CloudCall::DeletePublicIp { name: DEFAULT_NATGW_PIP.into() }).await.unwrap_err();
    assert_eq!(e.status, 409, "{e}");
    let after = h.inventory();
    assert_eq!(after["sgw_services"][DEFAULT_NATGW], before["sgw_services"][DEFAULT_NATGW]);
    assert_eq!(after["public_ips"][DEFAULT_NATGW_PIP], before["public_ips"][DEFAULT_NATGW_PIP]);
    assert!(after["nat_gateways"].as_array().unwrap().contains(&json!(DEFAULT_NATGW)));
    // Its PIP shows as attached, so an orphan sweep skips it.
    let CallOutput::PublicIps(ips) = t.perform(CloudCall::ListPublicIps).await.unwrap() else { panic!() };
    assert!(ips.iter().any(|p| p.name == DEFAULT_NATGW_PIP && p.attached));
}

#[tokio::test]
async fn without_seeding_there_is_no_default_natgw() {
    let (h, _t) = start(EmulatorOptions { seed_default_natgw: false, ..Default::default() }).await;
    assert_eq!(
        h.inventory(),
        json!({"address_locations": {}, "load_balancers": [], "nat_gateways": [], "public_ips": {}, "sgw_services": {}})
    );
}

// ------------------------------------------------------------------------ address-location semantics

async fn registered(
    options: EmulatorOptions,
    uids: &[&str],
) -> (difftracker_simulation::emulator::EmulatorHandle, difftracker_runtime::transport::ArmTransport) {
    let (h, t) = start(options).await;
    for u in uids {
        t.perform(put_pip(&format!("{u}-pip"), IpVersion::V4)).await.unwrap();
        t.perform(put_lb(u)).await.unwrap();
        t.perform(register_inbound(u)).await.unwrap();
    }
    (h, t)
}

#[tokio::test]
async fn full_update_partial_update_and_empty_lists() {
    let (h, t) = registered(EmulatorOptions::default(), &[U1, U2]).await;
    let locs = || h.inventory()["address_locations"].clone();
    // FullUpdate of a new node: the listed addresses are its content; an empty service list is no address.
    t.perform(publish(vec![loc("10.224.0.4", FullUpdate, &[("10.244.1.7", &[U1]), ("10.244.1.8", &[U1, U2]), ("10.244.1.9", &[])])]))
        .await
        .unwrap();
    assert_eq!(locs(), json!({"10.224.0.4": {"10.244.1.7": [U1], "10.244.1.8": [U2, U1]}}));
    // PartialUpdate: only listed addresses change; the services list replaces, never merges.
    t.perform(publish(vec![loc("10.224.0.4", PartialUpdate, &[("10.244.1.8", &[U2]), ("10.244.1.10", &[U1])])])).await.unwrap();
    assert_eq!(locs(), json!({"10.224.0.4": {"10.244.1.10": [U1], "10.244.1.7": [U1], "10.244.1.8": [U2]}}));
    // services [] removes one address.
    t.perform(publish(vec![loc("10.224.0.4", PartialUpdate, &[("10.244.1.7", &[])])])).await.unwrap();
    assert_eq!(locs(), json!({"10.224.0.4": {"10.244.1.10": [U1], "10.244.1.8": [U2]}}));
    // FullUpdate of a known node replaces everything.
    t.perform(publish(vec![
        loc("10.224.0.4", FullUpdate, &[("10.244.1.11", &[U2])]),
        loc("10.224.0.5", FullUpdate, &[("10.244.2.3", &[U1])]),
    ]))
    .await
    .unwrap();
    assert_eq!(locs(), json!({"10.224.0.4": {"10.244.1.11": [U2]}, "10.224.0.5": {"10.244.2.3": [U1]}}));
    // addresses [] with PartialUpdate removes the whole location.
    t.perform(publish(vec![loc("10.224.0.4", PartialUpdate, &[])])).await.unwrap();
    assert_eq!(locs(), json!({"10.224.0.5": {"10.244.2.3": [U1]}}));
    // The GET answers the same content in the wire's flat shape.
    let CallOutput::AddressLocations(al) = t.perform(CloudCall::GetAddressLocations).await.unwrap() else { panic!() };
    assert_eq!(
        al,
        vec![AddressLocation {
            location: "10.224.0.5".into(),
            addresses: vec![AddressUpdate { address: "10.244.2.3".into(), services: vec![U1.into()] }]
        }]
    );
}

#[tokio::test]
async fn ipv6_is_stored_canonical_and_families_must_match() {
    let (h, t) = registered(EmulatorOptions { uppercase_ipv6: true, ..Default::default() }, &[U1]).await;
    t.perform(publish(vec![loc("FD00:10:224:0::5", FullUpdate, &[("fd00:10:244:2:0:0:0:9", &[U1])])])).await.unwrap();
    assert_eq!(h.inventory()["address_locations"], json!({"fd00:10:224::5": {"fd00:10:244:2::9": [U1]}}));
    let CallOutput::AddressLocations(al) = t.perform(CloudCall::GetAddressLocations).await.unwrap() else { panic!() };
    assert_eq!(al[0].location, "FD00:10:224::5");
    assert_eq!(al[0].addresses[0].address, "FD00:10:244:2::9");
    expect_code(
        t.perform(publish(vec![loc("10.224.0.4", FullUpdate, &[("fd00:10:244:2::10", &[U1])])])).await,
        400,
        codes::ADDRESS_FAMILY_MISMATCH,
    );
}

#[tokio::test]
async fn lists_are_paged_with_next_link_and_followed() {
    let (_h, t) = registered(EmulatorOptions { page_size: Some(1), ..Default::default() }, &[U1, U2]).await;
    let CallOutput::Names(lbs) = t.perform(CloudCall::ListLoadBalancers).await.unwrap() else { panic!() };
    assert_eq!(lbs, vec![U2.to_string(), U1.to_string()]);
    let CallOutput::PublicIps(ips) = t.perform(CloudCall::ListPublicIps).await.unwrap() else { panic!() };
    assert_eq!(ips.len(), 3);
    let CallOutput::SgwServices(s) = t.perform(CloudCall::GetSgwServices).await.unwrap() else { panic!() };
    assert_eq!(s.len(), 3);
}

// ------------------------------------------------------------------------ raw HTTP

#[tokio::test]
async fn inventory_endpoint_has_the_documented_shape() {
    let (h, t) = registered(EmulatorOptions::default(), &[U1]).await;
    t.perform(publish(vec![loc("10.224.0.4", FullUpdate, &[("10.244.1.7", &[U1])])])).await.unwrap();
    let (status, head, body) = raw_http(h.addr(), "GET", "/_emulator/inventory", None).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    let ip = v["public_ips"][format!("{U1}-pip")].as_str().unwrap().to_string();
    let natgw_ip = v["public_ips"][DEFAULT_NATGW_PIP].as_str().unwrap().to_string();
    assert_eq!(
        v,
        json!({
            "address_locations": {"10.224.0.4": {"10.244.1.7": [U1]}},
            "load_balancers": [U1],
            "nat_gateways": [DEFAULT_NATGW],
            "public_ips": {format!("{U1}-pip"): ip, DEFAULT_NATGW_PIP: natgw_ip},
            "sgw_services": {U1: "Inbound", DEFAULT_NATGW: "Outbound"},
        })
    );
    // Stable key order: the text is sorted at every level.
    assert!(body.find("\"address_locations\"").unwrap() < body.find("\"load_balancers\"").unwrap());
    assert!(body.find("\"nat_gateways\"").unwrap() < body.find("\"public_ips\"").unwrap());
    assert!(body.find("\"public_ips\"").unwrap() < body.find("\"sgw_services\"").unwrap());
}

#[tokio::test]
async fn paths_match_case_insensitively_and_errors_are_arm_shaped() {
    let (h, _t) = start(EmulatorOptions::default()).await;
    let a = h.addr();
    let scope = h.emulator().options().scope.clone();
    let (sub, rg) = (scope.subscription.clone(), scope.resource_group.clone());
    let net = scope.provider_path();
    let (status, _, body) = raw_http(
        a,
        "GET",
        &format!(
            "/SUBSCRIPTIONS/{sub}/RESOURCEGROUPS/{}/PROVIDERS/microsoft.network/NATGATEWAYS?api-version=2025-05-01",
            rg.to_uppercase()
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["value"][0]["name"], DEFAULT_NATGW);
    assert_eq!(v["value"][0]["type"], "Microsoft.Network/natGateways");
    assert!(v["value"][0]["properties"]["publicIpAddresses"].is_array());

    let (status, head, body) = raw_http(a, "GET", &format!("{net}/natGateways/nope?api-version=2025-05-01"), None).await;
    assert_eq!(status, 404);
    assert!(head.contains("x-ms-error-code: resourcenotfound"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "ResourceNotFound");
    assert!(v["error"]["message"].is_string());

    let (status, _, body) = raw_http(a, "GET", &format!("{net}/loadBalancers"), None).await;
    assert_eq!(status, 400);
    assert!(body.contains("MissingApiVersionParameter"));

    let (status, _, body) = raw_http(a, "PUT", &format!("{net}/publicIPAddresses/p?api-version=2025-05-01"), Some("{not json")).await;
    assert_eq!(status, 400);
    assert!(body.contains("InvalidRequestContent"));

    let (status, _, body) =
        raw_http(a, "POST", &format!("{net}/serviceGateways/other/updateServices?api-version=2025-05-01"), Some("{}")).await;
    assert_eq!(status, 404);
    assert!(body.contains("ResourceNotFound"));

    // A 200 with a JSON status for the ServiceGateway POSTs in synchronous mode.
    let (status, _, body) = raw_http(
        a,
        "POST",
        &format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/serviceGateways/ServiceGateway/UpdateAddressLocations?api-version=2025-05-01"
        ),
        Some(r#"{"action":"PartialUpdate","addressLocations":[]}"#),
    )
    .await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"status": "Succeeded"})));
}

#[tokio::test]
async fn polling_mode_hands_out_absolute_polling_urls() {
    let (h, _t) = start(polling(PollHeaders::Both)).await;
    let scope = h.emulator().options().scope.clone();
    let (status, head, body) = raw_http(
        h.addr(),
        "PUT",
        &format!("{}/publicIPAddresses/p?api-version=2025-05-01", scope.provider_path()),
        Some(r#"{"location":"eastus2","properties":{"publicIPAddressVersion":"IPv4"}}"#),
    )
    .await;
    assert_eq!(status, 201);
    assert!(body.contains("\"provisioningState\":\"Updating\""), "{body}");
    let op = head.lines().find_map(|l| l.strip_prefix("azure-asyncoperation: ")).expect("Azure-AsyncOperation").to_string();
    assert!(
        op.starts_with(&format!("http://{}/subscriptions/{}/providers/microsoft.network/locations/", h.addr(), scope.subscription)),
        "{op}"
    );
    let path = op.split_once(&h.addr().to_string()).unwrap().1.to_string();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (_, _, b) = raw_http(h.addr(), "GET", &path, None).await;
        statuses.push(serde_json::from_str::<Value>(&b).unwrap()["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses, ["InProgress", "InProgress", "Succeeded"]);
    // The operation belongs to its subscription.
    let other = path.replace(&scope.subscription, "11111111-2222-3333-4444-555555555555");
    let (status, _, b) = raw_http(h.addr(), "GET", &other, None).await;
    assert_eq!((status, serde_json::from_str::<Value>(&b).unwrap()["error"]["code"].as_str()), (404, Some("SubscriptionNotFound")));
}
