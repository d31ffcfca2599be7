//! What both programs' options share: the rows of the etcd access options and `-v` (each with
//! its parser), the rules between those options, and the parsers of the kinds of value both
//! programs take (endpoints, key prefixes, durations, flags), each with a one-line error naming
//! the option. Each program's own rows live with that program: hecd-init's in `config`,
//! hecd-haproxy's in `consumer::config`.

use std::net::Ipv6Addr;
use std::time::Duration;

use crate::access::EtcdAccess;
use crate::cli::{Absent, Given, OptSpec, RawArgs, opt};
use crate::error::{Errors, UsageError};
use crate::etcd::{Credentials, Endpoint};

/// Longest duration any option accepts; longer values are typos, and this keeps deadline
/// arithmetic far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// What the shared rows write: each program's arguments struct holds one ([`Shares`]).
#[derive(Clone, Debug, Default)]
pub struct Shared {
    /// The etcd access options as given (the credentials with the password `--etcd-user`
    /// gave inline, if any), before [`etcd_access`]'s rules.
    pub access: EtcdAccess,
    /// How many `-v` (or `HECD_VERBOSE`'s count).
    pub verbose: usize,
}

/// An arguments struct the shared rows can write into.
pub trait Shares {
    fn shared(&mut self) -> &mut Shared;
}

fn set_cacert<T: Shares>(g: &Given, a: &mut T) -> Result<(), UsageError> {
    a.shared().access.cacert = Some(g.value.clone());
    Ok(())
}

fn set_cert<T: Shares>(g: &Given, a: &mut T) -> Result<(), UsageError> {
    a.shared().access.cert = Some(g.value.clone());
    Ok(())
}

fn set_key<T: Shares>(g: &Given, a: &mut T) -> Result<(), UsageError> {
    a.shared().access.key = Some(g.value.clone());
    Ok(())
}

fn set_user<T: Shares>(g: &Given, a: &mut T) -> Result<(), UsageError> {
    a.shared().access.credentials = Some(parse_user(g)?);
    Ok(())
}

fn set_password_file<T: Shares>(g: &Given, a: &mut T) -> Result<(), UsageError> {
    a.shared().access.password_file = Some(g.value.clone());
    Ok(())
}

/// `-v` counts; the variable is a count (`HECD_VERBOSE=2`) or a boolean.
fn set_verbose<T: Shares>(g: &Given, a: &mut T) -> Result<(), UsageError> {
    let verbose = &mut a.shared().verbose;
    if g.source.starts_with("HECD_") {
        *verbose = match g.value.parse::<usize>() {
            Ok(n) => n,
            Err(_) => usize::from(parse_bool(g)?),
        };
    } else {
        *verbose += 1;
    }
    Ok(())
}

/// The etcd access options, the same rows in both programs' tables (each program's table is
/// its own rows, these, then `-v`, `--help` and `--version`: see [`crate::cli::join`]).
pub const fn etcd_access_rows<T: Shares>() -> [OptSpec<T>; 5] {
    [
        opt(
            "etcd-cacert",
            "FILE",
            Absent::Says("/etc/ssl/certs/ca-certificates.crt for https://"),
            "CA bundle to verify etcd's certificate",
            set_cacert::<T>,
        ),
        opt(
            "etcd-cert",
            "FILE",
            Absent::Says("none"),
            "client certificate for etcd (with --etcd-key)",
            set_cert::<T>,
        ),
        opt(
            "etcd-key",
            "FILE",
            Absent::Says("none"),
            "client key for etcd",
            set_key::<T>,
        ),
        opt(
            "etcd-user",
            "USER[:PASSWORD]",
            Absent::Says("none"),
            "etcd user; the password may come from HECD_ETCD_PASSWORD or --etcd-password-file",
            set_user::<T>,
        ),
        opt(
            "etcd-password-file",
            "FILE",
            Absent::Says("none"),
            "read the etcd password from FILE (Docker/Swarm secrets: /run/secrets/NAME); one trailing newline is dropped",
            set_password_file::<T>,
        ),
    ]
}

/// `-v`, `--verbose` with its help line.
pub const fn verbose<T: Shares>(help: &'static str) -> OptSpec<T> {
    OptSpec {
        long: "verbose",
        short: Some('v'),
        value: None,
        default: Absent::Says("off"),
        help,
        env: true,
        repeat: true,
        set: set_verbose::<T>,
    }
}

/// The rules between the etcd access options (a password file needs a user without one; a
/// certificate needs its key; `raw` says where each was given), and the password of
/// `HECD_ETCD_PASSWORD` given to a user that brought none.
pub fn etcd_access(
    mut access: EtcdAccess,
    raw: &RawArgs,
    password: Option<String>,
    errors: &mut Errors,
) -> EtcdAccess {
    if let Some(g) = raw.get("etcd-password-file") {
        let message = match &access.credentials {
            None => "needs --etcd-user USER (the file holds only the password)",
            Some(c) if c.password.is_some() => {
                "--etcd-user USER:PASSWORD already gives a password; give USER alone"
            }
            Some(_) => "",
        };
        if !message.is_empty() {
            errors.0.push(UsageError::new(&g.source, message));
        }
    }
    if access.cert.is_some() != access.key.is_some() {
        let source = raw
            .get("etcd-cert")
            .or(raw.get("etcd-key"))
            .map_or("--etcd-cert", |g| g.source.as_str());
        errors.0.push(UsageError::new(
            source,
            "expected --etcd-cert and --etcd-key together",
        ));
    }
    if let Some(c) = &mut access.credentials {
        c.password = c.password.take().or(password);
    }
    access
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

/// `--lb-prefix` (parsed: `lb`) neither contains the server prefix nor lies within it, so confd
/// templates over the servers see nothing of it. Its default is taken as it is, even with
/// `--prefix /` (which holds every key): only a value the user gave (`given`) is refused.
pub fn lb_prefix_apart(lb: &str, given: Option<&Given>, prefix: &str) -> Result<(), UsageError> {
    let Some(g) = given else { return Ok(()) };
    if lb.is_empty() {
        return Err(expected(g, "a key path such as /hecd, not /"));
    }
    if crate::contract::overlaps(lb, prefix) {
        return Err(UsageError::new(
            &g.source,
            format!(
                "must lie outside the server prefix {prefix}/ (and not contain it), got {:?}",
                g.value
            ),
        ));
    }
    Ok(())
}

pub fn expected(g: &Given, form: &str) -> UsageError {
    UsageError::new(&g.source, format!("expected {form}, got {:?}", g.value))
}

/// One of `options`' names (any case).
pub fn choice<T: Copy>(g: &Given, options: &[(&str, T)]) -> Result<T, UsageError> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    options
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&g.value))
        .map(|(_, v)| *v)
        .ok_or_else(|| expected(g, &format!("one of {}", names.join(", "))))
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

/// `--etcd-user USER[:PASSWORD]`.
pub fn parse_user(g: &Given) -> Result<Credentials, UsageError> {
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
        password: inline,
    })
}
