//! hecd-init's options: the table (one row per option: name, variable, `--help` line, default
//! and parser, for `--help`, the scanner and the README test), and the validated [`Config`]
//! built from it by [`build`], which adds only the rules between options. What hecd-init shares
//! with hecd-haproxy (etcd access rows, prefixes, durations) is in `options`. Pure: no I/O, no
//! clock, no environment (the scanner already read `HECD_*`), so every option is unit-tested
//! with its exact message. Every bad value is reported, not only the first.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::access::EtcdAccess;
use crate::check::Check;
use crate::cli::{
    self, Absent, Given, OptSpec, RawArgs, Request, flag, opt, push, put, repeatable,
};
use crate::contract::{self, Route};
use crate::discovery::{Advertise, DockerApi, Mode};
use crate::error::{Errors, UsageError};
use crate::etcd::{Endpoint, EtcdApi};
use crate::options::{
    Shared, Shares, checked_log_filter, choice, etcd_access, etcd_access_rows, expected,
    lb_prefix_apart, parse_bool, parse_duration, parse_duration_at_least, parse_endpoints,
    parse_port, parse_prefix, split_host_port, valid_host, verbose,
};
use crate::signal::Rewrites;
use crate::user::{self, UserSpec};

/// Each option's value as its row's parser left it (see [`cli::read`]), before the rules
/// between options: the registration's options straight into a [`Registration`] (used only
/// with `--etcd`), the app's into fields of their own. It starts as `Args::default()`: a row
/// with a value default ([`Absent::Value`]) overwrites its field before anything reads it, so
/// the starting values of those fields are never seen; the others start off, none or empty.
#[derive(Debug, Default)]
pub struct Args {
    reg: Registration,
    drain: Option<Duration>,
    stop_timeout: Option<Duration>,
    single_child: bool,
    rewrites: Vec<(i32, i32)>,
    user: Option<(UserSpec, String)>,
    no_new_privileges: bool,
    shared: Shared,
}

impl Shares for Args {
    fn shared(&mut self) -> &mut Shared {
        &mut self.shared
    }
}

/// hecd-init's own rows, before the shared etcd access rows.
const OWN: [OptSpec<Args>; 20] = [
    opt(
        "etcd",
        "URL[,URL...]",
        Absent::Says("none: pure init"),
        "etcd client endpoints, http:// or https://; tried in an order drawn from --name (else the hostname)",
        |g, a| put(&mut a.reg.endpoints, parse_endpoints(g)),
    ),
    opt(
        "etcd-api",
        "auto|v3|v2",
        Absent::Value("auto"),
        "etcd API: v3 JSON gateway, v2 keys API, or ask /version",
        |g, a| {
            let apis = [
                ("auto", EtcdApi::Auto),
                ("v3", EtcdApi::V3),
                ("v2", EtcdApi::V2),
            ];
            put(&mut a.reg.api, choice(g, &apis))
        },
    ),
    opt(
        "prefix",
        "PATH",
        Absent::Value(contract::DEFAULT_PREFIX),
        "key prefix; the key is PREFIX/NAME",
        |g, a| put(&mut a.reg.prefix, parse_prefix(g)),
    ),
    opt(
        "name",
        "NAME",
        Absent::Says("container name, else hostname"),
        "last key segment",
        |g, a| put(&mut a.reg.name, parse_name(g).map(Some)),
    ),
    opt(
        "port",
        "PORT",
        Absent::Says("the TCP port the app listens on"),
        "the app's port inside the container, which the check probes",
        |g, a| put(&mut a.reg.port, parse_port(&g.value, g).map(Some)),
    ),
    opt(
        "advertise",
        "[HOST][:PORT]",
        Absent::Says("discovered"),
        "advertise this host, port or both; IPv6 as [fd00::5]:8080",
        |g, a| put(&mut a.reg.advertise, parse_advertise(g)),
    ),
    opt(
        "mode",
        "auto|container|published",
        Absent::Value("auto"),
        "advertise the container's IP and port, or the host IP and published port",
        |g, a| {
            let modes = [
                ("auto", Mode::Auto),
                ("container", Mode::Container),
                ("published", Mode::Published),
            ];
            put(&mut a.reg.mode, choice(g, &modes))
        },
    ),
    opt(
        "host-ip",
        "IP",
        Absent::Says("binding HostIp, else Swarm node address, else gateway"),
        "host address to pair with a published port",
        |g, a| put(&mut a.reg.host_ip, parse_ip(g).map(Some)),
    ),
    opt(
        "docker",
        "URL",
        Absent::Says("unix:///var/run/docker.sock if present"),
        "Docker Engine API (unix:// or tcp://)",
        |g, a| put(&mut a.reg.docker, parse_docker(g).map(Some)),
    ),
    opt(
        "ttl",
        "DURATION",
        Absent::Value("10s"),
        "lease TTL (whole seconds); refreshed at least every TTL/3",
        |g, a| put(&mut a.reg.ttl, parse_ttl(g)),
    ),
    opt(
        "check",
        "tcp|http:PATH|none",
        Absent::Value("tcp"),
        "readiness and liveness check against the app's port",
        |g, a| put(&mut a.reg.check, parse_check(g)),
    ),
    opt(
        "check-interval",
        "DURATION",
        Absent::Value("2s"),
        "time between checks",
        |g, a| {
            let interval = parse_duration_at_least(g, Duration::from_millis(1));
            put(&mut a.reg.check_interval, interval)
        },
    ),
    repeatable(opt(
        "route",
        "HOST[/PATH]",
        Absent::Says("none"),
        "requests for this host (and path prefix) go to this instance's service (its --prefix) on balancers that route; repeatable, comma-separated in the variable",
        |g, a| {
            let route = Route::parse(g.value.trim()).map_err(|why| UsageError::new(&g.source, why));
            push(&mut a.reg.routes, route)
        },
    )),
    opt(
        "lb-prefix",
        "PATH",
        Absent::Value(contract::DEFAULT_LB_PREFIX),
        "where load balancers announce themselves and confirm drains (confirmed drain)",
        |g, a| put(&mut a.reg.lb_prefix, parse_prefix(g)),
    ),
    opt(
        "drain",
        "DURATION",
        Absent::Says("2s when registering, else 0"),
        "after deregistering on a stop signal, wait this long at most before passing it on (less once every announced load balancer confirmed)",
        |g, a| {
            put(
                &mut a.drain,
                parse_duration_at_least(g, Duration::ZERO).map(Some),
            )
        },
    ),
    opt(
        "stop-timeout",
        "DURATION",
        Absent::Says("none"),
        "SIGKILL the app's process group this long after passing a stop signal on",
        |g, a| {
            let timeout = parse_duration_at_least(g, Duration::from_millis(1));
            put(&mut a.stop_timeout, timeout.map(Some))
        },
    ),
    flag(
        "single-child",
        "dumb-init's -c: the app stays in hecd-init's session and group, signals go to it alone, job-control signals go on as themselves",
        |g, a| put(&mut a.single_child, parse_bool(g)),
    ),
    repeatable(opt(
        "rewrite",
        "FROM:TO",
        Absent::Says("TSTP, TTIN, TTOU → STOP (none with --single-child)"),
        "pass signal FROM on as TO (TERM:QUIT, 15:3; TO=0 drops it; TSTP/TTIN/TTOU go on as STOP unless rewritten or --single-child); repeatable, comma-separated in the variable",
        |g, a| push(&mut a.rewrites, parse_rewrite(g)),
    )),
    opt(
        "user",
        "USER[:GROUP]",
        Absent::Says("none: the app runs as hecd-init does"),
        "run the app (only the app) as this user: a name from /etc/passwd or a uid; GROUP a name or gid",
        |g, a| {
            let spec = user::parse_spec(&g.value, &g.source);
            put(&mut a.user, spec.map(|u| Some((u, g.source.clone()))))
        },
    ),
    flag(
        "no-new-privileges",
        "set the app's no-new-privileges bit: setuid binaries and file capabilities give it nothing",
        |g, a| put(&mut a.no_new_privileges, parse_bool(g)),
    ),
];

/// The last rows: `-v`, `--help`, `--version`.
const LAST: [OptSpec<Args>; 3] = [
    verbose(
        "hecd-init's debug lines (twice: trace); HECD_LOG takes an env_logger filter (default: warn for a pure init, info when registering)",
    ),
    cli::help(),
    cli::version(),
];

const WITH_ETCD: [OptSpec<Args>; 25] = cli::join(OWN, etcd_access_rows());
const ALL: [OptSpec<Args>; 28] = cli::join(WITH_ETCD, LAST);

/// Every option hecd-init accepts, in `--help` order.
pub const OPTIONS: &[OptSpec<Args>] = &ALL;

/// Scans hecd-init's `args` (without the program name), falling back to `env` for options not
/// given as flags. `env` is a parameter so tests need not touch the process environment.
pub fn parse(
    args: &[OsString],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Request, UsageError> {
    cli::scan(
        OPTIONS,
        Some("usage: hecd-init [OPTIONS] [--] COMMAND [ARGS...]"),
        args,
        env,
    )
}

/// `--version` output.
pub fn version_text() -> String {
    format!("hecd-init {}\n", env!("CARGO_PKG_VERSION"))
}

/// `--help` output, generated from [`OPTIONS`].
pub fn help_text() -> String {
    let mut out = format!(
        "hecd-init {}: PID 1 for containers that register themselves in etcd\n\n\
         Usage: hecd-init [OPTIONS] [--] COMMAND [ARGS...]\n\n\
         Starts COMMAND at once and supervises it like tini or dumb-init (signals, zombies, exit\n\
         status). With --etcd it also puts HOST:PORT under PREFIX/NAME in etcd, with a lease kept\n\
         alive while the app is healthy, and on SIGTERM deletes the key, drains, then passes the\n\
         signal on. Without --etcd it is a pure init.\n\n\
         Options (every long option may also be set as its environment variable; a flag wins;\n\
         durations: 10s, 500ms, 1.5 (seconds), 2m, 1h, 1d):\n",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str(&cli::options_help(OPTIONS));
    out.push_str(
        "\nEnvironment: HECD_LOG sets the log filter (env_logger syntax; default warn for a pure init, info when registering);\n\
         HECD_ETCD_PASSWORD gives the etcd password. Logs go to stderr, prefixed \"hecd-init:\".\n\n\
         Exit status: the app's exit code; 128+N if it was killed by signal N; 126 if COMMAND\n\
         cannot be executed; 127 if it is not found; 2 for a usage error; 1 if hecd-init failed\n\
         before starting COMMAND.\n\n\
         Example Dockerfile:\n\
         \x20 COPY --from=hecd-init /hecd-init /hecd-init\n\
         \x20 ENV HECD_ETCD=http://etcd:2379\n\
         \x20 ENTRYPOINT [\"/hecd-init\", \"--\"]\n\
         \x20 CMD [\"my-server\", \"--listen\", \":8080\"]\n",
    );
    out
}

/// Everything hecd-init needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The app's command line; never empty.
    pub command: Vec<OsString>,
    /// Registration settings; `None` means pure init.
    pub registration: Option<Registration>,
    /// Wait between deregistering and passing the stop signal on.
    pub drain: Duration,
    /// SIGKILL the app this long after passing the stop signal on.
    pub stop_timeout: Option<Duration>,
    /// Signal only the direct child, not its process group.
    pub single_child: bool,
    /// `--rewrite` pairs.
    pub rewrites: Rewrites,
    /// env_logger filter.
    pub log_filter: String,
    /// Changes to the environment the app starts with: each variable removed (`None`) or set
    /// to a value (`Some`), so hecd-init's secrets never reach the app.
    pub app_env: Vec<(String, Option<String>)>,
    /// `--user`, checked for form (looked up in the image's files by `user::resolve`), with
    /// the option or variable it came from.
    pub user: Option<(UserSpec, String)>,
    /// `--no-new-privileges`: the app starts with the no-new-privileges bit.
    pub no_new_privileges: bool,
}

/// Settings of registration in etcd (present only with `--etcd`). (`Default` only so that
/// [`Args`] can start empty: [`build`] is the way to one.)
#[derive(Clone, Debug, Default)]
pub struct Registration {
    /// `--etcd`: never empty in a [`Config`].
    pub endpoints: Vec<Endpoint>,
    pub api: EtcdApi,
    /// Normalised: leading `/`, no trailing `/` (empty for `/`).
    pub prefix: String,
    pub name: Option<String>,
    pub port: Option<u16>,
    pub advertise: Advertise,
    pub mode: Mode,
    pub host_ip: Option<IpAddr>,
    pub docker: Option<DockerApi>,
    pub ttl: Duration,
    pub check: Check,
    pub check_interval: Duration,
    /// TLS files and credentials (the password file read before the app starts).
    pub access: EtcdAccess,
    /// `--lb-prefix`, normalised: load balancers' announcements and drain confirmations.
    pub lb_prefix: String,
    /// `--route`: this instance's service's routes, sorted, without repeats.
    pub routes: Vec<Route>,
}

/// The variables that are not options: `HECD_ETCD_PASSWORD` and `HECD_LOG`.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    pub password: Option<String>,
    pub log: Option<String>,
}

/// Reads every option through its row ([`cli::read`]), then applies the rules between
/// options. Every bad value is reported; the rules between options are looked at once every
/// value is good (so a bad value is not reported again as a rule it seems to break).
pub fn build(raw: RawArgs, extra: Extra) -> Result<Config, Vec<UsageError>> {
    let Extra { password, log } = extra;
    let mut errors = Errors::default();
    errors.0.extend(raw.unknown.iter().cloned());
    let args: Args = cli::read(OPTIONS, &raw, "", &mut errors);
    let log = checked_log_filter(log, &mut errors);
    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    let had_password_variable = password.is_some();
    let verbose = args.shared.verbose;
    let mut reg = args.reg;
    reg.access = etcd_access(args.shared.access, &raw, password, &mut errors);
    errors.take(lb_prefix_apart(
        &reg.lb_prefix,
        raw.get("lb-prefix"),
        &reg.prefix,
    ));
    let routes = std::mem::take(&mut reg.routes);
    let first_route = raw.all("route").first();
    let routes = errors.take(routes_rules(routes, first_route, &reg.prefix, reg.api));
    reg.routes = routes.unwrap_or_default();
    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    // Registering is --etcd given (its parser gives at least one endpoint or an error).
    let registration = (!reg.endpoints.is_empty()).then_some(reg);
    let registering = registration.is_some();
    let log_filter = match (verbose, log) {
        (0, Some(filter)) => filter,
        // A pure init is silent like tini and dumb-init: the terminal and the container's log
        // belong to the app. Registering, info shows the registration events.
        (0, None) if registering => "info".into(),
        (0, None) => "warn".into(),
        // -v is about hecd-init: the HTTP and TLS crates stay at warnings (their debug lines
        // are per-request plumbing; their trace lines could show what hecd-init never logs).
        (1, _) => "warn,hecd_init=debug".into(),
        _ => "warn,hecd_init=trace".into(),
    };
    let default_drain = if registering {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    Ok(Config {
        command: raw.command.clone(),
        registration,
        drain: args.drain.unwrap_or(default_drain),
        stop_timeout: args.stop_timeout,
        single_child: args.single_child,
        rewrites: Rewrites::new(args.rewrites, !args.single_child),
        log_filter,
        app_env: app_env(&raw, had_password_variable),
        user: args.user,
        no_new_privileges: args.no_new_privileges,
    })
}

/// What changes in the app's environment: secrets are hecd-init's, not the app's. The
/// password variable goes, and a password in `HECD_ETCD_USER` is cut off (the user name stays,
/// it may matter to a wrapper script).
fn app_env(raw: &RawArgs, had_password_variable: bool) -> Vec<(String, Option<String>)> {
    let mut env = Vec::new();
    if had_password_variable {
        env.push(("HECD_ETCD_PASSWORD".to_owned(), None));
    }
    if let Some(g) = raw
        .get("etcd-user")
        .filter(|g| g.source.starts_with("HECD_"))
        && let Some((user, _)) = g.value.split_once(':')
    {
        env.push((g.source.clone(), Some(user.to_owned())));
    }
    env
}

fn parse_ttl(g: &Given) -> Result<Duration, UsageError> {
    // etcd leases and v2 ttl= take whole seconds.
    parse_duration(&g.value)
        .filter(|d| d.subsec_nanos() == 0 && d.as_secs() >= 1)
        .ok_or_else(|| expected(g, "whole seconds of at least 1, such as 10s"))
}

fn parse_ip(g: &Given) -> Result<IpAddr, UsageError> {
    let t = g.value.trim_start_matches('[').trim_end_matches(']');
    t.parse()
        .map_err(|_| expected(g, "an IP address such as 192.0.2.10 or fd00::1"))
}

/// `--name`: what every balancer serves (see [`contract::check_name`]).
fn parse_name(g: &Given) -> Result<String, UsageError> {
    contract::check_name(&g.value)
        .map(|()| g.value.clone())
        .map_err(|why| UsageError::new(&g.source, format!("{why}; got {:?}", g.value)))
}

/// The rules of `--route` (each route already parsed by its row; `first` is where the first
/// came from): none with the prefix `/` (the declaration's key names the service by its
/// prefix) or with `--etcd-api v2` (balancers read routes with v3), at most
/// [`contract::MAX_ROUTES`]. Sorted, without repeats.
fn routes_rules(
    mut routes: Vec<Route>,
    first: Option<&Given>,
    prefix: &str,
    api: EtcdApi,
) -> Result<Vec<Route>, UsageError> {
    if let Some(g) = first {
        if prefix.is_empty() {
            return Err(UsageError::new(
                &g.source,
                "needs a --prefix other than / (the route declaration names its service by the prefix)",
            ));
        }
        if api == EtcdApi::V2 {
            return Err(UsageError::new(
                &g.source,
                "needs the etcd v3 API (balancers read routes with v3); --etcd-api v2 was given",
            ));
        }
        if routes.len() > contract::MAX_ROUTES {
            return Err(UsageError::new(
                &g.source,
                format!("at most {} routes per instance", contract::MAX_ROUTES),
            ));
        }
    }
    routes.sort();
    routes.dedup();
    Ok(routes)
}

fn parse_rewrite(g: &Given) -> Result<(i32, i32), UsageError> {
    Rewrites::parse_pair(&g.value)
        .ok_or_else(|| expected(g, "FROM:TO signals such as TERM:QUIT or 15:3"))
}

fn parse_advertise(g: &Given) -> Result<Advertise, UsageError> {
    let form = "[HOST][:PORT] such as 10.0.0.5:8080, :8080, or [fd00::5]:8080";
    let v = g.value.trim();
    let (host, port) = split_host_port(v).ok_or_else(|| {
        if v.parse::<Ipv6Addr>().is_ok() {
            expected(
                g,
                "an IPv6 host in brackets, such as [fd00::5] or [fd00::5]:8080",
            )
        } else {
            expected(g, form)
        }
    })?;
    let port = port.map(|p| parse_port(p, g)).transpose()?;
    let is_ip = host.parse::<IpAddr>().is_ok();
    if !host.is_empty() && !is_ip {
        return Err(expected(
            g,
            "an IP address as HOST (balancers take IP:PORT only: HAProxy's runtime API cannot \
             move a server to a host name), such as 10.0.0.5:8080, :8080 or [fd00::5]:8080",
        ));
    }
    if host.is_empty() && port.is_none() {
        return Err(expected(g, form));
    }
    Ok(Advertise {
        host: (!host.is_empty()).then(|| host.to_owned()),
        port,
    })
}

fn parse_docker(g: &Given) -> Result<DockerApi, UsageError> {
    let form = "unix:///path/to/docker.sock or tcp://HOST:PORT";
    let v = g.value.trim();
    if let Some(path) = v.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(DockerApi::Unix(path.to_owned()));
        }
    } else if let Some(rest) = v
        .strip_prefix("tcp://")
        .or_else(|| v.strip_prefix("http://"))
    {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some((host, Some(port))) = split_host_port(rest)
            && let Ok(port) = port.parse::<u16>()
            && port != 0
            && (valid_host(host) || host.parse::<Ipv6Addr>().is_ok())
        {
            return Ok(DockerApi::Tcp {
                host: host.to_owned(),
                port,
            });
        }
    }
    Err(expected(g, form))
}

fn parse_check(g: &Given) -> Result<Check, UsageError> {
    match g.value.as_str() {
        "tcp" => Ok(Check::Tcp),
        "none" => Ok(Check::None),
        v => match v.strip_prefix("http:") {
            Some(path)
                if path.starts_with('/')
                    && !path.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(Check::Http(path.to_owned()))
            }
            _ => Err(expected(g, "tcp, none, or http:PATH such as http:/healthz")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Request;
    use std::collections::HashMap;

    fn build_with(args: &[&str], env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<OsString> = args
            .iter()
            .map(OsString::from)
            .chain([OsString::from("app")])
            .collect();
        let Ok(Request::Run(raw)) = parse(&args, |k| env.get(k).map(OsString::from)) else {
            panic!("scan failed for {args:?}");
        };
        let extra = Extra {
            password: env.get("HECD_ETCD_PASSWORD").cloned(),
            log: env.get("HECD_LOG").cloned(),
        };
        build(raw, extra).map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    /// A row whose default is a value: `cli::read` parses that text when the option is not
    /// given, so `--help` and the program agree by construction; and giving the same text
    /// changes nothing (no row's parser, no rule, tells the default from the same value given).
    /// The rows whose default is a sentence are named, so a new one is one on purpose: each
    /// is worked out when hecd-init runs (or is off) and has a test of its own.
    #[test]
    fn every_rows_default_is_what_the_parser_takes_without_it() {
        let base = ["--etcd", "http://e:2379"];
        let plain = format!("{:?}", build_with(&base, &[]).unwrap());
        for o in OPTIONS.iter().filter(|o| o.env) {
            if let Absent::Value(text) = o.default {
                let given = build_with(&base, &[(cli::env_name(o.long).as_str(), text)]);
                assert_eq!(format!("{:?}", given.unwrap()), plain, "--{}", o.long);
            }
        }
        let sentences: Vec<&str> = OPTIONS
            .iter()
            .filter(|o| matches!(o.default, Absent::Says(text) if !text.is_empty()))
            .map(|o| o.long)
            .collect();
        assert_eq!(sentences, COMPUTED_DEFAULTS);
    }

    /// The options whose `--help` default is a sentence: what they take is worked out when
    /// hecd-init starts (the container's name, the discovered address, the Docker socket if
    /// present, ...), or "none" or "off" means the option is off.
    const COMPUTED_DEFAULTS: &[&str] = &[
        "etcd",              // none: a pure init
        "name",              // the container's name, else the hostname
        "port",              // the port the app listens on
        "advertise",         // discovered
        "host-ip",           // the binding's HostIp, else the Swarm node address, else the gateway
        "docker",            // the socket, if present
        "route",             // none
        "drain",             // 2s when registering, else 0
        "stop-timeout",      // none
        "single-child",      // off
        "rewrite",           // TSTP, TTIN, TTOU → STOP, none with --single-child
        "user",              // none
        "no-new-privileges", // off
        "etcd-cacert",       // the system bundle, for https:// endpoints
        "etcd-cert",
        "etcd-key",
        "etcd-user",
        "etcd-password-file",
        "verbose", // off
    ];

    #[test]
    fn lb_prefix_lies_outside_the_server_prefix() {
        let reg = |args: &[&str]| {
            let mut all = vec!["--etcd", "http://e:2379"];
            all.extend_from_slice(args);
            build_with(&all, &[]).map(|c| c.registration.unwrap().lb_prefix)
        };
        assert_eq!(reg(&[]).unwrap(), "/hecd");
        assert_eq!(reg(&["--lb-prefix", "/lb/"]).unwrap(), "/lb");
        assert_eq!(
            reg(&["--prefix", "/app/servers", "--lb-prefix", "/app/serversx"]).unwrap(),
            "/app/serversx"
        );
        for bad in [
            &["--lb-prefix", "/app/servers/lbs"][..],
            &["--lb-prefix", "/app"],
            &["--lb-prefix", "/"],
            &["--prefix", "/", "--lb-prefix", "/hecd"],
        ] {
            let e = reg(bad).unwrap_err();
            assert!(e[0].starts_with("--lb-prefix: "), "{bad:?}: {e:?}");
        }
    }

    fn err(args: &[&str]) -> String {
        let errs = build_with(args, &[]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs[0].clone()
    }

    fn reg(args: &[&str]) -> Registration {
        let mut all = vec!["--etcd", "http://127.0.0.1:2379"];
        all.extend_from_slice(args);
        build_with(&all, &[]).unwrap().registration.unwrap()
    }

    /// Hostile command lines (every option with mutated values, stray dashes, binary, huge
    /// numbers) and variables: an error or a config, never a panic.
    #[test]
    fn hostile_command_lines_never_panic() {
        let mut m = crate::fuzz::Mutator::new(0x00c1_1a57);
        let values = [
            "http://[fd00::1]:2379,https://e:1",
            "10s",
            "1.5",
            "99999999999999999999ms",
            "RTMIN+1:USR1",
            "[::1]:80",
            "tcp://h:0",
            "http:/x",
            "USER:PASS",
            "",
        ];
        for round in 0..5_000usize {
            let mut args: Vec<OsString> = Vec::new();
            for _ in 0..(m.next() % 6) {
                let o = &OPTIONS[(m.next() as usize) % OPTIONS.len()];
                let flag = if m.next().is_multiple_of(3) {
                    format!(
                        "--{}={}",
                        o.long,
                        m.mutate(values[round % values.len()].as_bytes())
                    )
                } else {
                    format!("--{}", o.long)
                };
                args.push(OsString::from(m.mutate(flag.as_bytes())));
                let pick = (m.next() as usize) % values.len();
                args.push(OsString::from(m.mutate(values[pick].as_bytes())));
            }
            args.push(OsString::from("app"));
            let env_value = m.mutate(values[round % values.len()].as_bytes());
            let env = |k: &str| {
                (k == "HECD_TTL" || k == "HECD_REWRITE").then(|| OsString::from(&env_value))
            };
            if let Ok(Request::Run(raw)) = parse(&args, env) {
                let _ = build(raw, Extra::default());
            }
        }
    }

    #[test]
    fn defaults_for_pure_init() {
        let c = build_with(&[], &[]).unwrap();
        assert!(c.registration.is_none());
        assert_eq!(c.drain, Duration::ZERO);
        assert_eq!(c.stop_timeout, None);
        assert!(!c.single_child);
        // Silent like tini: warnings and errors only.
        assert_eq!(c.log_filter, "warn");
        assert_eq!(c.command, vec![OsString::from("app")]);
    }

    #[test]
    fn registering_logs_at_info_and_secrets_stay_out_of_the_app_env() {
        let c = build_with(
            &["--etcd", "http://127.0.0.1:2379"],
            &[
                ("HECD_ETCD_USER", "root:s3cret"),
                ("HECD_ETCD_PASSWORD", "other"),
            ],
        )
        .unwrap();
        assert_eq!(c.log_filter, "info");
        assert_eq!(
            c.app_env,
            vec![
                ("HECD_ETCD_PASSWORD".to_owned(), None),
                ("HECD_ETCD_USER".to_owned(), Some("root".to_owned())),
            ]
        );
        // A user given as a flag leaves the environment alone (nothing of it is there).
        let c = build_with(&["--etcd-user", "root:pw"], &[]).unwrap();
        assert!(c.app_env.is_empty());
    }

    #[test]
    fn password_file_needs_a_user_without_inline_password() {
        let r = reg(&[
            "--etcd-user",
            "root",
            "--etcd-password-file",
            "/run/secrets/pw",
        ]);
        assert_eq!(r.access.password_file.as_deref(), Some("/run/secrets/pw"));
        assert_eq!(
            err(&["--etcd", "http://e:2379", "--etcd-password-file", "/x"]),
            "--etcd-password-file: needs --etcd-user USER (the file holds only the password)"
        );
        assert_eq!(
            err(&[
                "--etcd",
                "http://e:2379",
                "--etcd-user",
                "u:p",
                "--etcd-password-file",
                "/x"
            ]),
            "--etcd-password-file: --etcd-user USER:PASSWORD already gives a password; give USER alone"
        );
    }

    #[test]
    fn defaults_when_registering() {
        let c = build_with(&["--etcd", "http://10.0.0.1:2379,https://[fd00::1]"], &[]).unwrap();
        assert_eq!(c.drain, Duration::from_secs(2));
        let r = c.registration.unwrap();
        assert_eq!(
            r.endpoints[0],
            Endpoint {
                tls: false,
                host: "10.0.0.1".into(),
                port: 2379
            }
        );
        assert_eq!(
            r.endpoints[1],
            Endpoint {
                tls: true,
                host: "fd00::1".into(),
                port: 443
            }
        );
        assert_eq!(r.prefix, "/app/servers");
        assert_eq!(r.ttl, Duration::from_secs(10));
        assert_eq!(r.check, Check::Tcp);
        assert_eq!(r.check_interval, Duration::from_secs(2));
        assert_eq!((r.api, r.mode), (EtcdApi::Auto, Mode::Auto));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        for bad in [
            "", "ten", "-1", "1e3", "inf", "NaN", "25h", "5 s", "25m0", "1441m", "h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_option_as_flag_and_variable() {
        let c = build_with(
            &[
                "--drain",
                "1s",
                "--stop-timeout",
                "3",
                "--single-child",
                "--rewrite",
                "TERM:QUIT",
                "-v",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            (c.drain, c.stop_timeout),
            (Duration::from_secs(1), Some(Duration::from_secs(3)))
        );
        assert!(c.single_child);
        assert_eq!(c.rewrites.map(15), 3);
        assert_eq!(c.log_filter, "warn,hecd_init=debug");
        let c = build_with(
            &[],
            &[
                ("HECD_DRAIN", "250ms"),
                ("HECD_STOP_TIMEOUT", "1m"),
                ("HECD_SINGLE_CHILD", "yes"),
                ("HECD_REWRITE", "USR1:USR2,HUP:0"),
                ("HECD_VERBOSE", "2"),
            ],
        )
        .unwrap();
        assert_eq!(
            (c.drain, c.stop_timeout),
            (Duration::from_millis(250), Some(Duration::from_secs(60)))
        );
        assert!(c.single_child);
        assert_eq!((c.rewrites.map(10), c.rewrites.map(1)), (12, 0));
        assert_eq!(c.log_filter, "warn,hecd_init=trace");
        let env = [
            ("HECD_ETCD", "http://e:2379"),
            ("HECD_ETCD_API", "v2"),
            ("HECD_PREFIX", "/svc/web/"),
            ("HECD_NAME", "web-1"),
            ("HECD_PORT", "8080"),
            ("HECD_ADVERTISE", "[fd00::5]:9000"),
            ("HECD_MODE", "published"),
            ("HECD_HOST_IP", "192.0.2.7"),
            ("HECD_DOCKER", "tcp://proxy:2375"),
            ("HECD_TTL", "30s"),
            ("HECD_CHECK", "http:/healthz"),
            ("HECD_CHECK_INTERVAL", "500ms"),
            ("HECD_ETCD_CACERT", "/ca.pem"),
            ("HECD_ETCD_CERT", "/c.pem"),
            ("HECD_ETCD_KEY", "/k.pem"),
            ("HECD_ETCD_USER", "root"),
            ("HECD_ETCD_PASSWORD", "s3cret"),
            ("HECD_LOG", "hecd_init=trace"),
        ];
        let c = build_with(&[], &env).unwrap();
        assert_eq!(c.log_filter, "hecd_init=trace");
        let r = c.registration.unwrap();
        assert_eq!(r.api, EtcdApi::V2);
        assert_eq!(r.prefix, "/svc/web");
        assert_eq!(r.name.as_deref(), Some("web-1"));
        assert_eq!(r.port, Some(8080));
        assert_eq!(
            r.advertise,
            Advertise {
                host: Some("fd00::5".into()),
                port: Some(9000)
            }
        );
        assert_eq!(r.mode, Mode::Published);
        assert_eq!(r.host_ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            r.docker,
            Some(DockerApi::Tcp {
                host: "proxy".into(),
                port: 2375
            })
        );
        assert_eq!(r.ttl, Duration::from_secs(30));
        assert_eq!(r.check, Check::Http("/healthz".into()));
        assert_eq!(r.check_interval, Duration::from_millis(500));
        assert_eq!(
            (
                r.access.cacert.as_deref(),
                r.access.cert.as_deref(),
                r.access.key.as_deref()
            ),
            (Some("/ca.pem"), Some("/c.pem"), Some("/k.pem"))
        );
        let creds = r.access.credentials.unwrap();
        assert_eq!(
            (creds.user.as_str(), creds.password.as_deref()),
            ("root", Some("s3cret"))
        );
        assert!(!format!("{creds:?}").contains("s3cret"));
    }

    #[test]
    fn advertise_forms() {
        assert_eq!(
            reg(&["--advertise", "10.0.0.5"]).advertise,
            Advertise {
                host: Some("10.0.0.5".into()),
                port: None
            }
        );
        assert_eq!(
            reg(&["--advertise", ":8080"]).advertise,
            Advertise {
                host: None,
                port: Some(8080)
            }
        );
        assert_eq!(
            reg(&["--advertise", "[fd00::5]"]).advertise,
            Advertise {
                host: Some("fd00::5".into()),
                port: None
            }
        );
        // Balancers take IP:PORT only: a host name is refused at start, not skipped later.
        assert!(
            err(&["--etcd", "http://e:1", "--advertise", "web.local:80"]).starts_with(
                "--advertise: expected an IP address as HOST (balancers take IP:PORT only"
            )
        );
    }

    #[test]
    fn help_shows_the_defaults_the_code_uses() {
        // Defaults with a value are parsed from the table itself (`cli::read`); the ones that
        // are sentences are checked here.
        let help = help_text();
        let cacert = OPTIONS.iter().find(|o| o.long == "etcd-cacert").unwrap();
        assert!(
            matches!(cacert.default, Absent::Says(t) if t.starts_with(crate::access::SYSTEM_CA_BUNDLE))
        );
        assert!(help.contains("default warn for a pure init, info when registering"));
        let c = build_with(&[], &[]).unwrap();
        assert_eq!(c.log_filter, "warn");
        let c = build_with(&["--etcd", "http://e:1"], &[]).unwrap();
        assert_eq!(c.log_filter, "info");
        let r = c.registration.unwrap();
        assert_eq!(r.prefix, crate::contract::DEFAULT_PREFIX);
        assert_eq!(r.lb_prefix, crate::contract::DEFAULT_LB_PREFIX);
        assert_eq!((r.ttl.as_secs(), r.check_interval.as_secs()), (10, 2));
        assert_eq!(c.drain, Duration::from_secs(2));
        // --rewrite: the job-control signals go on as STOP unless --single-child.
        assert!(help.contains("default: TSTP, TTIN, TTOU → STOP (none with --single-child)"));
        let stop =
            |c: &Config| [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU].map(|s| c.rewrites.map(s));
        assert_eq!(stop(&build_with(&[], &[]).unwrap()), [libc::SIGSTOP; 3]);
        let single = build_with(&["--single-child"], &[]).unwrap();
        assert_eq!(stop(&single), [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU]);
    }

    #[test]
    fn every_problem_is_reported() {
        let errs = build_with(&["--nope", "--ttl", "x", "--check", "y"], &[]).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[0], "--nope: unknown option (see --help)");
        assert!(errs[1].starts_with("--ttl: "), "{errs:?}");
        assert!(errs[2].starts_with("--check: "), "{errs:?}");
        // A rule between options waits for good values: the certificate without its key is
        // said once the TTL is fixed, not together with it.
        let errs = build_with(&["--etcd-cert", "/c.pem", "--ttl", "x"], &[]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("--ttl: "), "{errs:?}");
        assert_eq!(
            err(&["--etcd-cert", "/c.pem", "--ttl", "1"]),
            "--etcd-cert: expected --etcd-cert and --etcd-key together"
        );
    }

    #[test]
    fn names_and_routes_follow_the_contract() {
        let e = |args: &[&str]| {
            let mut all = vec!["--etcd", "http://e:1"];
            all.extend_from_slice(args);
            err(&all)
        };
        for bad in ["odd@name+1", "web[1]", "ünï", ".", "..", "_x", "a b"] {
            assert!(e(&["--name", bad]).starts_with("--name: "), "{bad}");
        }
        assert_eq!(
            e(&["--name", "web@x"]),
            r#"--name: '@' is not allowed: an instance name takes letters, digits, '-', '_', '.' and ':' (HAProxy's server names; a confd + haproxy -c pipeline rejects anything else); got "web@x""#
        );
        assert_eq!(
            reg(&["--name", "web-1.a:b_c"]).name.as_deref(),
            Some("web-1.a:b_c")
        );
        let r = reg(&["--route", "API.example.com", "--route", "example.com/api"]);
        let shown: Vec<String> = r.routes.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["api.example.com", "example.com/api"]);
        let r = build_with(
            &["--etcd", "http://e:1", "true"],
            &[("HECD_ROUTE", "a.example.com, b.example.com/x")],
        )
        .unwrap()
        .registration
        .unwrap();
        assert_eq!(r.routes.len(), 2);
        for bad in [
            "a b.com",
            "a.com/x y",
            "/api",
            "a.com:80",
            &"a".repeat(5000),
        ] {
            assert!(e(&["--route", bad]).starts_with("--route: "), "{bad:?}");
        }
        assert!(e(&["--route", "a.com", "--prefix", "/"]).starts_with("--route: needs a --prefix"));
        assert!(
            e(&["--route", "a.com", "--etcd-api", "v2"])
                .starts_with("--route: needs the etcd v3 API")
        );
        let errs = build_with(
            &["--etcd", "http://e:1", "true"],
            &[("HECD_ROUTE", "a.com,b c")],
        )
        .unwrap_err();
        assert!(errs[0].starts_with("HECD_ROUTE: "), "{errs:?}");
    }

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(reg(&["--prefix", "app/servers/"]).prefix, "/app/servers");
        assert_eq!(reg(&["--prefix", "/"]).prefix, "");
    }

    #[test]
    fn bad_values_name_the_option_and_the_form() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--ttl", "ten"],
                r#"--ttl: expected whole seconds of at least 1, such as 10s, got "ten""#,
            ),
            (
                &["--ttl", "1.5s"],
                r#"--ttl: expected whole seconds of at least 1, such as 10s, got "1.5s""#,
            ),
            (
                &["--drain", "-1"],
                r#"--drain: expected a duration such as 2s, 500ms or 0 (at most 24h), got "-1""#,
            ),
            (
                &["--stop-timeout", "0"],
                r#"--stop-timeout: expected a positive duration such as 10s, 500ms or 1.5 (at most 24h), got "0""#,
            ),
            (
                &["--check-interval", "25h"],
                r#"--check-interval: expected a positive duration such as 10s, 500ms or 1.5 (at most 24h), got "25h""#,
            ),
            (
                &["--etcd", "etcd:2379"],
                r#"--etcd: expected http:// or https:// URLs such as http://etcd:2379, comma-separated, got "etcd:2379""#,
            ),
            (
                &["--etcd", "http://e:99999"],
                r#"--etcd: expected http:// or https:// URLs such as http://etcd:2379, comma-separated, got "http://e:99999""#,
            ),
            (
                &["--etcd", ","],
                r#"--etcd: expected http:// or https:// URLs such as http://etcd:2379, comma-separated, got ",""#,
            ),
            (
                &["--etcd-api", "v4"],
                r#"--etcd-api: expected one of auto, v3, v2, got "v4""#,
            ),
            (
                &["--mode", "host"],
                r#"--mode: expected one of auto, container, published, got "host""#,
            ),
            (
                &["--port", "0"],
                r#"--port: expected a port from 1 to 65535, got "0""#,
            ),
            (
                &["--port", "http"],
                r#"--port: expected a port from 1 to 65535, got "http""#,
            ),
            (
                &["--advertise", "fd00::5"],
                r#"--advertise: expected an IPv6 host in brackets, such as [fd00::5] or [fd00::5]:8080, got "fd00::5""#,
            ),
            (
                &["--advertise", "h:0"],
                r#"--advertise: expected a port from 1 to 65535, got "h:0""#,
            ),
            (
                &["--advertise", "a b"],
                r#"--advertise: expected an IP address as HOST (balancers take IP:PORT only: HAProxy's runtime API cannot move a server to a host name), such as 10.0.0.5:8080, :8080 or [fd00::5]:8080, got "a b""#,
            ),
            (
                &["--host-ip", "example.com"],
                r#"--host-ip: expected an IP address such as 192.0.2.10 or fd00::1, got "example.com""#,
            ),
            (
                &["--docker", "/var/run/docker.sock"],
                r#"--docker: expected unix:///path/to/docker.sock or tcp://HOST:PORT, got "/var/run/docker.sock""#,
            ),
            (
                &["--check", "http:healthz"],
                r#"--check: expected tcp, none, or http:PATH such as http:/healthz, got "http:healthz""#,
            ),
            (
                &["--name", "a/b"],
                r#"--name: '/' is not allowed: an instance name takes letters, digits, '-', '_', '.' and ':' (HAProxy's server names; a confd + haproxy -c pipeline rejects anything else); got "a/b""#,
            ),
            (
                &["--prefix", "/a b"],
                r#"--prefix: expected a key path such as /app/servers, got "/a b""#,
            ),
            (
                &["--rewrite", "TERM"],
                r#"--rewrite: expected FROM:TO signals such as TERM:QUIT or 15:3, got "TERM""#,
            ),
            (
                &["--rewrite", "TERM:NOPE"],
                r#"--rewrite: expected FROM:TO signals such as TERM:QUIT or 15:3, got "TERM:NOPE""#,
            ),
            (
                &["--etcd-cert", "/c.pem"],
                "--etcd-cert: expected --etcd-cert and --etcd-key together",
            ),
            (
                &["--etcd-user", ":pw"],
                "--etcd-user: expected USER or USER:PASSWORD",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(err(args), *want, "{args:?}");
        }
    }

    #[test]
    fn variables_are_named_in_errors() {
        let errs =
            build_with(&[], &[("HECD_TTL", "ten"), ("HECD_SINGLE_CHILD", "maybe")]).unwrap_err();
        assert_eq!(
            errs,
            [
                r#"HECD_TTL: expected whole seconds of at least 1, such as 10s, got "ten""#,
                r#"HECD_SINGLE_CHILD: expected true or false (1/0, yes/no, on/off), got "maybe""#,
            ]
        );
    }
}
