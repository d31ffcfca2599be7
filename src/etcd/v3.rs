//! The etcd v3 JSON gateway, as request bodies and response parsers: lease grant, keepalive and
//! revoke, put under a lease (alone or in a transaction), delete, range reads, watch streams,
//! the member status, authenticate, and gateway errors. No I/O here, so every shape is tested
//! against answers captured from a real etcd 3.4 (`tests/fixtures/`) and against garbage.
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
pub const TXN: &str = "/kv/txn";
pub const DELETE: &str = "/kv/deleterange";
pub const AUTHENTICATE: &str = "/auth/authenticate";
pub const RANGE: &str = "/kv/range";
pub const WATCH: &str = "/watch";
pub const STATUS: &str = "/maintenance/status";

/// One key-value pair as etcd stores it (bytes: keys and values need not be UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// The revision the key was created at (0 where etcd does not say).
    pub create_revision: i64,
}

/// One page of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The store's revision the page was read at.
    pub revision: i64,
    pub kvs: Vec<Kv>,
    /// More keys follow in the range.
    pub more: bool,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    /// The key, and the revision of the delete.
    Delete(Vec<u8>, i64),
}

/// One message of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch exists now; events from its start revision follow.
    Created,
    /// Changes, in revision order (an empty list is a progress notification).
    Events(Vec<Event>),
    /// etcd ended the watch: the start revision was compacted away
    /// (`compact_revision` is the oldest left), or another reason.
    Canceled {
        compact_revision: Option<i64>,
        reason: String,
    },
}

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

/// The end of the range of every key that starts with `prefix` (etcd's `WithPrefix`): the
/// prefix with its last byte below 0xff incremented; for no such byte, `\0` (to the end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range read of `[key, end)` at `revision` (0: the latest), at most `limit` keys.
pub fn range(key: &[u8], end: &[u8], revision: i64, limit: u32, keys_only: bool) -> String {
    let mut v = json!({
        "key": base64(key),
        "range_end": base64(end),
        "limit": limit.to_string(),
    });
    if revision > 0 {
        v["revision"] = revision.to_string().into();
    }
    if keys_only {
        v["keys_only"] = true.into();
    }
    v.to_string()
}

/// A watch of `[key, end)` from `start_revision`.
pub fn watch(key: &[u8], end: &[u8], start_revision: i64) -> String {
    json!({
        "create_request": {
            "key": base64(key),
            "range_end": base64(end),
            "start_revision": start_revision.to_string(),
        }
    })
    .to_string()
}

/// Several watches on one stream: their create requests one after the other in the body. The
/// gateway reads each in turn and etcd numbers them 0, 1, 2, ... in that order (its
/// `watch_id`), so the messages of watch `i` carry `watch_id` `i`.
pub fn watch_many(watches: &[(&[u8], &[u8], i64)]) -> String {
    watches
        .iter()
        .map(|(key, end, start)| watch(key, end, *start))
        .collect()
}

/// Puts every `(key, value)` under `lease` in one transaction: one revision, all or none.
pub fn put_all(puts: &[(&str, &str)], lease: i64) -> String {
    let ops: Vec<serde_json::Value> = puts
        .iter()
        .map(|(key, value)| {
            json!({ "request_put": {
                "key": base64(key.as_bytes()),
                "value": base64(value.as_bytes()),
                "lease": lease.to_string(),
            }})
        })
        .collect();
    json!({ "success": ops }).to_string()
}

/// A transaction that puts `key = value` (under `lease`; 0 for none) only if the key does not
/// exist (its create revision is 0).
pub fn put_if_absent(key: &str, value: &str, lease: i64) -> String {
    let key64 = base64(key.as_bytes());
    json!({
        "compare": [{ "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
        "success": [{ "request_put": {
            "key": key64,
            "value": base64(value.as_bytes()),
            "lease": lease.to_string(),
        }}],
    })
    .to_string()
}

/// Whether a transaction's compare held (`succeeded`; etcd leaves a false out).
pub fn parse_succeeded(status: u16, body: &str) -> Result<bool, Fault> {
    let v = parse_ok(status, body)?;
    match v.get("succeeded") {
        None | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(_) => Err(Fault::Malformed(format!(
            "transaction answer: succeeded is not a boolean: {}",
            clip(body)
        ))),
    }
}

/// Parses a range answer.
pub fn parse_range(status: u16, body: &str) -> Result<Page, Fault> {
    let v = parse_ok(status, body)?;
    let revision = v
        .get("header")
        .and_then(|h| int_field(h, "revision"))
        .filter(|r| *r > 0)
        .ok_or_else(|| {
            Fault::Malformed(format!("range answer without a revision: {}", clip(body)))
        })?;
    let kvs = match v.get("kvs") {
        None => Vec::new(),
        Some(Value::Array(list)) => list.iter().map(parse_kv).collect::<Result<_, _>>()?,
        Some(_) => return Err(Fault::Malformed("range answer: kvs is not a list".into())),
    };
    let more = match v.get("more") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Fault::Malformed(
                "range answer: more is not a boolean".into(),
            ));
        }
    };
    Ok(Page {
        revision,
        kvs,
        more,
    })
}

/// Parses one line of a watch stream.
pub fn parse_watch(line: &str) -> Result<WatchMessage, Fault> {
    parse_watch_tagged(line).map(|(_, message)| message)
}

/// Parses one line of a watch stream, with the `watch_id` it is for (0 when absent: etcd
/// leaves out zero values).
pub fn parse_watch_tagged(line: &str) -> Result<(i64, WatchMessage), Fault> {
    let v = json::parse(line).map_err(|e| Fault::Malformed(format!("watch message is {e}")))?;
    if let Some(err) = v.get("error") {
        return Err(classify_error(0, err));
    }
    let result = v.get("result").ok_or_else(|| {
        Fault::Malformed(format!("watch message without a result: {}", clip(line)))
    })?;
    // etcd leaves the id out for watch 0; anything there must be a number.
    let id = match result.get("watch_id") {
        None => 0,
        Some(v) => json::int64(v)
            .ok_or_else(|| Fault::Malformed(format!("watch_id is not a number: {}", clip(line))))?,
    };
    parse_watch_result(result).map(|message| (id, message))
}

fn parse_watch_result(result: &Value) -> Result<WatchMessage, Fault> {
    if result.get("canceled").and_then(Value::as_bool) == Some(true) {
        return Ok(WatchMessage::Canceled {
            compact_revision: int_field(result, "compact_revision").filter(|r| *r > 0),
            reason: json::str_at(result, "cancel_reason")
                .unwrap_or("")
                .to_owned(),
        });
    }
    let mut events = Vec::new();
    match result.get("events") {
        None => {}
        Some(Value::Array(list)) => {
            for e in list {
                let kv = e
                    .get("kv")
                    .ok_or_else(|| Fault::Malformed("watch event without a kv".into()))?;
                let kv = parse_kv(kv)?;
                match json::str_at(e, "type") {
                    None | Some("PUT") => events.push(Event::Put(kv)),
                    Some("DELETE") => events.push(Event::Delete(kv.key, kv.mod_revision)),
                    Some(other) => {
                        return Err(Fault::Malformed(format!("watch event of type {other:?}")));
                    }
                }
            }
        }
        Some(_) => {
            return Err(Fault::Malformed(
                "watch message: events is not a list".into(),
            ));
        }
    }
    if events.is_empty() && result.get("created").and_then(Value::as_bool) == Some(true) {
        return Ok(WatchMessage::Created);
    }
    Ok(WatchMessage::Events(events))
}

/// `{"key": b64, "value": b64, "mod_revision": "N"}`; a missing value is empty (deletes, and
/// keys-only reads).
fn parse_kv(v: &Value) -> Result<Kv, Fault> {
    let bytes = |name: &str| -> Result<Vec<u8>, Fault> {
        match v.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => {
                unbase64(s).ok_or_else(|| Fault::Malformed(format!("{name} is not base64")))
            }
            Some(_) => Err(Fault::Malformed(format!("{name} is not a string"))),
        }
    };
    let key = bytes("key")?;
    if key.is_empty() {
        return Err(Fault::Malformed("a kv without a key".into()));
    }
    Ok(Kv {
        key,
        value: bytes("value")?,
        mod_revision: int_field(v, "mod_revision").unwrap_or(0),
        create_revision: int_field(v, "create_revision").unwrap_or(0),
    })
}

/// Decodes standard base64 (the gateway's bytes fields), strictly: canonical padding, no
/// stray characters; `None` for anything else.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// `{"name": user, "password": password}`
pub fn authenticate(user: &str, password: &str) -> String {
    json!({ "name": user, "password": password }).to_string()
}

/// The granted lease ID, and the TTL etcd granted (it raises a TTL below its minimum, 2 s
/// with the default election timeout).
pub fn parse_grant(status: u16, body: &str) -> Result<(i64, Option<i64>), Fault> {
    let v = parse_ok(status, body)?;
    if let Some(e) = json::str_at(&v, "error").filter(|e| !e.is_empty()) {
        return Err(Fault::Rejected(e.to_owned()));
    }
    let id = int_field(&v, "ID").filter(|id| *id != 0).ok_or_else(|| {
        Fault::Malformed(format!("lease grant answer without an ID: {}", clip(body)))
    })?;
    Ok((id, int_field(&v, "TTL").filter(|t| *t > 0)))
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

/// Success of a write, with the store revision it made (`header.revision`).
pub fn parse_revision(status: u16, body: &str) -> Result<i64, Fault> {
    let v = parse_ok(status, body)?;
    v.get("header")
        .and_then(|h| int_field(h, "revision"))
        .filter(|r| *r > 0)
        .ok_or_else(|| Fault::Malformed(format!("answer without a revision: {}", clip(body))))
}

/// A `maintenance/status` answer that names a leader. Member ids are unsigned 64-bit numbers
/// (written as strings by the gateway); etcd leaves a zero leader out.
pub fn parse_status(status: u16, body: &str) -> Result<(), Fault> {
    let v = parse_ok(status, body)?;
    let leader = match v.get("leader") {
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(n) => n.as_u64(),
        None => Some(0),
    };
    match leader {
        Some(0) => Err(Fault::Unavailable("the member has no leader".into())),
        Some(_) => Ok(()),
        None => Err(Fault::Malformed(format!(
            "status answer with a leader that is not a member id: {}",
            clip(body)
        ))),
    }
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
    crate::error::clip(body, 200)
}

/// Standard base64 with padding (RFC 4648), as the gateway expects for bytes fields.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
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
    fn a_status_must_name_a_leader() {
        // As etcd 3.4's gateway writes it: ids over i64::MAX, as strings.
        let ok = r#"{"header":{"member_id":"13668033151171901709"},"version":"3.4.23","leader":"13668033151171901709","raftIndex":"8"}"#;
        assert_eq!(parse_status(200, ok), Ok(()));
        let none = r#"{"header":{"member_id":"13668033151171901709"},"version":"3.4.23"}"#;
        assert!(matches!(
            parse_status(200, none),
            Err(Fault::Unavailable(_))
        ));
        let no_leader =
            r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
        assert!(matches!(
            parse_status(503, no_leader),
            Err(Fault::Unavailable(_))
        ));
        for bad in [
            r#"{"leader":"x"}"#,
            r#"{"leader":-1}"#,
            r#"{"leader":[1]}"#,
            "[]",
            "garbage",
        ] {
            assert!(parse_status(200, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unbase64_inverts_base64() {
        for text in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "/app/servers/x",
        ] {
            assert_eq!(
                unbase64(&base64(text.as_bytes())).as_deref(),
                Some(text.as_bytes())
            );
        }
        assert_eq!(unbase64("Zm9v").as_deref(), Some(&b"foo"[..]));
        for bad in [
            "Z", "Zm9v=== ", "Zm9v===", "Zm$v", "Z===", "é", "Zm8", "Zm9=", "Zm8=\n",
        ] {
            assert_eq!(unbase64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/app/servers/"), b"/app/servers0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn parses_real_range_and_watch_answers() {
        let page = parse_range(200, include_str!("../../tests/fixtures/v3_range.json")).unwrap();
        assert!(page.revision > 0 && !page.more);
        assert_eq!(page.kvs.len(), 2);
        assert_eq!(page.kvs[0].key, b"/app/servers/a");
        assert_eq!(page.kvs[0].value, b"10.0.0.1:80");
        let empty =
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"}}"#;
        assert_eq!(parse_range(200, empty).unwrap().kvs, vec![]);
        let mut lines = include_str!("../../tests/fixtures/v3_watch.txt").lines();
        assert_eq!(
            parse_watch(lines.next().unwrap()),
            Ok(WatchMessage::Created)
        );
        let Ok(WatchMessage::Events(put)) = parse_watch(lines.next().unwrap()) else {
            panic!("a put event");
        };
        assert!(
            matches!(&put[0], Event::Put(kv) if kv.key == b"/app/servers/c" && kv.value == b"10.0.0.3:80")
        );
        let Ok(WatchMessage::Events(del)) = parse_watch(lines.next().unwrap()) else {
            panic!("a delete event");
        };
        assert!(matches!(&del[0], Event::Delete(k, r) if k == b"/app/servers/a" && *r > 0));
        let canceled = lines.next().unwrap();
        assert!(matches!(
            parse_watch(canceled),
            Ok(WatchMessage::Canceled {
                compact_revision: Some(_),
                ..
            })
        ));
        // Several watches on one stream: each message says which (etcd omits 0).
        let tagged = |line: &str| parse_watch_tagged(line).map(|(id, _)| id);
        assert_eq!(tagged(r#"{"result":{"created":true}}"#), Ok(0));
        assert_eq!(
            tagged(r#"{"result":{"watch_id":"2","created":true}}"#),
            Ok(2)
        );
        assert_eq!(tagged(r#"{"result":{"watch_id":-1,"events":[]}}"#), Ok(-1));
        for bad in [
            r#"{"result":{"watch_id":"x","created":true}}"#,
            r#"{"result":{"watch_id":[1],"created":true}}"#,
            r#"{"result":{"watch_id":"99999999999999999999","created":true}}"#,
        ] {
            assert!(tagged(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_range_and_watch_answers_are_errors() {
        for body in [
            "",
            "{}",
            "[]",
            r#"{"header":{}}"#,
            r#"{"header":{"revision":"5"},"kvs":{}}"#,
            r#"{"header":{"revision":"5"},"kvs":[{"value":"eA=="}]}"#,
            r#"{"header":{"revision":"5"},"kvs":[{"key":"!!"}]}"#,
            r#"{"header":{"revision":"5"},"more":"yes"}"#,
        ] {
            assert!(parse_range(200, body).is_err(), "{body:?}");
        }
        for line in [
            "",
            "{}",
            "null",
            r#"{"result":{"events":[{"type":"NOPE","kv":{"key":"eA=="}}]}}"#,
            r#"{"result":{"events":[{}]}}"#,
            r#"{"error":{"grpc_code":16,"message":"invalid auth token"}}"#,
        ] {
            assert!(parse_watch(line).is_err(), "{line:?}");
        }
        let mut m = crate::fuzz::Mutator::new(0x3a7c4);
        let range = include_str!("../../tests/fixtures/v3_range.json");
        let watch = include_str!("../../tests/fixtures/v3_watch.txt");
        for _ in 0..5_000 {
            let _ = parse_range(200, &m.mutate(range.as_bytes()));
            let _ = parse_watch(&m.mutate(watch.as_bytes()));
            let _ = unbase64(&m.mutate(b"L2FwcC9zZXJ2ZXJzL2E="));
        }
    }

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
        assert_eq!(
            parse_grant(200, GRANT_OK),
            Ok((2324035550560058885, Some(10)))
        );
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
