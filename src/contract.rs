//! The contract between hecd-init and its balancers, in one place: which instance names and
//! advertised addresses are valid, how routes are written, and where every key lives. Both
//! programs (and the tests) use these functions and nothing else, so a name or an address one
//! accepts, the other serves.
//!
//! Key layout (`PREFIX` a service's `--prefix`, `LB` the `--lb-prefix`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `PREFIX/NAME` | `HOST:PORT` | hecd-init, under its lease |
//! | `LB/routes/PREFIX-without-its-leading-slash/NAME` | `host[/path],...` | hecd-init, same lease |
//! | `LB/lbs/ID` | the balancer's listen address | each balancer, under its lease |
//! | `LB/drained/PREFIX-without-its-leading-slash/NAME/ID` | `drained` | each balancer, short lease |
//!
//! A name never holds `/`, so the last segment of a routes or drained key is always the name
//! (or the balancer's id) and what comes before it the service's prefix.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The default `--prefix`: the classic recipe's.
pub const DEFAULT_PREFIX: &str = "/app/servers";

/// The default `--lb-prefix`.
pub const DEFAULT_LB_PREFIX: &str = "/hecd";

/// Longest instance name. HAProxy has no limit of its own; this keeps every key, log line and
/// runtime command short.
pub const MAX_NAME: usize = 128;

/// Longest host name in a route (DNS's own limit).
pub const MAX_HOST: usize = 253;

/// Longest path in a route.
pub const MAX_PATH: usize = 1024;

/// Most routes one instance may declare.
pub const MAX_ROUTES: usize = 64;

/// Why `name` cannot be an instance name, or `Ok`. The rule is the intersection of what every
/// consumer takes: HAProxy's server names (letters, digits, `-`, `_`, `.`, `:`), a key segment
/// of etcd v2 that its listings show (no leading `_`, not `.` or `..`, which v2 treats as path
/// steps), at most [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an instance name cannot be empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "an instance name has at most {MAX_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "{c:?} is not allowed: an instance name takes letters, digits, '-', '_', '.' and ':' \
             (HAProxy's server names; a confd + haproxy -c pipeline rejects anything else)"
        ));
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are path steps for etcd v2 and confd, not names".into());
    }
    if name.starts_with('_') {
        return Err(
            "a leading '_' hides the key from etcd v2 listings (confd would never see it)".into(),
        );
    }
    Ok(())
}

/// `name` made valid: every character outside the rule becomes `-`, a leading `_` or `.`
/// becomes `-`, cut to [`MAX_NAME`]. For names hecd-init finds itself (the container's name,
/// the hostname), which it cannot refuse at start; Docker's and DNS's names pass unchanged.
pub fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    if out.starts_with(['_', '.']) {
        out.replace_range(..1, "-");
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// An advertised address: an IP address (IPv6 without brackets) and a port, written as etcd
/// values are, `10.0.0.5:8080` or `[fd00::5]:8080` ([`Address::parse`] reads that form back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    /// Parses an advertised address as every balancer takes it: exactly `IPv4:PORT` or
    /// `[IPv6]:PORT`, nothing else (no host names: HAProxy's runtime API moves a server only to an
    /// IP address; no spaces, keywords or scheme).
    pub fn parse(value: &str) -> Result<Address, String> {
        let bad = || format!("value {value:?} is not IP:PORT (IPv6 as [ADDR]:PORT)");
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let (v6, port) = rest.split_once("]:").ok_or_else(bad)?;
            v6.parse::<Ipv6Addr>().map_err(|_| bad())?;
            (v6, port)
        } else {
            let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
            host.parse::<Ipv4Addr>().map_err(|_| bad())?;
            (host, port)
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return Err(bad());
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(bad)?;
        Ok(Address {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `PREFIX/NAME`.
pub fn server_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}")
}

/// The instance name of `key` under `prefix` (`PREFIX/NAME`), checked against the name rule.
pub fn server_name(prefix: &str, key: &[u8]) -> Result<String, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
    let name = key
        .strip_prefix(prefix)
        .and_then(|k| k.strip_prefix('/'))
        .ok_or_else(|| format!("key {key:?} is not under {prefix}/"))?;
    if name.contains('/') {
        return Err(format!(
            "key {key:?}: expected {prefix}/NAME with no further '/'"
        ));
    }
    check_name(name).map_err(|why| format!("key {key:?}: {why}"))?;
    Ok(name.to_owned())
}

/// `LB/lbs/`: one key per announced balancer, its id last.
pub fn lbs_dir(lb_prefix: &str) -> String {
    format!("{lb_prefix}/lbs/")
}

/// `LB/lbs/ID`.
pub fn lb_key(lb_prefix: &str, id: &str) -> String {
    format!("{}{id}", lbs_dir(lb_prefix))
}

/// `LB/drained/PREFIX/NAME/`: the confirmations for one instance, one key per balancer id.
/// The prefix is part of it: two services may each have an instance of the same name.
pub fn drained_dir(lb_prefix: &str, prefix: &str, name: &str) -> String {
    format!("{lb_prefix}/drained{prefix}/{name}/")
}

/// `LB/drained/PREFIX/NAME/ID`.
pub fn drained_key(lb_prefix: &str, prefix: &str, name: &str, id: &str) -> String {
    format!("{}{id}", drained_dir(lb_prefix, prefix, name))
}

/// `LB/routes/`: every route declaration.
/// Whether one of the key prefixes `a` and `b` holds the other (`/app` holds `/app/api`, not
/// `/apps`): two trees that must stay apart overlap.
pub fn overlaps(a: &str, b: &str) -> bool {
    let within = |x: &str, y: &str| format!("{x}/").starts_with(&format!("{y}/"));
    within(a, b) || within(b, a)
}

pub fn routes_dir(lb_prefix: &str) -> String {
    format!("{lb_prefix}/routes/")
}

/// `LB/routes/PREFIX/NAME` (the prefix keeps no leading `/` of its own: `routes/app/api/a-1`).
pub fn route_key(lb_prefix: &str, prefix: &str, name: &str) -> String {
    format!("{lb_prefix}/routes{prefix}/{name}")
}

/// The service prefix and instance name of a route declaration's key; an error says why the key
/// is not one.
pub fn parse_route_key(lb_prefix: &str, key: &[u8]) -> Result<(String, String), String> {
    let text = std::str::from_utf8(key).map_err(|_| "a route key that is not UTF-8".to_owned())?;
    let rest = text
        .strip_prefix(&routes_dir(lb_prefix))
        .ok_or_else(|| format!("key {text:?} is not under {}", routes_dir(lb_prefix)))?;
    let (prefix, name) = rest
        .rsplit_once('/')
        .ok_or_else(|| format!("key {text:?}: expected routes/PREFIX/NAME"))?;
    if prefix.is_empty()
        || prefix.split('/').any(str::is_empty)
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "key {text:?}: the service prefix is not a key path"
        ));
    }
    check_name(name).map_err(|why| format!("key {text:?}: {why}"))?;
    Ok((format!("/{prefix}"), name.to_owned()))
}

/// One route: a host name (lower case) and an optional path prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub host: String,
    pub path: Option<String>,
}

impl Route {
    /// Parses `HOST[/PATH]`: a DNS name (letters, digits, `-`, `.`; labels of 1 to 63, at most
    /// 253 in all; compared without case) and a path that starts with `/` and holds only URL
    /// path characters (no spaces, controls, quotes, `;`, `,`, `#`, `?` or `\`).
    pub fn parse(text: &str) -> Result<Route, String> {
        let (host, path) = match text.find('/') {
            Some(i) => (&text[..i], Some(&text[i..])),
            None => (text, None),
        };
        let host = host.to_ascii_lowercase();
        let labels_ok = host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if host.is_empty() || host.len() > MAX_HOST || !labels_ok {
            return Err(format!(
                "{:?} is not HOST[/PATH] with HOST a DNS name such as api.example.com",
                clip(text)
            ));
        }
        if let Some(p) = path {
            let path_ok = p.len() <= MAX_PATH
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~/%!$&()*+=:@".contains(&b));
            if !path_ok {
                return Err(format!(
                    "{:?}: a path takes letters, digits and -._~/%!$&()*+=:@ (at most {MAX_PATH})",
                    clip(text)
                ));
            }
        }
        Ok(Route {
            host,
            // `example.com/` is `example.com`.
            path: path.filter(|p| *p != "/").map(str::to_owned),
        })
    }

    /// What a request is matched against, by longest prefix: `host/path`, the bare host as
    /// `host/` (so `example.com` never matches `example.com.evil.org`).
    pub fn map_key(&self) -> String {
        format!("{}{}", self.host, self.path.as_deref().unwrap_or("/"))
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.host, self.path.as_deref().unwrap_or(""))
    }
}

/// Parses a declaration's value: routes separated by commas, at least one, at most
/// [`MAX_ROUTES`]; any bad route makes the whole declaration bad.
pub fn parse_routes(value: &str) -> Result<Vec<Route>, String> {
    let mut routes = Vec::new();
    for part in value.split(',') {
        routes.push(Route::parse(part.trim())?);
    }
    if routes.len() > MAX_ROUTES {
        return Err(format!("more than {MAX_ROUTES} routes"));
    }
    routes.sort();
    routes.dedup();
    Ok(routes)
}

/// The value of a declaration: the routes, comma-separated.
pub fn routes_value(routes: &[Route]) -> String {
    routes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// At most 80 characters of `text`, for messages about hostile input.
fn clip(text: &str) -> String {
    crate::error::clip(text, 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_every_consumer_takes() {
        for ok in ["web-1", "a_b.c:d", "web.1.abc", "x", &"a".repeat(MAX_NAME)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "_hidden",
            "web@x",
            "web+z",
            "web[1]",
            "ünï",
            "a b",
            "a/b",
            "a\nb",
            "a#b",
            &"a".repeat(MAX_NAME + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
            assert!(
                check_name(&safe_name(bad)).is_ok(),
                "{bad:?} → {}",
                safe_name(bad)
            );
        }
        assert_eq!(safe_name("web@x"), "web-x");
        assert_eq!(safe_name("web-1"), "web-1");
        assert_eq!(safe_name("_x"), "-x");
    }

    #[test]
    fn addresses_are_exactly_ip_port() {
        assert_eq!(
            Address::parse("10.0.0.5:8080").unwrap().to_string(),
            "10.0.0.5:8080"
        );
        assert_eq!(
            Address::parse("[fd00::5]:80").unwrap().to_string(),
            "[fd00::5]:80"
        );
        for bad in [
            "localhost:80",
            "web-1.local:80",
            "10.0.0.5",
            "fd00::5:80",
            "[x]:80",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = route_key("/hecd", "/app/api", "api-1");
        assert_eq!(k, "/hecd/routes/app/api/api-1");
        assert_eq!(
            parse_route_key("/hecd", k.as_bytes()).unwrap(),
            ("/app/api".to_owned(), "api-1".to_owned())
        );
        assert_eq!(
            drained_key("/hecd", "/app/servers", "web-1", "lb1"),
            "/hecd/drained/app/servers/web-1/lb1"
        );
        assert_eq!(lb_key("/hecd", "lb1"), "/hecd/lbs/lb1");
        for bad in [
            &b"/hecd/routes/api-1"[..],
            b"/hecd/routes//api-1",
            b"/hecd/routes/app//x",
            b"/hecd/routes/app/a b",
            b"/hecd/routes/a b/x",
            b"/hecd/routes/app/",
            b"/other/app/x",
            b"/hecd/routes/app/\xff",
        ] {
            assert!(parse_route_key("/hecd", bad).is_err(), "{bad:?}");
        }
        assert_eq!(server_name("/app", b"/app/web.1").unwrap(), "web.1");
        assert!(server_name("/app", b"/app/a/b").is_err());
        assert!(server_name("/app", b"/app/..").is_err());
    }

    #[test]
    fn routes_parse_strictly() {
        let r = Route::parse("API.Example.com/v1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.path.as_deref()),
            ("api.example.com", Some("/v1"))
        );
        assert_eq!(r.map_key(), "api.example.com/v1");
        assert_eq!(
            Route::parse("example.com").unwrap().map_key(),
            "example.com/"
        );
        assert_eq!(Route::parse("example.com/").unwrap().path, None);
        assert_eq!(
            routes_value(&parse_routes("b.com, a.com/x,a.com/x").unwrap()),
            "a.com/x,b.com"
        );
        for bad in [
            "",
            "/api",
            "a b.com",
            "a.com/x y",
            "a.com/x\ny",
            "a.com/x;y",
            "a.com/x#y",
            "a.com/x?y",
            "a_b.com",
            "-a.com",
            "a..com",
            "a.com:80",
            "ünï.com",
            &"a".repeat(5000),
            &format!("a.com/{}", "x".repeat(5000)),
        ] {
            assert!(Route::parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse_routes("a.com,,b.com").is_err());
        let many = vec!["a.com"; MAX_ROUTES + 1].join(",");
        assert!(parse_routes(&many).is_err());
        let mut m = crate::fuzz::Mutator::new(0x517);
        for _ in 0..3_000 {
            let t = m.mutate(b"api.example.com/v1,example.com");
            let _ = parse_routes(&t);
            let _ = parse_route_key("/hecd", m.mutate(b"/hecd/routes/app/api/api-1").as_bytes());
        }
    }
}
