//! The etcd v2 keys API (legacy clusters, or etcd 3.x started with `--enable-v2=true`), as
//! paths, form bodies and response parsers. v2 has no leases: the TTL sits on the key, which is
//! refreshed with `refresh=true&prevExist=true` (no value, so watchers see no change). No I/O.

use percent_encoding::{AsciiSet, utf8_percent_encode};

use super::Fault;
use crate::http::UNRESERVED;
use crate::json::{self, Value};

/// A key's path: `/` separates its segments.
const KEY_PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// A form value: `HOST:PORT` keeps its colon.
const FORM_VALUE: &AsciiSet = &UNRESERVED.remove(b':');

/// `/v2/keys/app/servers/web-1`, each byte outside the unreserved set percent-encoded.
pub fn key_path(key: &str) -> String {
    format!("/v2/keys{}", utf8_percent_encode(key, KEY_PATH))
}

/// Form body that sets the key with a TTL.
pub fn set(value: &str, ttl_secs: u64) -> String {
    format!(
        "value={}&ttl={ttl_secs}",
        utf8_percent_encode(value, FORM_VALUE)
    )
}

/// Form body that refreshes the TTL of an existing key without changing it.
pub fn refresh(ttl_secs: u64) -> String {
    format!("ttl={ttl_secs}&refresh=true&prevExist=true")
}

/// Success of set, refresh and delete. A refresh of a key that expired is [`Fault::KeyGone`];
/// deleting a key that is already gone counts as done (`missing_ok`).
pub fn parse(status: u16, body: &str, missing_ok: bool) -> Result<(), Fault> {
    let v: Option<Value> = json::parse(body).ok();
    let code = v
        .as_ref()
        .and_then(|v| v.get("errorCode"))
        .and_then(json::int64);
    if (200..300).contains(&status) {
        return match v {
            Some(v) if v.get("node").is_some() => Ok(()),
            _ => Err(Fault::Malformed(format!(
                "v2 answer without a node: {}",
                crate::error::clip(body, 200)
            ))),
        };
    }
    let message = v
        .as_ref()
        .and_then(|v| json::str_at(v, "message"))
        .unwrap_or("")
        .to_owned();
    match (status, code) {
        // errorCode 100: key not found.
        (404, Some(100)) if missing_ok => Ok(()),
        (404, Some(100)) => Err(Fault::KeyGone),
        (401 | 403, _) => Err(Fault::Rejected(format!("HTTP {status}: {message}"))),
        (500..=599, _) => Err(Fault::Unavailable(format!("HTTP {status}: {message}"))),
        _ => Err(Fault::Rejected(format!("HTTP {status}: {message}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_bodies() {
        assert_eq!(key_path("/app/servers/web-1"), "/v2/keys/app/servers/web-1");
        assert_eq!(key_path("/a b/ü"), "/v2/keys/a%20b/%C3%BC");
        assert_eq!(set("[fd00::5]:80", 10), "value=%5Bfd00::5%5D:80&ttl=10");
        assert_eq!(refresh(10), "ttl=10&refresh=true&prevExist=true");
    }

    #[test]
    fn parses_real_answers() {
        assert_eq!(
            parse(201, include_str!("../../tests/fixtures/v2_set.json"), false),
            Ok(())
        );
        assert_eq!(
            parse(
                200,
                include_str!("../../tests/fixtures/v2_refresh.json"),
                false
            ),
            Ok(())
        );
        let gone = include_str!("../../tests/fixtures/v2_key_not_found.json");
        assert_eq!(parse(404, gone, false), Err(Fault::KeyGone));
        assert_eq!(parse(404, gone, true), Ok(()));
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(parse(200, "{", false).is_err());
        assert!(parse(200, "{}", false).is_err());
        assert!(matches!(parse(503, "", false), Err(Fault::Unavailable(_))));
        assert!(matches!(
            parse(404, "<html>", false),
            Err(Fault::Rejected(_))
        ));
    }
}
