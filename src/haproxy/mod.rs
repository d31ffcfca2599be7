//! HAProxy, as hecd-haproxy drives it: the config file it renders (so a restart or reload
//! comes up with the same servers and routes), the runtime API over the admin socket (add,
//! enable, drain, re-address and delete servers, edit the routes map, without a reload), and
//! the parsers of the runtime API's answers. Nothing read from etcd reaches HAProxy without
//! passing the checks of [`crate::contract`].

pub mod process;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The backend of the default service (`--prefix`): every request no route matches.
pub const DEFAULT_BACKEND: &str = "servers";

/// The backends of `--tcp` services are `tcp-1`, `tcp-2`, ... (in `mode tcp`), each behind a
/// frontend of its own.
pub const TCP_PREFIX: &str = "tcp-";

/// A `--tcp` listener: where it binds, the service it serves and that service's backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpListener {
    pub bind: String,
    pub prefix: String,
    pub backend: String,
}

/// Pool backends are `pool-1`, `pool-2`, ...: prepared empty, each taken by a service when it
/// appears and given back when it is gone.
pub const POOL_PREFIX: &str = "pool-";

/// Longest answer read from the runtime API (`show servers conn` for thousands of servers is
/// well below this).
const MAX_ANSWER: u64 = 16 << 20;

/// Where a server is: an IP address and a port; displayed as etcd values are written
/// (`10.0.0.5:8080`, `[fd00::5]:8080`), parsed by [`crate::contract::Address::parse`].
pub use crate::contract::Address as Addr;

impl Addr {
    /// The address as HAProxy's config and `add server` take it: `ip:port`, IPv6 unbracketed
    /// (`fd00::5:8080`, which HAProxy splits at the last colon).
    pub fn haproxy(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `set server ... addr A port P` arguments.
    fn addr_and_port(&self) -> String {
        format!("addr {} port {}", self.host, self.port)
    }
}

/// Why a runtime command did not do what was asked, as the caller can act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeError {
    /// The admin socket could not be used (HAProxy starting, reloading, busy): try again.
    Socket(String),
    /// The server, backend or map entry named does not exist (already gone).
    Missing(String),
    /// HAProxy refused the command: only a reload with a rewritten config applies the change.
    Refused(String),
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Socket(e) | RuntimeError::Missing(e) | RuntimeError::Refused(e) => {
                f.write_str(e)
            }
        }
    }
}

/// One backend of the config: its name, the service it serves (none for an empty pool
/// backend), its servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub service: Option<String>,
    pub servers: BTreeMap<String, Addr>,
}

/// What the config file says beyond the servers.
#[derive(Clone, Debug, Default)]
pub struct Frontend {
    /// `bind` address of the frontend, as given to `--listen`.
    pub listen: String,
    /// `--stats`: the stats page's bind address, if any.
    pub stats: Option<String>,
    /// The working directory: config, sockets, pid file, state file.
    pub dir: PathBuf,
    /// `inter` of the health checks.
    pub check_inter: Duration,
    /// `--tunnel-timeout`: how long an upgraded connection (WebSocket) may stay idle.
    pub tunnel_timeout: Duration,
    /// `--tcp`: plain TCP listeners, each for one service.
    pub tcp: Vec<TcpListener>,
    /// `--https`: the TLS listener's bind address, if any.
    pub https: Option<String>,
    /// Plain-HTTP requests for a host with a certificate are redirected to HTTPS (not
    /// `--no-redirect`).
    pub redirect: bool,
    /// `--hsts`: `Strict-Transport-Security: max-age` of HTTPS answers, if any.
    pub hsts: Option<Duration>,
    /// `--acme`: answer HTTP-01 challenges from the challenges map.
    pub acme: bool,
    /// The HAProxy generation (a start or a reload) the config is written for: it names the
    /// generation's own admin socket, [`Frontend::runtime_path`].
    pub generation: u64,
}

impl Frontend {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    /// The admin socket every worker shares (`expose-fd listeners`: a reload hands the
    /// listening sockets over through it, and so the socket itself): for operators, and for the
    /// master's own reloads.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// hecd-haproxy's own admin socket, one per generation. A reload hands `admin.sock` over to
    /// the new worker while the old one may still accept on it for a moment (until it has
    /// taken its stop signal), so a command sent there right after a reload can reach the
    /// worker on its way out and be lost, or read back its state instead of the new one. A
    /// socket whose path only the new config names is bound afresh: what is sent there
    /// reaches the new worker and nothing else.
    pub fn runtime_path(&self) -> PathBuf {
        self.dir.join(format!("runtime-{}.sock", self.generation))
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("servers.state")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }

    /// The `check` options of every server, in the config and in `add server`.
    pub fn check_options(&self) -> String {
        format!(
            "check inter {}ms fall 2 rise 1",
            self.check_inter.as_millis().max(1)
        )
    }

    /// The routes map: `host/path-prefix backend` per line, matched by longest prefix.
    pub fn map_path(&self) -> PathBuf {
        self.dir.join("routes.map")
    }

    /// The certificates HAProxy serves, one line each: `PATH NAME...` (the names are the SNI
    /// filters).
    pub fn crt_list_path(&self) -> PathBuf {
        self.dir.join("crt-list.txt")
    }

    /// The names that have a certificate (`NAME 1` per line, wildcards as `*.example.com`),
    /// for the redirect to HTTPS.
    pub fn hosts_map_path(&self) -> PathBuf {
        self.dir.join("tls-hosts.map")
    }

    /// The pending ACME challenges: `TOKEN KEY-AUTHORIZATION` per line.
    pub fn answers_map_path(&self) -> PathBuf {
        self.dir.join("acme.map")
    }

    /// HAProxy's copies of the certificates, each named by its contents' SHA-256.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// With `--acme`: the answer to an HTTP-01 challenge, on either listener, from the map
    /// every balancer keeps equal to the store's pending challenges (the CA may ask any of
    /// them). Other tokens fall through to the routing.
    fn acme_lines(&self) -> String {
        if !self.acme {
            return String::new();
        }
        let map = self.answers_map_path();
        let token = format!("path,field(4,/),map({})", map.display());
        format!(
            "    # ACME HTTP-01: a pending challenge's key authorization, whichever balancer is asked.\n\
             \x20   http-request return status 200 content-type text/plain lf-string %[{token}] if {{ path_beg /.well-known/acme-challenge/ }} {{ {token} -m found }}\n"
        )
    }

    /// The HTTPS listener's lines of the frontend: its `bind`, the redirect of plain-HTTP
    /// requests for a host that has a certificate (not ACME challenges), HSTS.
    fn https_lines(&self, https: &str) -> String {
        let mut out = format!(
            "    # HTTPS: the certificate is chosen by SNI among those of the crt-list; a name\n\
             \x20   # none covers fails the handshake (strict-sni: no default certificate).\n\
             \x20   bind {https} ssl crt-list {} strict-sni alpn h2,http/1.1 ssl-min-ver TLSv1.2\n",
            self.crt_list_path().display()
        );
        if self.redirect {
            // The redirect keeps the host (without its port, lower case), path and query, and
            // names the HTTPS port unless it is 443. A host has a certificate when the map
            // has it, or has `*.` and its parent (one label, as TLS wildcards go).
            let port = https.rsplit(':').next().unwrap_or("443");
            let host = if port == "443" {
                "%[var(txn.hecd_host)]".to_owned()
            } else {
                format!("%[var(txn.hecd_host)]:{port}")
            };
            let map = self.hosts_map_path();
            let map = map.display();
            out.push_str(&format!(
                "    http-request set-var(txn.hecd_host) req.hdr(host),field(1,:),lower\n\
                 \x20   http-request set-var(txn.hecd_parent) var(txn.hecd_host),field(2,.,0)\n\
                 \x20   acl hecd_cert var(txn.hecd_host),map_str({map}) -m found\n\
                 \x20   acl hecd_cert str(*),concat(.,txn.hecd_parent),map_str({map}) -m found\n\
                 \x20   acl hecd_acme path_beg /.well-known/acme-challenge/\n\
                 \x20   http-request set-header Host {host} if !{{ ssl_fc }} hecd_cert !hecd_acme\n\
                 \x20   http-request redirect scheme https code 308 if !{{ ssl_fc }} hecd_cert !hecd_acme\n"
            ));
        }
        if let Some(hsts) = self.hsts {
            out.push_str(&format!(
                "    http-after-response set-header Strict-Transport-Security max-age={} if {{ ssl_fc }}\n",
                hsts.as_secs()
            ));
        }
        out
    }

    /// The whole config file: the frontend that routes by Host and path through the routes
    /// map (what no route matches goes to the default service), the stats and metrics
    /// listener, and `backends` with their servers.
    pub fn render(&self, backends: &[BackendConfig]) -> String {
        let dir = self.dir.display();
        let mut out = format!(
            "# Written by hecd-haproxy: it rewrites this file after every change, so edits are lost.\n\
             global\n\
             \x20   master-worker\n\
             \x20   stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners\n\
             \x20   stats socket {} mode 600 level admin\n\
             \x20   pidfile {dir}/haproxy.pid\n\
             \x20   server-state-file {dir}/servers.state\n\
             \n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   # A client has 10 s to send a whole request head (slow clients cannot hold\n\
             \x20   # connections open), 30 s of silence on either side ends a request, and an\n\
             \x20   # upgraded connection (WebSocket) may stay idle for --tunnel-timeout.\n\
             \x20   timeout http-request 10s\n\
             \x20   timeout http-keep-alive 10s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   timeout tunnel {}ms\n\
             \x20   retries 3\n\
             \x20   option redispatch 1\n\
             \x20   load-server-state-from-file global\n\
             \n\
             frontend app\n\
             \x20   bind {}\n\
             {}\
             \x20   # What the app learns of the request, set here and never passed on from the\n\
             \x20   # client: its address, the scheme, the Host it asked for and the port.\n\
             \x20   http-request set-header X-Forwarded-For %[src]\n\
             \x20   http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n\
             \x20   http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n\
             \x20   http-request del-header X-Forwarded-Host\n\
             \x20   http-request set-header X-Forwarded-Host %[req.hdr(host)] if {{ req.hdr(host) -m found }}\n\
             \x20   http-request set-header X-Forwarded-Port %[dst_port]\n\
             \x20   # Host without its port, in lower case, then the path: the longest prefix in\n\
             \x20   # the routes map names the service's backend; no match, the default service.\n\
             \x20   http-request set-var(txn.hecd_path) path\n\
             \x20   use_backend %[req.hdr(host),field(1,:),lower,concat(,txn.hecd_path),map_beg({})]\n\
             \x20   default_backend {DEFAULT_BACKEND}\n",
            self.runtime_path().display(),
            self.tunnel_timeout.as_millis().max(1),
            self.listen,
            self.acme_lines()
                + &self
                    .https
                    .as_deref()
                    .map(|h| self.https_lines(h))
                    .unwrap_or_default(),
            self.map_path().display()
        );
        for t in &self.tcp {
            // Idle connections (a database client's pool) live --tunnel-timeout, which HAProxy
            // applies to a TCP connection once it is established.
            out.push_str(&format!(
                "\nfrontend {}-in\n    mode tcp\n    bind {}\n    default_backend {}\n",
                t.backend, t.bind, t.backend
            ));
        }
        if let Some(stats) = &self.stats {
            out.push_str(&format!(
                "\nfrontend stats\n    bind {stats}\n    http-request use-service prometheus-exporter if {{ path /metrics }}\n    stats enable\n    stats uri /admin-status\n    stats refresh 5s\n"
            ));
        }
        for backend in backends {
            out.push_str(&format!("\nbackend {}\n", backend.name));
            if let Some(service) = &backend.service {
                out.push_str(&format!("    description service {service}\n"));
            }
            if backend.name.starts_with(TCP_PREFIX) {
                out.push_str("    mode tcp\n");
            }
            out.push_str("    balance roundrobin\n");
            for (name, addr) in &backend.servers {
                out.push_str(&format!(
                    "    server {name} {} {}\n",
                    addr.haproxy(),
                    self.check_options()
                ));
            }
        }
        out
    }
}

/// The routes map file: one `KEY BACKEND` line per route.
pub fn render_map(routes: &BTreeMap<String, String>) -> String {
    routes.iter().map(|(k, b)| format!("{k} {b}\n")).collect()
}

/// The backends of a config file this program wrote, read back (for a start without etcd):
/// each `backend`, its `description service PREFIX`, its `server NAME ADDR` lines, each name
/// and address checked again. Empty for no file.
pub fn parse_config(text: &str) -> Vec<BackendConfig> {
    let mut out: Vec<BackendConfig> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("backend"), Some(name), None) => out.push(BackendConfig {
                name: name.to_owned(),
                ..BackendConfig::default()
            }),
            (Some("description"), Some("service"), Some(prefix)) => {
                if let Some(b) = out.last_mut() {
                    b.service = Some(prefix.to_owned());
                }
            }
            (Some("server"), Some(name), Some(addr)) => {
                // The file has IPv6 unbracketed; values are bracketed.
                let Some((host, port)) = addr.rsplit_once(':') else {
                    continue;
                };
                let value = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    addr.to_owned()
                };
                if let (Some(b), Ok(()), Ok(a)) = (
                    out.last_mut(),
                    crate::contract::check_name(name),
                    Addr::parse(&value),
                ) {
                    b.servers.insert(name.to_owned(), a);
                }
            }
            _ => {}
        }
    }
    out
}

/// The runtime API on HAProxy's admin socket, one connection per command.
#[derive(Clone, Debug)]
pub struct Runtime {
    socket: PathBuf,
    timeout: Duration,
}

impl Runtime {
    /// The admin socket it talks to.
    pub fn path(&self) -> &Path {
        &self.socket
    }

    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sends one command and reads the whole answer (bounded in time and size).
    pub fn command(&self, command: &str) -> Result<String, RuntimeError> {
        debug_assert!(!command.contains(['\n', ';']));
        self.send(&format!("{command}\n"))
    }

    /// Sends one command with a payload (`COMMAND <<`, the payload's lines, an empty line)
    /// and reads the whole answer. The payload must have no empty line.
    pub fn command_payload(&self, command: &str, payload: &str) -> Result<String, RuntimeError> {
        debug_assert!(!command.contains(['\n', ';']) && !payload.contains("\n\n"));
        self.send(&format!("{command} <<\n{}\n\n", payload.trim_end()))
    }

    fn send(&self, text: &str) -> Result<String, RuntimeError> {
        let fail =
            |e: std::io::Error| RuntimeError::Socket(format!("{}: {e}", self.socket.display()));
        let mut s = UnixStream::connect(&self.socket).map_err(fail)?;
        s.set_read_timeout(Some(self.timeout)).map_err(fail)?;
        s.set_write_timeout(Some(self.timeout)).map_err(fail)?;
        s.write_all(text.as_bytes()).map_err(fail)?;
        let mut answer = Vec::new();
        (&mut s)
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .map_err(fail)?;
        Ok(String::from_utf8_lossy(&answer).trim().to_owned())
    }

    /// A command whose success is an empty answer (or one of `ok`, for those that say so).
    fn expect(&self, command: &str, ok: &[&str]) -> Result<(), RuntimeError> {
        let answer = self.command(command)?;
        judge(command, &answer, ok)
    }

    /// Serves the certificate `pem` under `path` for `names` (SNI filters) on the listener of
    /// the crt-list `crt_list`: `new ssl cert`, `set ssl cert`, `commit ssl cert`, `add ssl
    /// crt-list`. A failed step aborts the transaction and removes the certificate again.
    pub fn cert_load(
        &self,
        crt_list: &Path,
        path: &Path,
        pem: &str,
        names: &[String],
    ) -> Result<(), RuntimeError> {
        let p = path.display();
        self.expect(
            &format!("new ssl cert {p}"),
            &["New empty certificate store"],
        )?;
        let loaded = (|| {
            let set = format!("set ssl cert {p}");
            let answer = self.command_payload(&set, pem)?;
            judge(
                &set,
                &answer,
                &["Transaction created", "Transaction updated"],
            )?;
            self.expect(&format!("commit ssl cert {p}"), &["Committing"])?;
            let add = format!("add ssl crt-list {}", crt_list.display());
            let line = format!("{p} {}", names.join(" "));
            let answer = self.command_payload(&add, &line)?;
            judge(&add, &answer, &["Inserting certificate"])
        })();
        if loaded.is_err() {
            let _ = self.command(&format!("abort ssl cert {p}"));
            let _ = self.command(&format!("del ssl cert {p}"));
        }
        loaded
    }

    /// Stops serving the certificate under `path`: `del ssl crt-list`, `del ssl cert`.
    pub fn cert_unload(&self, crt_list: &Path, path: &Path) -> Result<(), RuntimeError> {
        let p = path.display();
        let del = format!("del ssl crt-list {} {p}", crt_list.display());
        match self.expect(&del, &["Entry"]) {
            Ok(()) | Err(RuntimeError::Missing(_)) => {}
            Err(e) => return Err(e),
        }
        self.expect(&format!("del ssl cert {p}"), &["Certificate"])
    }

    /// Adds `backend/name` at `addr` with health checks and puts it in service: `add server`
    /// (which creates it in maintenance), `enable health`, `enable server`.
    pub fn add(
        &self,
        backend: &str,
        name: &str,
        addr: &Addr,
        check: &str,
    ) -> Result<(), RuntimeError> {
        let server = format!("{backend}/{name}");
        self.expect(
            &format!("add server {server} {} {check}", addr.haproxy()),
            &["New server registered."],
        )?;
        self.expect(&format!("enable health {server}"), &[])?;
        self.expect(&format!("enable server {server}"), &[])
    }

    /// Moves `backend/name` to `addr`: new connections go there, open ones finish where they are.
    pub fn readdress(&self, backend: &str, name: &str, addr: &Addr) -> Result<(), RuntimeError> {
        self.expect(
            &format!("set server {backend}/{name} {}", addr.addr_and_port()),
            &["IP changed", "no need to change", "port changed"],
        )
    }

    /// Drain: no new requests, open ones finish.
    pub fn drain(&self, backend: &str, name: &str) -> Result<(), RuntimeError> {
        self.expect(&format!("set server {backend}/{name} state drain"), &[])
    }

    /// Back in service after a drain (its key came back).
    pub fn ready(&self, backend: &str, name: &str) -> Result<(), RuntimeError> {
        self.expect(&format!("set server {backend}/{name} state ready"), &[])
    }

    /// Maintenance, then delete. With `force`, open sessions are shut first.
    pub fn delete(&self, backend: &str, name: &str, force: bool) -> Result<(), RuntimeError> {
        let server = format!("{backend}/{name}");
        if force {
            self.expect(&format!("shutdown sessions server {server}"), &[])?;
        }
        self.expect(&format!("set server {server} state maint"), &[])?;
        self.expect(&format!("del server {server}"), &["Server deleted."])
    }

    /// Connections in use per `(backend, server)` (`show servers conn`, column `used_cur`).
    pub fn connections(&self) -> Result<BTreeMap<(String, String), u64>, RuntimeError> {
        let answer = self.command("show servers conn")?;
        parse_connections(&answer).map_err(RuntimeError::Refused)
    }

    /// Every backend's servers and their addresses (`show servers state`).
    pub fn servers(&self) -> Result<BTreeMap<String, BTreeMap<String, Addr>>, RuntimeError> {
        let answer = self.command("show servers state")?;
        parse_servers_state(&answer).map_err(RuntimeError::Refused)
    }

    /// The entries of the map file `map` as HAProxy has them (`show map`).
    pub fn map_entries(&self, map: &Path) -> Result<BTreeMap<String, String>, RuntimeError> {
        let answer = self.command(&format!("show map {}", map.display()))?;
        parse_map(&answer).map_err(RuntimeError::Refused)
    }

    /// Makes the map entry `key` point at `value`: `set map`, and `add map` only when HAProxy
    /// says it has no such entry. Never `add map` on the caller's word that the entry is new:
    /// `add map` adds a second entry for a key it has, and a command whose answer was lost
    /// (socket timeout) is sent again.
    pub fn map_set(&self, map: &Path, key: &str, value: &str) -> Result<(), RuntimeError> {
        let map = map.display();
        let set = format!("set map {map} {key} {value}");
        match self.command(&set)? {
            answer if answer.starts_with("entry not found") => {
                self.expect(&format!("add map {map} {key} {value}"), &[])
            }
            answer => judge(&set, &answer, &[]),
        }
    }

    /// Removes the map entry `key`.
    pub fn map_del(&self, map: &Path, key: &str) -> Result<(), RuntimeError> {
        self.expect(&format!("del map {} {key}", map.display()), &[])
    }

    /// `show servers state` for the state file (HAProxy reads it back at start and reload).
    pub fn state_file_text(&self) -> Result<String, RuntimeError> {
        let answer = self.command("show servers state")?;
        if answer.starts_with('1') {
            Ok(answer + "\n")
        } else {
            Err(RuntimeError::Refused(format!(
                "show servers state: {}",
                one_line(&answer)
            )))
        }
    }
}

/// Whether `answer` says `command` succeeded: empty, or starting with one of `ok` (and, for
/// the multi-line answers of the certificate commands, not saying it failed).
fn judge(command: &str, answer: &str, ok: &[&str]) -> Result<(), RuntimeError> {
    let failed = [
        "error", "Error", "failed", "Failed", "Can't", "can't", "Unable", "unable",
    ];
    if answer.is_empty()
        || (ok.iter().any(|o| answer.starts_with(o)) && !failed.iter().any(|f| answer.contains(f)))
    {
        return Ok(());
    }
    let text = format!("{command:?}: {}", one_line(answer));
    let missing = [
        "No such server",
        "No such backend",
        "Key not found",
        "Unknown map",
        "doesn't exist",
        "not found",
    ];
    Err(if missing.iter().any(|m| answer.contains(m)) {
        RuntimeError::Missing(text)
    } else {
        RuntimeError::Refused(text)
    })
}

fn one_line(text: &str) -> String {
    let joined = text.lines().collect::<Vec<_>>().join(" / ");
    joined.chars().take(300).collect()
}

/// Parses `show servers conn`: `# header`, then `BACKEND/NAME id addr port - purge used_cur
/// ...` per server.
pub fn parse_connections(answer: &str) -> Result<BTreeMap<(String, String), u64>, String> {
    let mut lines = answer.lines();
    let header = lines.next().unwrap_or("");
    let column = header
        .trim_start_matches('#')
        .split_whitespace()
        .position(|c| c == "used_cur")
        .ok_or_else(|| {
            format!(
                "show servers conn: unexpected answer {:?}",
                one_line(answer)
            )
        })?;
    let mut out = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (backend, name) = fields
            .first()
            .and_then(|f| f.split_once('/'))
            .ok_or_else(|| format!("show servers conn: bad line {:?}", one_line(line)))?;
        let used = fields
            .get(column)
            .and_then(|u| u.parse::<u64>().ok())
            .ok_or_else(|| format!("show servers conn: bad line {:?}", one_line(line)))?;
        out.insert((backend.to_owned(), name.to_owned()), used);
    }
    Ok(out)
}

/// Parses `show servers state`: version line `1`, `# header`, then one line per server with
/// `be_name`, `srv_name`, `srv_addr` and `srv_port` where the header says.
pub fn parse_servers_state(
    answer: &str,
) -> Result<BTreeMap<String, BTreeMap<String, Addr>>, String> {
    let mut lines = answer.lines();
    let bad = || {
        format!(
            "show servers state: unexpected answer {:?}",
            one_line(answer)
        )
    };
    if lines.next().map(str::trim) != Some("1") {
        return Err(bad());
    }
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(bad)?
        .trim_start_matches('#')
        .split_whitespace()
        .collect();
    let col = |name: &str| header.iter().position(|c| *c == name).ok_or_else(bad);
    let (bk, n, a, p) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_port")?,
    );
    let mut out: BTreeMap<String, BTreeMap<String, Addr>> = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(backend), Some(name), Some(host), Some(port)) =
            (f.get(bk), f.get(n), f.get(a), f.get(p))
        else {
            return Err(bad());
        };
        let port = port.parse::<u16>().map_err(|_| bad())?;
        out.entry((*backend).to_owned()).or_default().insert(
            (*name).to_owned(),
            Addr {
                host: (*host).to_owned(),
                port,
            },
        );
    }
    Ok(out)
}

/// Parses `show map FILE`: `0xID KEY VALUE` per entry.
pub fn parse_map(answer: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for line in answer.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some(id), Some(key), Some(value), None) if id.starts_with("0x") => {
                out.insert(key.to_owned(), value.to_owned());
            }
            _ => return Err(format!("show map: unexpected line {:?}", one_line(line))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_runtime_answers() {
        let conn = "# bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb safe_nb idle_lim idle_cur idle_per_thr[2]\n\
                    servers/a 3/1 127.0.0.1 28081 - 5000 0 1 1 0 0 -1 0 0 0\n\
                    pool-1/a 4/2 127.0.0.1 28082 - 0 4 0 0 0 0 0 0\n";
        let c = parse_connections(conn).unwrap();
        let k = |b: &str, n: &str| (b.to_owned(), n.to_owned());
        assert_eq!((c[&k("servers", "a")], c[&k("pool-1", "a")]), (0, 4));
        let state = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
                     3 servers 1 a 127.0.0.1 0 0 1 1 1 8 2 0 6 0 0 0 - 28081 - 0 0 - - 0\n\
                     4 pool-1 1 a 127.0.0.2 0 0 1 1 1 8 2 0 6 0 0 0 - 28082 - 0 0 - - 0\n";
        let s = parse_servers_state(state).unwrap();
        assert_eq!(s["servers"]["a"].haproxy(), "127.0.0.1:28081");
        assert_eq!(s["pool-1"]["a"].haproxy(), "127.0.0.2:28082");
        for bad in ["", "Unknown command", "1\n# srv_name\nx"] {
            assert!(parse_servers_state(bad).is_err(), "{bad:?}");
        }
        assert!(parse_connections("No such backend.").is_err());
        let map = "0x55d3c8a0 api.example.com/ pool-1\n0x55d3c8b0 example.com/api pool-2\n";
        let m = parse_map(map).unwrap();
        assert_eq!(m["example.com/api"], "pool-2");
        assert!(parse_map("Unknown map identifier.").is_err());
        let mut m = crate::fuzz::Mutator::new(0x4a9);
        for _ in 0..3_000 {
            let _ = parse_connections(&m.mutate(conn.as_bytes()));
            let _ = parse_servers_state(&m.mutate(state.as_bytes()));
            let _ = parse_map(&m.mutate(map.as_bytes()));
            let _ = Addr::parse(&m.mutate(b"[fd00::5]:8080"));
        }
    }

    /// The certificate commands' answers, as HAProxy 2.6 gives them, and what is not one.
    #[test]
    fn certificate_answers_are_judged() {
        let ok = |answer: &str, prefixes: &[&str]| judge("cmd", answer, prefixes).is_ok();
        assert!(ok(
            "New empty certificate store '/lb/certs/a.pem'!",
            &["New empty certificate store"]
        ));
        assert!(ok(
            "Transaction created for certificate /lb/certs/a.pem!",
            &["Transaction created"]
        ));
        assert!(ok("Committing /lb/certs/a.pem\nSuccess!", &["Committing"]));
        assert!(ok(
            "Inserting certificate '/lb/certs/a.pem' in crt-list '/lb/crt-list.txt'.\nSuccess!",
            &["Inserting certificate"]
        ));
        assert!(ok(
            "Entry '/lb/certs/a.pem' deleted in crtlist '/lb/crt-list.txt'!",
            &["Entry"]
        ));
        assert!(ok(
            "Certificate '/lb/certs/a.pem' deleted!",
            &["Certificate"]
        ));
        // A right start with a failure after it, or anything else, is refused.
        assert!(!ok(
            "Committing /lb/certs/a.pem\nFailed!\nunable to load the key",
            &["Committing"]
        ));
        assert!(matches!(
            judge(
                "cmd",
                "Can't replace a certificate which is not referenced by the configuration!",
                &["Transaction"]
            ),
            Err(RuntimeError::Refused(_))
        ));
        assert!(matches!(
            judge(
                "cmd",
                "certificate '/lb/certs/x.pem' doesn't exist!",
                &["Certificate"]
            ),
            Err(RuntimeError::Missing(_))
        ));
        let mut m = crate::fuzz::Mutator::new(0xce7);
        for _ in 0..2_000 {
            let _ = judge(
                "cmd",
                &m.mutate(b"Committing /lb/certs/a.pem\nSuccess!"),
                &["Committing"],
            );
        }
    }

    #[test]
    fn config_routes_and_reads_back() {
        let f = Frontend {
            listen: "127.0.0.1:8080".into(),
            stats: Some("127.0.0.1:8404".into()),
            dir: "/run/lb".into(),
            check_inter: Duration::from_millis(500),
            tunnel_timeout: Duration::from_secs(3600),
            tcp: vec![TcpListener {
                bind: "[::]:5432".into(),
                prefix: "/app/db".into(),
                backend: "tcp-1".into(),
            }],
            https: Some("[::]:8443".into()),
            redirect: true,
            hsts: Some(Duration::from_secs(86_400)),
            acme: true,
            generation: 7,
        };
        let mut servers = BTreeMap::new();
        servers.insert("b".to_owned(), Addr::parse("[fd00::2]:80").unwrap());
        servers.insert("a".to_owned(), Addr::parse("10.0.0.1:80").unwrap());
        let backends = vec![
            BackendConfig {
                name: DEFAULT_BACKEND.into(),
                service: Some("/app/servers".into()),
                servers: servers.clone(),
            },
            BackendConfig {
                name: "pool-1".into(),
                service: None,
                servers: BTreeMap::new(),
            },
        ];
        let cfg = f.render(&backends);
        assert!(cfg.contains("    server a 10.0.0.1:80 check inter 500ms fall 2 rise 1\n    server b fd00::2:80 check"));
        assert!(cfg.contains("stats uri /admin-status"));
        assert!(cfg.contains("prometheus-exporter if { path /metrics }"));
        assert!(cfg.contains("map_beg(/run/lb/routes.map)"));
        // Every worker shares admin.sock (it hands the listeners over); the generation's own
        // socket is hecd-haproxy's.
        assert!(cfg.contains(
            "    stats socket /run/lb/admin.sock mode 600 level admin expose-fd listeners\n    stats socket /run/lb/runtime-7.sock mode 600 level admin\n"
        ));
        assert_eq!(f.runtime_path(), Path::new("/run/lb/runtime-7.sock"));
        assert!(cfg.contains("server-state-file /run/lb/servers.state"));
        assert!(cfg.contains("timeout tunnel 3600000ms\n"));
        assert!(cfg.contains(
            "frontend tcp-1-in\n    mode tcp\n    bind [::]:5432\n    default_backend tcp-1\n"
        ));
        assert!(cfg.contains("timeout http-request 10s\n"));
        assert!(cfg.contains("http-request set-header X-Forwarded-For %[src]\n"));
        assert!(cfg.contains(
            "    bind [::]:8443 ssl crt-list /run/lb/crt-list.txt strict-sni alpn h2,http/1.1 ssl-min-ver TLSv1.2\n"
        ));
        assert!(cfg.contains("http-request set-header Host %[var(txn.hecd_host)]:8443 if !{ ssl_fc } hecd_cert !hecd_acme\n"));
        assert!(cfg.contains(
            "http-request redirect scheme https code 308 if !{ ssl_fc } hecd_cert !hecd_acme\n"
        ));
        assert!(cfg.contains("set-header Strict-Transport-Security max-age=86400 if { ssl_fc }\n"));
        assert!(cfg.contains("http-request return status 200 content-type text/plain lf-string %[path,field(4,/),map(/run/lb/acme.map)] if { path_beg /.well-known/acme-challenge/ } { path,field(4,/),map(/run/lb/acme.map) -m found }\n"));
        assert_eq!(parse_config(&cfg), backends);
        // On 443 the redirect names no port; --no-redirect and no --hsts leave both out.
        let on_443 = Frontend {
            https: Some(":443".into()),
            ..f.clone()
        };
        assert!(
            on_443
                .render(&backends)
                .contains("set-header Host %[var(txn.hecd_host)] if")
        );
        let plain = Frontend {
            redirect: false,
            hsts: None,
            ..f.clone()
        }
        .render(&backends);
        assert!(plain.contains("strict-sni"));
        assert!(!plain.contains("redirect") && !plain.contains("Strict-Transport"));
        let no_https = Frontend {
            https: None,
            ..f.clone()
        }
        .render(&backends);
        assert!(!no_https.contains("crt-list") && !no_https.contains("redirect"));
        let mut routes = BTreeMap::new();
        routes.insert("a.com/".to_owned(), "pool-1".to_owned());
        assert_eq!(render_map(&routes), "a.com/ pool-1\n");
    }
}
