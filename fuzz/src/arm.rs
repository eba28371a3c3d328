//! The ARM/NRP response parsers of the transport (`difftracker_runtime::transport::wire`) and its
//! `Retry-After` reading: whatever a peer answers is a value or a short error, never a panic.
//!
//! The first byte picks the parser, the rest is the response body (or, for `Retry-After`, the
//! header values).

use difftracker_engine::io::IpVersion;
use difftracker_runtime::transport::client::retry_after;
use difftracker_runtime::transport::wire;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// What a parser's error may hold: a description and at most a bounded quote of the input.
pub const MAX_ERROR_BYTES: usize = 1024;

pub fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    if selector % 8 == 7 {
        return retry_after_headers(body);
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return };
    // List responses hand the parsers their `value` array; a body without one is a single item.
    let items: Vec<Value> = match value.get("value") {
        Some(Value::Array(a)) => a.clone(),
        _ => vec![value.clone()],
    };
    let error = match selector % 8 {
        0 => wire::parse_public_ip(&value, None).err(),
        1 => wire::parse_public_ip(&value, Some(("fallback-pip", IpVersion::V6))).err(),
        2 => wire::parse_names(&items).err(),
        3 => wire::parse_nat_gateway(&value, String::from_utf8_lossy(body).into_owned()).err(),
        4 => wire::parse_sgw_services(&items).err(),
        5 => wire::parse_address_locations(&items).err(),
        _ => {
            if let Some((code, _message)) = wire::arm_error_of(&value) {
                // A code is an identifier-like string ARM chose; the transport bounds both later,
                // here it must only be what the body said.
                let found = value.get("error").and_then(|e| e.get("code")).or(value.get("code"));
                assert!(found.and_then(Value::as_str).is_some(), "arm_error_of invented a code {code:?}");
            }
            wire::detach_nat_body(&String::from_utf8_lossy(body)).err()
        }
    };
    if let Some(e) = error {
        assert!(e.len() <= MAX_ERROR_BYTES, "a parser error of {} bytes: {}…", e.len(), &e[..e.floor_char_boundary(200)]);
    }
}

/// `retry-after-ms`, `x-ms-retry-after-ms` and `Retry-After` from arbitrary header bytes.
fn retry_after_headers(body: &[u8]) {
    let mut headers = HeaderMap::new();
    let names = ["retry-after-ms", "x-ms-retry-after-ms", "retry-after"];
    for (name, value) in names.iter().zip(body.split(|&b| b == b'\n')) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let _ = retry_after(&headers);
}
