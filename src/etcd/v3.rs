//! The etcd v3 JSON gateway, as request bodies and response parsers: lease grant, keepalive and
//! revoke, put under a lease, delete, authenticate, and gateway errors. No I/O here, so every
//! shape is tested against answers captured from a real etcd 3.4 (`tests/fixtures/`).
//!
//! JSON rules of the gateway: keys and values are base64; int64 fields (lease IDs, TTLs) are
//! strings; fields holding zero are left out, so a keepalive answer without `TTL` means the
//! lease is gone.

use super::Fault;
use serde_json::json;

use crate::json::{self, Value};

/// Path of each call under the API prefix (`/v3` on etcd 3.4+, `/v3beta` on 3.3).
pub const GRANT: &str = "/lease/grant";
pub const KEEPALIVE: &str = "/lease/keepalive";
pub const REVOKE: &str = "/lease/revoke";
pub const PUT: &str = "/kv/put";
pub const DELETE: &str = "/kv/deleterange";
pub const AUTHENTICATE: &str = "/auth/authenticate";

/// `{"TTL": 10}`
pub fn grant(ttl_secs: u64) -> String {
    json!({ "TTL": ttl_secs }).to_string()
}

/// `{"key": b64, "value": b64, "lease": "ID"}`
pub fn put(key: &str, value: &str, lease: i64) -> String {
    json!({
        "key": base64(key.as_bytes()),
        "value": base64(value.as_bytes()),
        "lease": lease.to_string(),
    })
    .to_string()
}

/// `{"ID": "ID"}`, for keepalive and revoke.
pub fn lease_id(lease: i64) -> String {
    json!({ "ID": lease.to_string() }).to_string()
}

/// `{"key": b64}`: deletes exactly that key.
pub fn delete(key: &str) -> String {
    json!({ "key": base64(key.as_bytes()) }).to_string()
}

/// `{"name": user, "password": password}`
pub fn authenticate(user: &str, password: &str) -> String {
    json!({ "name": user, "password": password }).to_string()
}

/// The granted lease ID.
pub fn parse_grant(status: u16, body: &str) -> Result<i64, Fault> {
    let v = parse_ok(status, body)?;
    if let Some(e) = json::str_at(&v, "error").filter(|e| !e.is_empty()) {
        return Err(Fault::Rejected(e.to_owned()));
    }
    int_field(&v, "ID").filter(|id| *id != 0).ok_or_else(|| {
        Fault::Malformed(format!("lease grant answer without an ID: {}", clip(body)))
    })
}

/// The remaining TTL after a keepalive; [`Fault::LeaseGone`] when etcd no longer knows it.
pub fn parse_keepalive(status: u16, body: &str) -> Result<i64, Fault> {
    let v = parse_ok(status, body)?;
    // The gateway streams: one `{"result": {...}}` (or `{"error": {...}}`) per message.
    if let Some(err) = v.get("error") {
        return Err(classify_error(status, err));
    }
    let result = v.get("result").ok_or_else(|| {
        Fault::Malformed(format!("keepalive answer without a result: {}", clip(body)))
    })?;
    match int_field(result, "TTL") {
        Some(ttl) if ttl > 0 => Ok(ttl),
        // Absent (zero) or negative: the lease expired or was revoked.
        _ => Err(Fault::LeaseGone),
    }
}

/// Success of put, delete and revoke. Revoking a lease that is already gone counts as done.
pub fn parse_done(status: u16, body: &str) -> Result<(), Fault> {
    parse_ok(status, body).map(|_| ())
}

/// The auth token.
pub fn parse_token(status: u16, body: &str) -> Result<String, Fault> {
    let v = parse_ok(status, body)?;
    json::str_at(&v, "token")
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Fault::Malformed("authenticate answer without a token".into()))
}

/// Parses a body as JSON; a non-2xx status becomes the fault the gateway's error describes.
fn parse_ok(status: u16, body: &str) -> Result<Value, Fault> {
    let v = json::parse(body).map_err(|e| {
        if (200..300).contains(&status) {
            Fault::Malformed(format!("answer is {e}: {}", clip(body)))
        } else {
            status_fault(status, body)
        }
    })?;
    if (200..300).contains(&status) {
        Ok(v)
    } else {
        Err(classify_error(status, &v))
    }
}

/// A non-JSON error answer (a proxy, or not etcd at all).
fn status_fault(status: u16, body: &str) -> Fault {
    if status == 503 || status == 502 || status == 504 {
        Fault::Unavailable(format!("HTTP {status}"))
    } else {
        Fault::Rejected(format!("HTTP {status}: {}", clip(body)))
    }
}

/// Sorts a gateway error (`{"error": "...", "code": N, "message": "..."}`) into what the
/// registrar acts on. gRPC codes: 5 not found, 14 unavailable, 16 unauthenticated.
fn classify_error(status: u16, err: &Value) -> Fault {
    let message = ["message", "error"]
        .iter()
        .find_map(|k| json::str_at(err, k))
        .unwrap_or("")
        .to_owned();
    let code = err.get("code").and_then(json::int64);
    if message.contains("lease not found") {
        Fault::LeaseGone
    } else if code == Some(16) || status == 401 || message.contains("invalid auth token") {
        Fault::BadToken(message)
    } else if code == Some(14) || status == 503 {
        Fault::Unavailable(message)
    } else if message.is_empty() {
        Fault::Rejected(format!("HTTP {status}"))
    } else {
        Fault::Rejected(message)
    }
}

/// An int64 field, which the gateway writes as a string (numbers accepted too).
fn int_field(v: &Value, name: &str) -> Option<i64> {
    json::int64(v.get(name)?)
}

/// At most 200 characters of a body, for error messages.
fn clip(body: &str) -> String {
    let mut s: String = body.chars().take(200).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    s
}

/// Standard base64 with padding (RFC 4648), as the gateway expects for bytes fields.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANT_OK: &str = include_str!("../../tests/fixtures/v3_grant.json");
    const KEEPALIVE_OK: &str = include_str!("../../tests/fixtures/v3_keepalive.json");
    const KEEPALIVE_GONE: &str = include_str!("../../tests/fixtures/v3_keepalive_gone.json");
    const PUT_NO_LEASE: &str = include_str!("../../tests/fixtures/v3_put_lease_not_found.json");
    const AUTH_OK: &str = include_str!("../../tests/fixtures/v3_authenticate.json");
    const AUTH_BAD_TOKEN: &str = include_str!("../../tests/fixtures/v3_invalid_token.json");

    #[test]
    fn base64_matches_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
        assert_eq!(base64(b"/app/servers/web-1"), "L2FwcC9zZXJ2ZXJzL3dlYi0x");
    }

    #[test]
    fn requests_use_strings_for_int64_and_base64_for_bytes() {
        assert_eq!(
            put("/a", "1.2.3.4:80", 7587),
            r#"{"key":"L2E=","lease":"7587","value":"MS4yLjMuNDo4MA=="}"#
        );
        assert_eq!(lease_id(42), r#"{"ID":"42"}"#);
        assert_eq!(grant(10), r#"{"TTL":10}"#);
    }

    #[test]
    fn parses_real_answers() {
        assert_eq!(parse_grant(200, GRANT_OK), Ok(2324035550560058885));
        assert_eq!(parse_keepalive(200, KEEPALIVE_OK), Ok(10));
        assert_eq!(parse_keepalive(200, KEEPALIVE_GONE), Err(Fault::LeaseGone));
        assert_eq!(parse_done(404, PUT_NO_LEASE), Err(Fault::LeaseGone));
        assert_eq!(parse_token(200, AUTH_OK).unwrap(), "VEjdQUZmqMfzaKOE.29");
        assert!(matches!(
            parse_done(401, AUTH_BAD_TOKEN),
            Err(Fault::BadToken(_))
        ));
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for (status, body) in [
            (200, ""),
            (200, "{"),
            (200, "[]"),
            (200, "null"),
            (200, r#"{"ID": true}"#),
            (200, r#"{"ID": "x"}"#),
            (200, r#"{"result": 5}"#),
            (500, "<html>oops</html>"),
            (200, "\u{0}\u{1}binary"),
        ] {
            assert!(parse_grant(status, body).is_err(), "{body:?}");
            assert!(parse_keepalive(status, body).is_err(), "{body:?}");
            assert!(parse_token(status, body).is_err(), "{body:?}");
        }
        assert!(matches!(parse_done(503, "no"), Err(Fault::Unavailable(_))));
    }

    /// A small deterministic fuzz: mutations of real answers never panic.
    #[test]
    fn parsers_survive_random_input() {
        let mut m = crate::fuzz::Mutator::new(0x9e37_79b9_7f4a_7c15);
        let seeds = [
            GRANT_OK,
            KEEPALIVE_OK,
            KEEPALIVE_GONE,
            PUT_NO_LEASE,
            AUTH_OK,
            AUTH_BAD_TOKEN,
        ];
        for round in 0..20_000 {
            let text = m.mutate(seeds[round % seeds.len()].as_bytes());
            let status = [200u16, 400, 401, 404, 500, 503][(m.next() % 6) as usize];
            let _ = parse_grant(status, &text);
            let _ = parse_keepalive(status, &text);
            let _ = parse_done(status, &text);
            let _ = parse_token(status, &text);
        }
    }
}
