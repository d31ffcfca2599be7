//! What both programs' options share: the etcd endpoints and access options (TLS files,
//! credentials), key prefixes, durations, flags and the log filter, each parsed from what the
//! scanner (`cli`) found, with one-line errors naming the option. Each program's own options,
//! with their defaults, live with that program: hecd-init's in `config`, hecd-haproxy's in
//! `consumer::config`.

use std::net::Ipv6Addr;
use std::time::Duration;

use crate::cli::{Given, RawArgs};
use crate::error::UsageError;
use crate::etcd::{Credentials, Endpoint};

/// Longest duration any option accepts; longer values are typos, and this keeps deadline
/// arithmetic far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The etcd access options both programs take: TLS files and credentials.
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    pub cacert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub credentials: Option<Credentials>,
    pub password_file: Option<String>,
}

/// Reads `--etcd-cacert`, `--etcd-cert`, `--etcd-key`, `--etcd-user` (with `password`, from
/// `HECD_ETCD_PASSWORD`) and `--etcd-password-file`, checking how they go together.
pub fn etcd_access(raw: &RawArgs, password: Option<String>, errors: &mut Errors) -> EtcdAccess {
    let user = raw.get("etcd-user");
    let credentials = errors
        .take(user.map(|g| parse_user(g, password)).transpose())
        .flatten();
    let password_file = raw.get("etcd-password-file");
    if let Some(g) = password_file {
        if user.is_none() {
            errors.take(Err::<(), _>(UsageError::new(
                &g.source,
                "needs --etcd-user USER (the file holds only the password)",
            )));
        } else if user.is_some_and(|u| u.value.contains(':')) {
            errors.take(Err::<(), _>(UsageError::new(
                &g.source,
                "--etcd-user USER:PASSWORD already gives a password; give USER alone",
            )));
        }
    }
    let file = |long: &str| raw.get(long).map(|g| g.value.clone());
    let (cacert, cert, key) = (file("etcd-cacert"), file("etcd-cert"), file("etcd-key"));
    if cert.is_some() != key.is_some() {
        let source = raw
            .get("etcd-cert")
            .or(raw.get("etcd-key"))
            .map_or("--etcd-cert", |g| g.source.as_str());
        errors.take(Err::<(), _>(UsageError::new(
            source,
            "expected --etcd-cert and --etcd-key together",
        )));
    }
    EtcdAccess {
        cacert,
        cert,
        key,
        credentials,
        password_file: password_file.map(|g| g.value.clone()),
    }
}

/// `HECD_LOG`, checked; empty counts as unset.
pub fn checked_log_filter(log: Option<String>, errors: &mut Errors) -> Option<String> {
    let log = log.filter(|l| !l.trim().is_empty());
    if let Some(filter) = &log
        && let Err(e) = crate::logging::check_filter(filter)
    {
        errors.take(Err::<(), _>(UsageError::new(
            "HECD_LOG",
            format!("expected an env_logger filter such as info or hecd_init=debug: {e}"),
        )));
    }
    log
}

/// `--lb-prefix` (default `/hecd`): a key path that neither contains the server prefix nor
/// lies within it, so confd templates over the servers see nothing of it.
pub fn lb_prefix(raw: &RawArgs, prefix: Option<&str>) -> Result<String, UsageError> {
    let g = &raw.or_default("lb-prefix");
    let lb = parse_prefix(g)?;
    if raw.get("lb-prefix").is_none() {
        // The default, even with `--prefix /` (which holds every key).
        return Ok(lb);
    }
    match prefix {
        _ if lb.is_empty() => Err(expected(g, "a key path such as /hecd, not /")),
        Some(p) if crate::contract::overlaps(&lb, p) => Err(UsageError::new(
            &g.source,
            format!(
                "must lie outside the server prefix {p}/ (and not contain it), got {:?}",
                g.value
            ),
        )),
        _ => Ok(lb),
    }
}

/// Collects every usage error instead of stopping at the first.
#[derive(Default)]
pub struct Errors(pub Vec<UsageError>);

impl Errors {
    pub fn take<T>(&mut self, result: Result<T, UsageError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }

    /// The errors, when a section came out empty: never an empty list (a section is empty
    /// only because of an error it reported; should that ever not hold, the user still
    /// learns that the options were refused).
    pub fn into_errors(mut self) -> Vec<UsageError> {
        if self.0.is_empty() {
            self.0.push(UsageError::new(
                "options",
                "refused without a reason (a bug: please report it)",
            ));
        }
        self.0
    }
}

pub fn expected(g: &Given, form: &str) -> UsageError {
    UsageError::new(&g.source, format!("expected {form}, got {:?}", g.value))
}

pub fn choice<T: Copy>(raw: &RawArgs, long: &str, options: &[(&str, T)]) -> Result<T, UsageError> {
    let g = raw.or_default(long);
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    options
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&g.value))
        .map(|(_, v)| *v)
        .ok_or_else(|| expected(&g, &format!("one of {}", names.join(", "))))
}

pub fn verbosity(raw: &RawArgs) -> Result<usize, UsageError> {
    let given = raw.all("verbose");
    match given.first() {
        // From the variable: a boolean, or a count such as HECD_VERBOSE=2.
        Some(g) if g.source.starts_with("HECD_") => match g.value.parse::<usize>() {
            Ok(n) => Ok(n),
            Err(_) => parse_bool(g).map(usize::from),
        },
        _ => Ok(given.len()),
    }
}

pub fn parse_bool(g: &Given) -> Result<bool, UsageError> {
    match g.value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(expected(g, "true or false (1/0, yes/no, on/off)")),
    }
}

/// Parses `10s`, `500ms`, `1.5` (seconds), `2m`, `1h` or `1d`, at most 24 h.
pub fn parse_duration(text: &str) -> Option<Duration> {
    parse_duration_upto(text, MAX_DURATION)
}

/// [`parse_duration`] with a limit of `max` instead of 24 h.
pub fn parse_duration_upto(text: &str, max: Duration) -> Option<Duration> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = t.strip_suffix('d') {
        (n, 86_400.0)
    } else {
        (t, 1.0)
    };
    // Plain decimal only: f64's parser would also take "inf", "NaN" and "1e3".
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let secs: f64 = number.parse().ok()?;
    let d = Duration::try_from_secs_f64(secs * scale).ok()?;
    (d <= max).then_some(d)
}

pub fn parse_duration_at_least(g: &Given, min: Duration) -> Result<Duration, UsageError> {
    let form = if min.is_zero() {
        "a duration such as 2s, 500ms or 0 (at most 24h)"
    } else {
        "a positive duration such as 10s, 500ms or 1.5 (at most 24h)"
    };
    parse_duration(&g.value)
        .filter(|d| *d >= min)
        .ok_or_else(|| expected(g, form))
}

pub fn parse_port(text: &str, g: &Given) -> Result<u16, UsageError> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| expected(g, "a port from 1 to 65535"))
}

pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
}

/// Splits `HOST[:PORT]` where HOST may be `[v6]`; returns (host without brackets, port text).
pub fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<Ipv6Addr>().ok()?;
        match after {
            "" => Some((v6, None)),
            _ => Some((v6, Some(after.strip_prefix(':')?))),
        }
    } else {
        match text.split_once(':') {
            Some((h, p)) if !p.contains(':') => Some((h, Some(p))),
            Some(_) => None, // bare IPv6: must be bracketed
            None => Some((text, None)),
        }
    }
}

pub fn parse_endpoints(g: &Given) -> Result<Vec<Endpoint>, UsageError> {
    let form = "http:// or https:// URLs such as http://etcd:2379, comma-separated";
    let mut out = Vec::new();
    for part in g.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || UsageError::new(&g.source, format!("expected {form}, got {part:?}"));
        let (tls, rest) = if let Some(r) = part.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = part.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(bad());
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_host_port(authority).ok_or_else(bad)?;
        if !(valid_host(host) || host.parse::<Ipv6Addr>().is_ok()) {
            return Err(bad());
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
            None if tls => 443,
            None => 80,
        };
        out.push(Endpoint {
            tls,
            host: host.to_owned(),
            port,
        });
    }
    if out.is_empty() {
        return Err(expected(g, form));
    }
    Ok(out)
}

pub fn parse_prefix(g: &Given) -> Result<String, UsageError> {
    let v = g.value.trim();
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) || v.contains("//") {
        return Err(expected(g, "a key path such as /app/servers"));
    }
    let trimmed = v.trim_matches('/');
    Ok(if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    })
}

/// `--lb-id`: a key segment (the last of the balancer's keys).
pub fn parse_key_segment(g: &Given) -> Result<String, UsageError> {
    let v = &g.value;
    if v.is_empty() || v.contains('/') || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(expected(g, "a key segment without '/' or spaces"));
    }
    Ok(v.clone())
}

pub fn parse_user(g: &Given, password: Option<String>) -> Result<Credentials, UsageError> {
    let (user, inline) = match g.value.split_once(':') {
        Some((u, p)) => (u, Some(p.to_owned())),
        None => (g.value.as_str(), None),
    };
    if user.is_empty() {
        // Do not echo the value: it may hold a password.
        return Err(UsageError::new(&g.source, "expected USER or USER:PASSWORD"));
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: inline.or(password),
    })
}
