//! Helpers shared by the emulator tests: an emulator on loopback with a transport pointed at it,
//! call builders, and a raw HTTP/1.1 client for what the transport does not expose.
#![allow(dead_code)]

use difftracker_engine::io::*;
use difftracker_runtime::transport::{ArmTransport, TransportOptions};
use difftracker_simulation::emulator::{serve, EmulatorHandle, EmulatorOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn start(options: EmulatorOptions) -> (EmulatorHandle, ArmTransport) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let handle = serve(listener, options).await.expect("serve");
    let transport = ArmTransport::unauthenticated(handle.tenant_config(), TransportOptions::fast_for_tests()).expect("transport");
    (handle, transport)
}

pub fn put_pip(name: &str, version: IpVersion) -> CloudCall {
    CloudCall::PutPublicIp { name: name.into(), version }
}

pub fn put_lb(uid: &str) -> CloudCall {
    CloudCall::PutLoadBalancer(LoadBalancerSpec {
        name: uid.into(),
        public_ip: format!("{uid}-pip"),
        rules: vec![LbRule { protocol: TransportProtocol::Tcp, frontend_port: 80, backend_port: 8080, idle_timeout_minutes: 4 }],
    })
}

pub fn put_nat(id: &str) -> CloudCall {
    CloudCall::PutNatGateway(NatGatewaySpec { name: id.into(), public_ips: vec![format!("{id}-pip")], public_ips_v6: vec![] })
}

pub fn register_inbound(uid: &str) -> CloudCall {
    CloudCall::UpdateServices(vec![SgwServiceRequest {
        name: uid.into(),
        service_type: ServiceType::Inbound,
        is_delete: false,
        backend_pools: vec![BackendPool { load_balancer: uid.into(), pool: uid.into() }],
        nat_gateway: NatReference::Absent,
        is_default: None,
    }])
}

pub fn detach_pool(uid: &str) -> CloudCall {
    CloudCall::UpdateServices(vec![SgwServiceRequest {
        name: uid.into(),
        service_type: ServiceType::Inbound,
        is_delete: false,
        backend_pools: vec![],
        nat_gateway: NatReference::Absent,
        is_default: None,
    }])
}

pub fn register_outbound(id: &str) -> CloudCall {
    CloudCall::UpdateServices(vec![SgwServiceRequest {
        name: id.into(),
        service_type: ServiceType::Outbound,
        is_delete: false,
        backend_pools: vec![],
        nat_gateway: NatReference::Set(id.into()),
        is_default: None,
    }])
}

pub fn unregister(name: &str, service_type: ServiceType) -> CloudCall {
    CloudCall::UpdateServices(vec![SgwServiceRequest {
        name: name.into(),
        service_type,
        is_delete: true,
        backend_pools: vec![],
        nat_gateway: NatReference::Absent,
        is_default: None,
    }])
}

pub fn loc(node: &str, action: UpdateAction, addrs: &[(&str, &[&str])]) -> LocationUpdate {
    LocationUpdate {
        location: node.into(),
        action,
        addresses: addrs
            .iter()
            .map(|(a, s)| AddressUpdate { address: a.to_string(), services: s.iter().map(|x| x.to_string()).collect() })
            .collect(),
    }
}

pub fn publish(locs: Vec<LocationUpdate>) -> CloudCall {
    CloudCall::UpdateAddressLocations(locs)
}

/// Expects an HTTP error with this status and ARM code.
pub fn expect_code(r: Result<CallOutput, CallError>, status: u16, code: &str) -> CallError {
    let e = r.expect_err(&format!("expected {status} {code}"));
    assert_eq!((e.status, e.code.as_str()), (status, code), "{e}");
    e
}

/// A raw HTTP/1.1 exchange: (status, lower-cased header block, body).
pub async fn raw_http(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    raw_http_with(addr, method, path, &[], body).await
}

/// A raw HTTP/1.1 exchange with extra request headers (a `Host` among them replaces the default).
pub async fn raw_http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = body.unwrap_or("");
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let req = format!("{head}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Undo chunked transfer encoding if the server used it.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut r = rest;
        while let Some((len, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            r = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    (status, head.to_ascii_lowercase(), body)
}

/// The value of a header in a lower-cased header block from [`raw_http`].
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{}: ", name.to_ascii_lowercase());
    head.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(str::trim)
}
