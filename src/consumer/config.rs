//! hecd-haproxy's options: the table (one row per option: name, variable, `--help` line,
//! default and parser, for `--help`, the scanner and the README test) and the validated
//! [`Config`], built by [`parse`] with the rules between options. Same conventions as
//! hecd-init: every long option is also `HECD_<NAME>`, a flag wins, one line naming the option
//! on a bad value, exit status 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::access::EtcdAccess;
use crate::cli::{
    self, Absent, Given, OptSpec, RawArgs, Request, flag, opt, push, put, repeatable,
};
use crate::contract;
use crate::error::{Errors, UsageError};
use crate::etcd::Endpoint;
use crate::haproxy::{Frontend, TcpListener};
use crate::options::{
    Shared, Shares, checked_log_filter, etcd_access, etcd_access_rows, expected, lb_prefix_apart,
    parse_bool, parse_duration_at_least, parse_duration_upto, parse_endpoints, parse_key_segment,
    parse_prefix, split_host_port, valid_host, verbose,
};

/// How hecd-haproxy is called, for the error about a required option.
const USAGE: &str = "usage: hecd-haproxy --etcd URL[,URL...] --listen ADDR:PORT --dir DIR [--prefix PATH] (see --help)";

/// Each option's value as its row's parser left it (see [`cli::read`]), before the rules
/// between options: straight into the [`Config`] where an option is a field of it, else in a
/// field of its own. It starts as `Args::default()`: a row with a value default
/// ([`Absent::Value`]) or a required one overwrites its field before anything reads it; the
/// others start off, none or empty.
#[derive(Debug, Default)]
pub struct Args {
    config: Config,
    /// `--tcp`: (bind address, prefix, as given), in the order given.
    tcp: Vec<(String, String, Given)>,
    no_redirect: bool,
    acme: Option<String>,
    acme_domains: Vec<String>,
    acme_email: Option<String>,
    acme_cacert: Option<String>,
    acme_renew_before: Duration,
    cert_prefix: String,
    shared: Shared,
}

impl Shares for Args {
    fn shared(&mut self) -> &mut Shared {
        &mut self.shared
    }
}

/// hecd-haproxy's own rows, before the shared etcd access rows.
const OWN: [OptSpec<Args>; 23] = [
    opt(
        "etcd",
        "URL[,URL...]",
        Absent::Required,
        "etcd v3 client endpoints, http:// or https://; tried in an order drawn from --lb-id",
        |g, a| put(&mut a.config.endpoints, parse_endpoints(g)),
    ),
    opt(
        "listen",
        "ADDR:PORT",
        Absent::Required,
        "HAProxy's frontend bind address, e.g. :80 or 0.0.0.0:8080",
        |g, a| put(&mut a.config.frontend.listen, bind_address(g)),
    ),
    opt(
        "dir",
        "DIR",
        Absent::Required,
        "working directory: haproxy.cfg, routes.map, admin.sock, runtime-N.sock, servers.state, haproxy.pid",
        |g, a| put(&mut a.config.frontend.dir, work_dir(g)),
    ),
    opt(
        "prefix",
        "PATH",
        Absent::Value(contract::DEFAULT_PREFIX),
        "the default service's key prefix (what no route matches); each PREFIX/NAME = HOST:PORT is a server",
        |g, a| put(&mut a.config.prefix, parse_prefix(g)),
    ),
    opt(
        "check-inter",
        "DURATION",
        Absent::Value("500ms"),
        "HAProxy health-check interval (fall 2, rise 1)",
        |g, a| {
            let inter = parse_duration_at_least(g, Duration::from_millis(10));
            put(&mut a.config.frontend.check_inter, inter)
        },
    ),
    opt(
        "stats",
        "ADDR:PORT",
        Absent::Says("none"),
        "serve HAProxy's stats page at http://ADDR:PORT/admin-status and Prometheus metrics at /metrics",
        |g, a| put(&mut a.config.frontend.stats, bind_address(g).map(Some)),
    ),
    opt(
        "drain-timeout",
        "DURATION",
        Absent::Value("30s"),
        "longest wait for a removed server's open connections before it is cut",
        |g, a| {
            put(
                &mut a.config.drain_timeout,
                parse_duration_at_least(g, Duration::ZERO),
            )
        },
    ),
    repeatable(opt(
        "tcp",
        "ADDR:PORT=PREFIX",
        Absent::Says("none"),
        "a TCP listener for the service under PREFIX (its servers added, drained and confirmed like HTTP ones, checked by connecting); repeatable, comma-separated in the variable",
        |g, a| push(&mut a.tcp, tcp_listener(g)),
    )),
    opt(
        "tunnel-timeout",
        "DURATION",
        Absent::Value("1h"),
        "longest idle time of an upgraded connection (WebSocket and the like) before it is closed",
        |g, a| {
            let timeout = parse_duration_at_least(g, Duration::from_secs(1));
            put(&mut a.config.frontend.tunnel_timeout, timeout)
        },
    ),
    opt(
        "https",
        "ADDR:PORT",
        Absent::Says("none"),
        "an HTTPS listener (TLS 1.2/1.3, HTTP/2), routed like --listen; the certificate is chosen by SNI, no match fails the handshake",
        |g, a| put(&mut a.config.frontend.https, bind_address(g).map(Some)),
    ),
    opt(
        "certs",
        "DIR",
        Absent::Says("none (required with --https)"),
        "the certificates for --https: each *.pem file a chain and its key, serving its DNS names; followed, changes applied without a reload",
        |g, a| put(&mut a.config.certs, certs_dir(g).map(Some)),
    ),
    flag(
        "no-redirect",
        "serve plain HTTP for hosts that have a certificate too, instead of a 308 to https://",
        |g, a| put(&mut a.no_redirect, parse_bool(g)),
    ),
    opt(
        "hsts",
        "DURATION",
        Absent::Says("none"),
        "add Strict-Transport-Security: max-age=DURATION to HTTPS answers",
        |g, a| put(&mut a.config.frontend.hsts, parse_hsts(g).map(Some)),
    ),
    opt(
        "acme",
        "URL",
        Absent::Says("none"),
        "an ACME (RFC 8555) CA's directory, https://: certificates for the declared hosts under --acme-domains, by HTTP-01, shared by every balancer through etcd",
        |g, a| put(&mut a.acme, acme_directory(g).map(Some)),
    ),
    opt(
        "acme-domains",
        "SUFFIX[,SUFFIX...]",
        Absent::Says("none (required with --acme)"),
        "only hosts equal to or under these get ACME certificates",
        |g, a| put(&mut a.acme_domains, acme_domains(g)),
    ),
    opt(
        "acme-email",
        "EMAIL",
        Absent::Says("none"),
        "the ACME account's contact (the CA's expiry notices)",
        |g, a| put(&mut a.acme_email, email(g).map(Some)),
    ),
    opt(
        "acme-cacert",
        "FILE",
        Absent::Says("the system bundle"),
        "CA bundle to verify the ACME CA's directory",
        |g, a| put(&mut a.acme_cacert, Ok(Some(g.value.clone()))),
    ),
    opt(
        "acme-renew-before",
        "DURATION",
        Absent::Value("30d"),
        "renew an ACME certificate when less than this is left (less up to a third, per host)",
        |g, a| {
            let before = parse_duration_upto(&g.value, Duration::from_secs(3650 * 86_400))
                .filter(|d| d.as_secs() >= 1)
                .ok_or_else(|| expected(g, "a duration from 1s to 3650d, such as 30d"));
            put(&mut a.acme_renew_before, before)
        },
    ),
    opt(
        "cert-prefix",
        "PATH",
        Absent::Value(crate::acme::keys::DEFAULT_CERT_PREFIX),
        "the certificate store in etcd: PATH/account, PATH/certs/HOST, PATH/locks/HOST, PATH/challenges/TOKEN",
        |g, a| {
            let prefix = parse_prefix(g)?;
            if prefix.is_empty() {
                return Err(expected(g, "a key path such as /hecd-certs, not /"));
            }
            put(&mut a.cert_prefix, Ok(prefix))
        },
    ),
    opt(
        "lb-id",
        "ID",
        Absent::Says("the hostname"),
        "this balancer's id in its announcement and confirmations (unique per balancer)",
        |g, a| put(&mut a.config.lb_id, parse_key_segment(g)),
    ),
    opt(
        "lb-prefix",
        "PATH",
        Absent::Value(contract::DEFAULT_LB_PREFIX),
        "read routes under PATH/routes/; announce under PATH/lbs/ID; confirm drains under PATH/drained/PREFIX/NAME/ID",
        |g, a| put(&mut a.config.lb_prefix, parse_prefix(g)),
    ),
    opt(
        "max-services",
        "N",
        Absent::Value("1000"),
        "most services followed (the default one included); declarations naming more are skipped",
        |g, a| {
            let n = g
                .value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=100_000).contains(n));
            let n = n.ok_or_else(|| expected(g, "a number of services from 1 to 100000"));
            put(&mut a.config.max_services, n)
        },
    ),
    opt(
        "haproxy",
        "PATH",
        Absent::Value("haproxy"),
        "the HAProxy 2.x binary to run (a bare name is looked up in PATH)",
        |g, a| put(&mut a.config.haproxy, Ok(PathBuf::from(&g.value))),
    ),
];

/// The last rows: `-v`, `--help`, `--version`.
const LAST: [OptSpec<Args>; 3] = [
    verbose("debug lines (twice: trace); HECD_LOG takes an env_logger filter (default: info)"),
    cli::help(),
    cli::version(),
];

const WITH_ETCD: [OptSpec<Args>; 28] = cli::join(OWN, etcd_access_rows());
const ALL: [OptSpec<Args>; 31] = cli::join(WITH_ETCD, LAST);

/// Every option hecd-haproxy accepts, in `--help` order.
pub const OPTIONS: &[OptSpec<Args>] = &ALL;

/// Everything hecd-haproxy needs to run. (`Default` only so that [`Args`] can start empty:
/// [`parse`] is the way to a config.)
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub endpoints: Vec<Endpoint>,
    /// Normalised: leading `/`, no trailing `/`.
    pub prefix: String,
    pub frontend: Frontend,
    pub drain_timeout: Duration,
    /// `--lb-id`: a key segment (the hostname when not given).
    pub lb_id: String,
    /// `--lb-prefix`, normalised.
    pub lb_prefix: String,
    pub haproxy: PathBuf,
    /// `--certs`: the directory of certificate files, made absolute.
    pub certs: Option<PathBuf>,
    /// `--acme` and its options.
    pub acme: Option<AcmeConfig>,
    /// `--max-services`.
    pub max_services: usize,
    /// TLS files and credentials.
    pub access: EtcdAccess,
    pub log_filter: String,
    /// Where the command line holds a password, for `main` to overwrite (see
    /// `cli::RawArgs::password_spans`).
    pub password_spans: Vec<(usize, std::ops::Range<usize>)>,
}

/// ACME: the CA and the store.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// `--acme`: the directory URL.
    pub directory: String,
    /// `--acme-domains`, lower case.
    pub domains: Vec<String>,
    pub email: Option<String>,
    /// TLS to the CA (`--acme-cacert`, else the system bundle).
    pub tls: crate::http::Tls,
    pub renew_before: Duration,
    /// `--cert-prefix`, normalised.
    pub cert_prefix: String,
}

/// What the command line asks for.
pub enum Parsed {
    Help,
    Version,
    Run(Box<Config>),
}

/// Scans and validates `args` (without the program name); `env` reads a variable. Every option
/// is read through its row ([`cli::read`]); the rules between options are looked at once
/// every value is good (so a bad value is not reported again as a rule it seems to break).
pub fn parse(
    args: &[OsString],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Parsed, Vec<UsageError>> {
    let password = env("HECD_ETCD_PASSWORD").and_then(|p| p.into_string().ok());
    let log = env("HECD_LOG").and_then(|p| p.into_string().ok());
    let raw = match cli::scan(OPTIONS, None, args, env) {
        Ok(Request::Run(raw)) => raw,
        Ok(Request::Help) => return Ok(Parsed::Help),
        Ok(Request::Version) => return Ok(Parsed::Version),
        Err(e) => return Err(vec![e]),
    };
    let mut errors = Errors::default();
    errors.0.extend(raw.unknown.iter().cloned());
    let mut args: Args = cli::read(OPTIONS, &raw, USAGE, &mut errors);
    let log = checked_log_filter(log, &mut errors);
    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    let mut config = std::mem::take(&mut args.config);
    let frontend = &config.frontend;
    let needs =
        |long: &str, what: &str| UsageError::new(format!("--{long}"), format!("needs {what}"));
    match (frontend.https.is_some(), config.certs.is_some()) {
        (true, false) if args.acme.is_none() => errors.0.push(needs(
            "https",
            "--certs DIR (the directory of its certificates) or --acme URL",
        )),
        (false, true) => errors.0.push(needs("certs", "--https ADDR:PORT")),
        _ => {}
    }
    if frontend.https.is_none() {
        // `HECD_NO_REDIRECT=0` says what no flag says: only turning it on needs --https.
        if args.no_redirect {
            errors.0.push(needs("no-redirect", "--https ADDR:PORT"));
        }
        if frontend.hsts.is_some() {
            errors.0.push(needs("hsts", "--https ADDR:PORT"));
        }
    }
    let acme = errors.take(acme_rules(&args, frontend.https.is_some(), &raw));
    errors.take(lb_prefix_apart(
        &config.lb_prefix,
        raw.get("lb-prefix"),
        &config.prefix,
    ));
    let tcp = errors.take(tcp_rules(args.tcp, &config.prefix));
    // The certificate store holds private keys: apart from every tree others read.
    if let (Some(Some(a)), Some(tcp)) = (&acme, &tcp) {
        let cp = &a.cert_prefix;
        let others = [&config.prefix, &config.lb_prefix]
            .into_iter()
            .chain(tcp.iter().map(|t| &t.prefix));
        if let Some(other) = others.into_iter().find(|o| contract::overlaps(cp, o)) {
            errors.0.push(UsageError::new(
                "--cert-prefix",
                format!(
                    "must lie outside {other}/ (and not contain it): instances read there, the store holds private keys; got {cp:?}"
                ),
            ));
        }
    }
    let verbose = args.shared.verbose;
    config.access = etcd_access(args.shared.access, &raw, password, &mut errors);
    let (Some(acme), Some(tcp), true) = (acme, tcp, errors.0.is_empty()) else {
        return Err(errors.into_errors());
    };
    config.frontend.tcp = tcp;
    config.frontend.redirect = !args.no_redirect;
    config.frontend.acme = acme.is_some();
    config.acme = acme;
    if config.lb_id.is_empty() {
        config.lb_id = crate::discovery::hostname();
    }
    config.password_spans = raw.password_spans();
    config.log_filter = match (verbose, log) {
        (0, Some(filter)) => filter,
        (0, None) => "info".into(),
        (1, _) => "info,hecd_init=debug".into(),
        _ => "info,hecd_init=trace".into(),
    };
    Ok(Parsed::Run(Box::new(config)))
}

/// A bind address for HAProxy: `:PORT`, `HOST:PORT` or `[V6]:PORT`, written as HAProxy takes it.
fn bind_address(g: &Given) -> Result<String, UsageError> {
    bind_text(&g.value)
        .ok_or_else(|| expected(g, "ADDR:PORT such as :80, 0.0.0.0:8080 or [::]:8080"))
}

/// `ADDR:PORT` as HAProxy's `bind` takes it (IPv6 in brackets), if it is one.
fn bind_text(value: &str) -> Option<String> {
    let (host, port) = split_host_port(value.trim())?;
    let port = port?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = host.is_empty() || valid_host(host) || host.parse::<std::net::Ipv6Addr>().is_ok();
    (port_ok && host_ok).then(|| {
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    })
}

/// `--dir`: HAProxy's config names the admin socket and files by this path, so it may hold no
/// character the config would read otherwise; a relative one would be read against HAProxy's
/// idea of the current directory (and `haproxy -c` refuses `stats socket dir/admin.sock`), so
/// it is made absolute here.
fn work_dir(g: &Given) -> Result<PathBuf, UsageError> {
    if g.value.trim().is_empty() || g.value.contains(['\n', '\r', ' ', '#', '"', '\'']) {
        return Err(expected(
            g,
            "a directory path without spaces, quotes or '#'",
        ));
    }
    std::path::absolute(&g.value)
        .map_err(|e| UsageError::new(&g.source, format!("{e}, got {:?}", g.value)))
}

/// `--acme URL`: an https:// URL.
fn acme_directory(g: &Given) -> Result<String, UsageError> {
    let directory = g.value.trim();
    let url_ok = directory.len() > "https://".len()
        && directory.starts_with("https://")
        && !directory
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !url_ok {
        return Err(expected(g, "an https:// URL of an ACME directory"));
    }
    Ok(directory.to_owned())
}

/// `--acme-domains`: DNS names (a leading `*.` dropped: a suffix covers what is under it),
/// lower case.
fn acme_domains(g: &Given) -> Result<Vec<String>, UsageError> {
    let domains: Vec<String> = g
        .value
        .split(',')
        .map(|x| x.trim().trim_start_matches("*.").to_ascii_lowercase())
        .collect();
    for x in &domains {
        let ok = contract::Route::parse(x).is_ok_and(|r| r.path.is_none() && &r.host == x);
        if !ok {
            return Err(expected(
                g,
                "DNS names separated by commas, such as example.com,example.org",
            ));
        }
    }
    Ok(domains)
}

/// `--acme-email`: one address, as the CA's contact.
fn email(g: &Given) -> Result<String, UsageError> {
    let v = g.value.trim();
    let ok = v.len() <= 254
        && v.split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.'))
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if !ok {
        return Err(expected(g, "an e-mail address"));
    }
    Ok(v.to_owned())
}

/// The rules of `--acme` (`raw` says which options were given): its options need it, it
/// needs `--https` (`https`) and `--acme-domains`, and its CA bundle (`--acme-cacert`, else the
/// system's) is read.
fn acme_rules(args: &Args, https: bool, raw: &RawArgs) -> Result<Option<AcmeConfig>, UsageError> {
    let Some(directory) = &args.acme else {
        let options = [
            "acme-domains",
            "acme-email",
            "acme-cacert",
            "acme-renew-before",
            "cert-prefix",
        ];
        if let Some(long) = options.into_iter().find(|long| raw.get(long).is_some()) {
            return Err(UsageError::new(format!("--{long}"), "needs --acme URL"));
        }
        return Ok(None);
    };
    if !https {
        return Err(UsageError::new(
            "--acme",
            "needs --https ADDR:PORT (where its certificates are served)",
        ));
    }
    if args.acme_domains.is_empty() {
        return Err(UsageError::new(
            "--acme-domains",
            "required with --acme: only hosts under these get certificates, e.g. --acme-domains example.com",
        ));
    }
    let (path, data) = match &args.acme_cacert {
        Some(path) => {
            let data = crate::access::read("--acme-cacert", path)?;
            (path.clone(), data)
        }
        None => {
            let path = crate::access::SYSTEM_CA_BUNDLE;
            let data = crate::file::read_bounded(path.as_ref(), crate::access::MAX_FILE).map_err(|e| {
                UsageError::new(
                    "--acme-cacert",
                    format!("the CA's certificate needs a CA bundle: give --acme-cacert FILE ({path}: {e})"),
                )
            })?;
            (path.to_owned(), data)
        }
    };
    let tls = crate::http::Tls::from_pem(
        crate::http::PemFile {
            path: &path,
            data: &data,
        },
        None,
    )
    .map_err(|(_, e)| UsageError::new("--acme-cacert", e))?;
    Ok(Some(AcmeConfig {
        directory: directory.clone(),
        domains: args.acme_domains.clone(),
        email: args.acme_email.clone(),
        tls,
        renew_before: args.acme_renew_before,
        cert_prefix: args.cert_prefix.clone(),
    }))
}

/// `--hsts`: whole seconds from 1 s to two years (browsers cap max-age at about that).
fn parse_hsts(g: &Given) -> Result<Duration, UsageError> {
    parse_duration_upto(&g.value, Duration::from_secs(730 * 86_400))
        .filter(|d| d.as_secs() >= 1)
        .ok_or_else(|| expected(g, "a duration from 1s to 730d, such as 365d"))
}

/// `--certs DIR`: an existing directory, made absolute.
fn certs_dir(g: &Given) -> Result<PathBuf, UsageError> {
    let dir = std::path::absolute(&g.value)
        .map_err(|e| UsageError::new(&g.source, format!("{e}, got {:?}", g.value)))?;
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(UsageError::new(
            &g.source,
            format!("not a directory: {:?}", g.value),
        )),
        Err(e) => Err(UsageError::new(&g.source, format!("{e}: {:?}", g.value))),
    }
}

/// One `--tcp ADDR:PORT=PREFIX`: (bind address, prefix, as given).
fn tcp_listener(g: &Given) -> Result<(String, String, Given), UsageError> {
    let form = "ADDR:PORT=PREFIX such as :5432=/app/db";
    let (bind, prefix) = g.value.split_once('=').ok_or_else(|| expected(g, form))?;
    let bind = bind_text(bind).ok_or_else(|| expected(g, form))?;
    let prefix = parse_prefix(&Given {
        value: prefix.to_owned(),
        ..g.clone()
    })
    .ok()
    .filter(|p| !p.is_empty())
    .ok_or_else(|| expected(g, form))?;
    Ok((bind, prefix, g.clone()))
}

/// The `--tcp` listeners, each for the service under its prefix, served by the backends
/// `tcp-1`, `tcp-2`, ... in the order given. A prefix that is the default service's
/// (`default`), or given twice, is refused.
fn tcp_rules(
    given: Vec<(String, String, Given)>,
    default: &str,
) -> Result<Vec<TcpListener>, UsageError> {
    let mut out: Vec<TcpListener> = Vec::new();
    for (bind, prefix, g) in given {
        if prefix == default || out.iter().any(|t| t.prefix == prefix) {
            return Err(UsageError::new(
                &g.source,
                format!(
                    "{prefix} has a listener already (each service has one), got {:?}",
                    g.value
                ),
            ));
        }
        out.push(TcpListener {
            bind,
            prefix,
            backend: format!("{}{}", crate::haproxy::TCP_PREFIX, out.len() + 1),
        });
    }
    Ok(out)
}

/// `--version` output.
pub fn version_text() -> String {
    format!("hecd-haproxy {}\n", env!("CARGO_PKG_VERSION"))
}

/// `--help` output, generated from [`OPTIONS`].
pub fn help_text() -> String {
    let mut out = format!(
        "hecd-haproxy {}: keeps HAProxy's backends equal to the servers registered in etcd\n\n\
         Usage: hecd-haproxy --etcd URL[,URL...] --listen ADDR:PORT --dir DIR [OPTIONS]\n\n\
         Starts HAProxy (master-worker) with a config in DIR, reads every PREFIX/NAME = HOST:PORT\n\
         key and every route declaration under LB_PREFIX/routes/ (hecd-init --route), then\n\
         follows them with etcd watches and applies each change through HAProxy's runtime API,\n\
         without reloads: a new key adds a health-checked server, a deleted key drains its\n\
         server and removes it once idle (or after --drain-timeout). Each service (a prefix) has\n\
         a backend of its own; requests go by Host and the longest path prefix, and what no\n\
         route matches goes to --prefix. etcd down or answering garbage: the last known servers\n\
         stay. Bad keys and declarations are logged and skipped. With --https, a TLS listener\n\
         serves the certificates of --certs files and, with --acme, certificates an ACME CA\n\
         issues for the declared hosts, shared by every balancer through etcd (--cert-prefix);\n\
         both are loaded at runtime, without reloads.\n\n\
         Options (every long option may also be set as its environment variable; a flag wins;\n\
         durations: 10s, 500ms, 1.5 (seconds), 2m, 1h, 1d):\n",
        env!("CARGO_PKG_VERSION")
    );
    out.push_str(&cli::options_help(OPTIONS));
    out.push_str(
        "\nEnvironment: HECD_LOG sets the log filter (env_logger syntax, default info);\n\
         HECD_ETCD_PASSWORD gives the etcd password. Logs go to stderr, prefixed \"hecd-haproxy:\".\n\n\
         Signals: SIGTERM or SIGINT withdraws this balancer's announcement, then stops HAProxy\n\
         gracefully (open connections finish; a second
         one stops it at once); SIGHUP rewrites the config and reloads HAProxy.\n\n\
         HAProxy's master ending by itself (any signal, a crash, its worker's death) is logged\n\
         and HAProxy is started again with the servers and routes etcd has.\n\n\
         Exit status: 0 after a stop signal; 2 for a usage error; 1 if HAProxy cannot be set up\n\
         or started, or if its master ended by itself 5 times within a minute.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args, |k| env.get(k).map(OsString::from)) {
            Ok(Parsed::Run(c)) => Ok(*c),
            Ok(_) => panic!("help or version"),
            Err(e) => Err(e.iter().map(ToString::to_string).collect()),
        }
    }

    const BASE: &[&str] = &[
        "--etcd",
        "http://e:2379",
        "--listen",
        ":80",
        "--dir",
        "/tmp/lb",
    ];

    #[test]
    fn a_relative_dir_is_made_absolute() {
        let args = [
            "--etcd",
            "http://e:2379",
            "--listen",
            ":80",
            "--dir",
            "lbdir/sub",
        ];
        let c = run(&args, &[]).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.frontend.dir, cwd.join("lbdir/sub"));
        assert!(c.frontend.dir.is_absolute());
        assert_eq!(
            run(BASE, &[]).unwrap().frontend.dir,
            PathBuf::from("/tmp/lb")
        );
    }

    #[test]
    fn tcp_services_each_get_a_listener_and_a_backend() {
        let mut args = BASE.to_vec();
        args.extend(["--tcp", ":5432=/app/db", "--tcp", "[::1]:6379=app/cache/"]);
        let c = run(&args, &[]).unwrap();
        let got: Vec<(&str, &str, &str)> = c
            .frontend
            .tcp
            .iter()
            .map(|t| (t.bind.as_str(), t.prefix.as_str(), t.backend.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (":5432", "/app/db", "tcp-1"),
                ("[::1]:6379", "/app/cache", "tcp-2")
            ]
        );
        let c = run(BASE, &[("HECD_TCP", ":5432=/app/db,:6379=/app/cache")]).unwrap();
        assert_eq!(c.frontend.tcp.len(), 2);
        assert!(run(BASE, &[]).unwrap().frontend.tcp.is_empty());
        for bad in [
            ":5432",
            "5432=/app/db",
            ":0=/app/db",
            ":5432=/",
            ":5432=/a b",
            "=/app/db",
        ] {
            let mut args = BASE.to_vec();
            args.extend(["--tcp", bad]);
            let e = run(&args, &[]).unwrap_err();
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(
                e[0].starts_with("--tcp: expected ADDR:PORT=PREFIX"),
                "{bad}: {e:?}"
            );
        }
        for taken in [
            &["--tcp", ":5432=/app/servers"][..],
            &["--tcp", ":5432=/app/db", "--tcp", ":5433=/app/db"],
        ] {
            let mut args = BASE.to_vec();
            args.extend(taken);
            let e = run(&args, &[]).unwrap_err();
            assert!(e[0].contains("has a listener already"), "{e:?}");
        }
    }

    #[test]
    fn https_needs_its_certificates_and_the_other_way_round() {
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap();
        let mut args = BASE.to_vec();
        args.extend(["--https", ":443", "--certs", dir, "--hsts", "731d"]);
        let c = run(&args, &[]);
        assert!(c.unwrap_err()[0].starts_with("--hsts: expected a duration from 1s to 730d"));
        let mut args = BASE.to_vec();
        args.extend(["--https", "[::]:443", "--certs", dir, "--hsts", "8760h"]);
        let c = run(&args, &[]).unwrap();
        assert_eq!(c.frontend.https.as_deref(), Some("[::]:443"));
        assert_eq!(c.certs.as_deref(), Some(Path::new(dir)));
        assert_eq!(c.frontend.hsts, Some(Duration::from_secs(8760 * 3600)));
        assert!(c.frontend.redirect);
        let c = run(
            BASE,
            &[
                ("HECD_HTTPS", ":8443"),
                ("HECD_CERTS", dir),
                ("HECD_NO_REDIRECT", "1"),
            ],
        )
        .unwrap();
        assert!(!c.frontend.redirect && c.frontend.hsts.is_none());
        let c = run(BASE, &[]).unwrap();
        assert!(c.frontend.https.is_none() && c.certs.is_none());
        for (extra, message) in [
            (&["--https", ":443"][..], "--https: needs --certs DIR"),
            (&["--certs", dir][..], "--certs: needs --https ADDR:PORT"),
            (&["--hsts", "1h"][..], "--hsts: needs --https ADDR:PORT"),
            (
                &["--no-redirect"][..],
                "--no-redirect: needs --https ADDR:PORT",
            ),
            (
                &["--https", ":443", "--certs", "/nonexistent/certs"][..],
                "--certs: No such file or directory",
            ),
            (
                &["--https", ":443", "--certs", "/etc/hostname"][..],
                "--certs: not a directory",
            ),
            (
                &["--https", "443", "--certs", dir][..],
                "--https: expected ADDR:PORT",
            ),
        ] {
            let mut args = BASE.to_vec();
            args.extend(extra);
            let e = run(&args, &[]).unwrap_err();
            assert_eq!(e.len(), 1, "{extra:?}: {e:?}");
            assert!(e[0].starts_with(message), "{extra:?}: {e:?}");
        }
    }

    #[test]
    fn acme_needs_https_and_domains_and_keeps_its_store_apart() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/certs/a.crt");
        let acme = |extra: &[&str]| {
            let mut args = BASE.to_vec();
            args.extend(["--https", ":443", "--acme-cacert", ca]);
            args.extend(extra);
            run(&args, &[])
        };
        let c = acme(&[
            "--acme",
            "https://ca.example/dir",
            "--acme-domains",
            "Example.com,*.example.org",
            "--acme-email",
            "ops@example.com",
        ])
        .unwrap();
        let a = c.acme.unwrap();
        assert_eq!(a.domains, ["example.com", "example.org"]);
        assert_eq!(a.renew_before, Duration::from_secs(30 * 86_400));
        assert_eq!(a.cert_prefix, "/hecd-certs");
        assert_eq!(a.email.as_deref(), Some("ops@example.com"));
        assert!(
            c.frontend.acme && c.certs.is_none(),
            "--certs is optional with --acme"
        );
        let base = [
            "--acme",
            "https://ca.example/dir",
            "--acme-domains",
            "example.com",
        ];
        for (extra, message) in [
            (
                &["--acme", "http://ca.example/dir", "--acme-domains", "a.com"][..],
                "--acme: expected an https:// URL",
            ),
            (
                &["--acme", "https://ca.example/dir"][..],
                "--acme-domains: required with --acme",
            ),
            (
                &["--acme", "https://ca.example/dir", "--acme-domains", "a b"][..],
                "--acme-domains: expected DNS names",
            ),
        ] {
            let e = acme(extra).unwrap_err();
            assert!(e.iter().any(|x| x.starts_with(message)), "{extra:?}: {e:?}");
        }
        for (extra, message) in [
            (
                &["--cert-prefix", "/hecd/certs"][..],
                "--cert-prefix: must lie outside /hecd/",
            ),
            (
                &["--cert-prefix", "/app"][..],
                "--cert-prefix: must lie outside /app/servers/",
            ),
            (
                &["--cert-prefix", "/"][..],
                "--cert-prefix: expected a key path",
            ),
            (
                &["--acme-email", "not mail"][..],
                "--acme-email: expected an e-mail address",
            ),
            (
                &["--acme-renew-before", "3651d"][..],
                "--acme-renew-before: expected a duration",
            ),
            (
                &["--acme-cacert", "/nonexistent"][..],
                "--acme-cacert: cannot read /nonexistent",
            ),
            (
                &["--acme-cacert", "/dev/zero"][..],
                "--acme-cacert: cannot read /dev/zero: not a regular file",
            ),
        ] {
            let mut all = base.to_vec();
            all.extend(extra);
            let e = acme(&all).unwrap_err();
            assert!(e.iter().any(|x| x.starts_with(message)), "{extra:?}: {e:?}");
        }
        // Its options without it.
        for (extra, message) in [
            (
                ["--acme-domains", "a.com"],
                "--acme-domains: needs --acme URL",
            ),
            (["--cert-prefix", "/x"], "--cert-prefix: needs --acme URL"),
            (["--acme-cacert", ca], "--acme-cacert: needs --acme URL"),
        ] {
            let mut args = BASE.to_vec();
            args.extend(extra);
            let e = run(&args, &[]).unwrap_err();
            assert_eq!(e, [message], "{extra:?}");
        }
        // Without --https.
        let mut args = BASE.to_vec();
        args.extend(base);
        args.extend(["--acme-cacert", ca]);
        let e = run(&args, &[]).unwrap_err();
        assert!(e[0].starts_with("--acme: needs --https"), "{e:?}");
    }

    /// A row whose default is a value: `cli::read` parses that text when the option is not
    /// given, so `--help` and the program agree by construction; and giving the same text
    /// changes nothing. The rows whose default is a sentence are named, on purpose.
    #[test]
    fn every_rows_default_is_what_the_parser_takes_without_it() {
        let plain = format!("{:?}", run(BASE, &[]).unwrap());
        for o in OPTIONS.iter().filter(|o| o.env) {
            // The ACME rows need --acme (their own test checks their defaults).
            if let Absent::Value(text) = o.default
                && !["acme-renew-before", "cert-prefix"].contains(&o.long)
            {
                let given = run(BASE, &[(cli::env_name(o.long).as_str(), text)]);
                assert_eq!(format!("{:?}", given.unwrap()), plain, "--{}", o.long);
            }
        }
        let sentences: Vec<&str> = OPTIONS
            .iter()
            .filter(|o| matches!(o.default, Absent::Says(text) if !text.is_empty()))
            .map(|o| o.long)
            .collect();
        assert_eq!(
            sentences,
            [
                "stats",        // none
                "tcp",          // none
                "https",        // none
                "certs",        // none (required with --https)
                "no-redirect",  // off
                "hsts",         // none
                "acme",         // none
                "acme-domains", // none (required with --acme)
                "acme-email",   // none
                "acme-cacert",  // the system bundle
                "lb-id",        // the hostname
                "etcd-cacert",  // the system bundle, for https://
                "etcd-cert",
                "etcd-key",
                "etcd-user",
                "etcd-password-file",
                "verbose", // off
            ],
            "a row whose default is a sentence"
        );
        let required: Vec<&str> = OPTIONS
            .iter()
            .filter(|o| o.default == Absent::Required)
            .map(|o| o.long)
            .collect();
        assert_eq!(required, ["etcd", "listen", "dir"]);
    }

    #[test]
    fn the_scripts_command_line_works() {
        let c = run(BASE, &[]).unwrap();
        assert_eq!(c.prefix, "/app/servers");
        assert_eq!(c.frontend.listen, ":80");
        assert_eq!(c.frontend.check_inter, Duration::from_millis(500));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        let mut args = BASE.to_vec();
        args.extend([
            "--prefix",
            "/edge/",
            "--check-inter",
            "2s",
            "--stats",
            "[::1]:8404",
        ]);
        let c = run(&args, &[]).unwrap();
        assert_eq!(c.prefix, "/edge");
        assert_eq!(c.frontend.stats.as_deref(), Some("[::1]:8404"));
        let c = run(
            &[],
            &[
                ("HECD_ETCD", "https://a:2379,https://b:2379"),
                ("HECD_LISTEN", "127.0.0.1:8080"),
                ("HECD_DIR", "/run/lb"),
                ("HECD_DRAIN_TIMEOUT", "0"),
            ],
        )
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.drain_timeout, Duration::ZERO);
    }

    #[test]
    fn bad_options_name_themselves() {
        let err = |args: &[&str]| run(args, &[]).unwrap_err();
        assert_eq!(
            err(&["--listen", ":80", "--dir", "/x"]),
            vec![
                "--etcd: required; usage: hecd-haproxy --etcd URL[,URL...] --listen ADDR:PORT --dir DIR [--prefix PATH] (see --help)"
            ]
        );
        let mut args = BASE.to_vec();
        args.extend(["--listen", "80"]);
        assert_eq!(
            err(&args),
            vec![
                r#"--listen: expected ADDR:PORT such as :80, 0.0.0.0:8080 or [::]:8080, got "80""#
            ]
        );
        let mut args = BASE.to_vec();
        args.extend(["--check-inter", "fast"]);
        assert!(err(&args)[0].starts_with("--check-inter: expected a positive duration"));
        let mut args = BASE.to_vec();
        args.push("extra");
        assert_eq!(
            err(&args),
            vec![r#""extra": unexpected argument (see --help)"#]
        );
        let mut args = BASE.to_vec();
        args.extend(["--dir", "/a b"]);
        assert!(err(&args)[0].starts_with("--dir: expected a directory path"));
        let mut args = BASE.to_vec();
        args.extend(["--lb-prefix", "/app/servers/lbs"]);
        assert!(err(&args)[0].starts_with("--lb-prefix: must lie outside"));
        let mut args = BASE.to_vec();
        args.extend(["--lb-id", "a/b"]);
        assert!(err(&args)[0].starts_with("--lb-id: expected a key segment"));
        let mut args = BASE.to_vec();
        args.extend(["--etcd-password-file", "/run/secrets/p"]);
        assert!(err(&args)[0].contains("needs --etcd-user USER"));
    }

    #[test]
    fn readme_and_reference_document_every_option_and_variable() {
        let readme = include_str!("../../README.md");
        let reference = include_str!("../../docs/HAPROXY.md");
        for (doc, text) in [("README.md", readme), ("docs/HAPROXY.md", reference)] {
            for o in OPTIONS {
                assert!(
                    text.contains(&format!("`--{}", o.long)),
                    "{doc} lacks --{}",
                    o.long
                );
                if o.env && doc != "README.md" {
                    assert!(
                        text.contains(&cli::env_name(o.long)),
                        "{doc} lacks {}",
                        cli::env_name(o.long)
                    );
                }
            }
        }
        for status in ["| 0 |", "| 2 |", "| 1 |"] {
            assert!(
                reference.contains(status),
                "docs/HAPROXY.md lacks exit status {status}"
            );
        }
    }

    #[test]
    fn help_names_every_option_and_its_variable() {
        let help = help_text();
        for o in OPTIONS {
            assert!(help.contains(&format!("--{}", o.long)), "{}", o.long);
            if o.env {
                assert!(help.contains(&cli::env_name(o.long)), "{}", o.long);
            }
        }
    }
}
