//! HAProxy, as hecd-haproxy drives it: the config file it renders (so a restart or reload
//! comes up with the same servers), the runtime API over the admin socket (add, enable, drain,
//! re-address and delete servers without a reload), and the server names and addresses it
//! accepts from etcd. Nothing read from etcd reaches HAProxy without passing [`Server::parse`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The backend hecd-haproxy keeps equal to the keys.
pub const BACKEND: &str = "servers";

/// Longest server name accepted (HAProxy has no limit of its own; a key segment this long is
/// not a container name).
const MAX_NAME: usize = 128;

/// Longest answer read from the runtime API (`show servers conn` for thousands of servers is
/// well below this).
const MAX_ANSWER: u64 = 4 << 20;

/// Where a server is: an IP address or a host name, and a port; displayed as etcd values are
/// written (`10.0.0.5:8080`, `[fd00::5]:8080`). The same type hecd-init advertises.
pub use crate::discovery::Address as Addr;

impl Addr {
    /// Parses an etcd value: exactly `IP:PORT`, IPv6 as `[ADDR]:PORT`, nothing else (no
    /// spaces, no HAProxy keywords, no scheme). Host names are refused: HAProxy's runtime API
    /// moves a server only to an IP address (`set server ... addr`).
    pub fn parse(value: &str) -> Result<Addr, String> {
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
        Ok(Addr {
            host: host.to_owned(),
            port,
        })
    }

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

/// The server name for a key: its segment after `prefix/`, when HAProxy accepts it as a name
/// (letters, digits, `-`, `_`, `.`, `:`; HAProxy's own rule) and it is the last segment.
pub fn server_name(prefix: &str, key: &[u8]) -> Result<String, String> {
    let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
    let name = key
        .strip_prefix(prefix)
        .and_then(|k| k.strip_prefix('/'))
        .ok_or_else(|| format!("key {key:?} is not under {prefix}/"))?;
    if name.is_empty() || name.contains('/') {
        return Err(format!(
            "key {key:?}: expected {prefix}/NAME with no further '/'"
        ));
    }
    if name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(format!(
            "key {key:?}: HAProxy server names take letters, digits, '-', '_', '.' and ':' (at most {MAX_NAME})"
        ));
    }
    Ok(name.to_owned())
}

/// What the config file says beyond the servers.
#[derive(Clone, Debug)]
pub struct Frontend {
    /// `bind` address of the frontend, as given to `--listen`.
    pub listen: String,
    /// `--stats`: the stats page's bind address, if any.
    pub stats: Option<String>,
    /// The working directory: config, sockets, pid file, state file.
    pub dir: PathBuf,
    /// `inter` of the health checks.
    pub check_inter: Duration,
}

impl Frontend {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("admin.sock")
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

    /// The whole config file for `servers`.
    pub fn render(&self, servers: &BTreeMap<String, Addr>) -> String {
        let dir = self.dir.display();
        let mut out = format!(
            "# Written by hecd-haproxy: it rewrites this file after every change, so edits are lost.\n\
             global\n\
             \x20   master-worker\n\
             \x20   stats socket {dir}/admin.sock mode 600 level admin expose-fd listeners\n\
             \x20   pidfile {dir}/haproxy.pid\n\
             \x20   server-state-file {dir}/servers.state\n\
             \n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             \x20   retries 3\n\
             \x20   option redispatch 1\n\
             \x20   load-server-state-from-file global\n\
             \n\
             frontend app\n\
             \x20   bind {}\n\
             \x20   default_backend {BACKEND}\n",
            self.listen
        );
        if let Some(stats) = &self.stats {
            out.push_str(&format!(
                "\nlisten stats\n    bind {stats}\n    stats enable\n    stats uri /admin-status\n    stats refresh 5s\n"
            ));
        }
        out.push_str(&format!("\nbackend {BACKEND}\n    balance roundrobin\n"));
        for (name, addr) in servers {
            out.push_str(&format!(
                "    server {name} {} {}\n",
                addr.haproxy(),
                self.check_options()
            ));
        }
        out
    }
}

/// The runtime API on HAProxy's admin socket, one connection per command.
#[derive(Clone, Debug)]
pub struct Runtime {
    socket: PathBuf,
    timeout: Duration,
}

impl Runtime {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sends one command and reads the whole answer (bounded in time and size).
    pub fn command(&self, command: &str) -> Result<String, String> {
        debug_assert!(!command.contains(['\n', ';']));
        let fail = |e: std::io::Error| format!("{}: {e}", self.socket.display());
        let mut s = UnixStream::connect(&self.socket).map_err(fail)?;
        s.set_read_timeout(Some(self.timeout)).map_err(fail)?;
        s.set_write_timeout(Some(self.timeout)).map_err(fail)?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(fail)?;
        let mut answer = Vec::new();
        (&mut s)
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .map_err(fail)?;
        Ok(String::from_utf8_lossy(&answer).trim().to_owned())
    }

    /// A command whose success is an empty answer (or one of `ok`, for those that say so).
    fn expect(&self, command: &str, ok: &[&str]) -> Result<(), String> {
        let answer = self.command(command)?;
        if answer.is_empty() || ok.iter().any(|o| answer.starts_with(o)) {
            Ok(())
        } else {
            Err(format!("{command:?}: {}", one_line(&answer)))
        }
    }

    /// Adds `name` at `addr` with health checks and puts it in service: `add server` (which
    /// creates it in maintenance), `enable health`, `enable server`.
    pub fn add(&self, name: &str, addr: &Addr, check: &str) -> Result<(), String> {
        let server = format!("{BACKEND}/{name}");
        self.expect(
            &format!("add server {server} {} {check}", addr.haproxy()),
            &["New server registered."],
        )?;
        self.expect(&format!("enable health {server}"), &[])?;
        self.expect(&format!("enable server {server}"), &[])
    }

    /// Moves `name` to `addr`: new connections go there, open ones finish where they are.
    pub fn readdress(&self, name: &str, addr: &Addr) -> Result<(), String> {
        self.expect(
            &format!("set server {BACKEND}/{name} {}", addr.addr_and_port()),
            &["IP changed", "no need to change", "port changed"],
        )
    }

    /// Drain: no new requests, open ones finish.
    pub fn drain(&self, name: &str) -> Result<(), String> {
        self.expect(&format!("set server {BACKEND}/{name} state drain"), &[])
    }

    /// Back in service after a drain (its key came back).
    pub fn ready(&self, name: &str) -> Result<(), String> {
        self.expect(&format!("set server {BACKEND}/{name} state ready"), &[])
    }

    /// Maintenance, then delete. With `force`, open sessions are shut first.
    pub fn delete(&self, name: &str, force: bool) -> Result<(), String> {
        let server = format!("{BACKEND}/{name}");
        if force {
            self.expect(&format!("shutdown sessions server {server}"), &[])?;
        }
        self.expect(&format!("set server {server} state maint"), &[])?;
        self.expect(&format!("del server {server}"), &["Server deleted."])
    }

    /// Connections in use per server of the backend (`show servers conn`, column `used_cur`).
    pub fn connections(&self) -> Result<BTreeMap<String, u64>, String> {
        let answer = self.command(&format!("show servers conn {BACKEND}"))?;
        parse_connections(&answer)
    }

    /// The servers the backend has now and their addresses (`show servers state`).
    pub fn servers(&self) -> Result<BTreeMap<String, Addr>, String> {
        let answer = self.command(&format!("show servers state {BACKEND}"))?;
        parse_servers_state(&answer)
    }

    /// `show servers state` for the state file (HAProxy reads it back at start and reload).
    pub fn state_file_text(&self) -> Result<String, String> {
        let answer = self.command("show servers state")?;
        if answer.starts_with('1') {
            Ok(answer + "\n")
        } else {
            Err(format!("show servers state: {}", one_line(&answer)))
        }
    }
}

fn one_line(text: &str) -> String {
    let joined = text.lines().collect::<Vec<_>>().join(" / ");
    joined.chars().take(300).collect()
}

/// Parses `show servers conn BACKEND`: `# header`, then `BACKEND/NAME id addr port - purge
/// used_cur ...` per server.
pub fn parse_connections(answer: &str) -> Result<BTreeMap<String, u64>, String> {
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
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name = fields
            .first()
            .and_then(|f| f.split_once('/'))
            .map(|(_, n)| n)
            .ok_or_else(|| format!("show servers conn: bad line {line:?}"))?;
        let used = fields
            .get(column)
            .and_then(|u| u.parse::<u64>().ok())
            .ok_or_else(|| format!("show servers conn: bad line {line:?}"))?;
        out.insert(name.to_owned(), used);
    }
    Ok(out)
}

/// Parses `show servers state BACKEND`: version line `1`, `# header`, then one line per server
/// with `srv_name`, `srv_addr` and `srv_port` where the header says.
pub fn parse_servers_state(answer: &str) -> Result<BTreeMap<String, Addr>, String> {
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
    let (n, a, p) = (col("srv_name")?, col("srv_addr")?, col("srv_port")?);
    let mut out = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(host), Some(port)) = (f.get(n), f.get(a), f.get(p)) else {
            return Err(bad());
        };
        let port = port.parse::<u16>().map_err(|_| bad())?;
        out.insert(
            (*name).to_owned(),
            Addr {
                host: (*host).to_owned(),
                port,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_must_be_exactly_host_port() {
        let ok = |v: &str| Addr::parse(v).unwrap();
        assert_eq!(ok("10.0.0.5:8080").haproxy(), "10.0.0.5:8080");
        assert_eq!(ok("[fd00::5]:8080").haproxy(), "fd00::5:8080");
        assert_eq!(ok("[fd00::5]:8080").to_string(), "[fd00::5]:8080");
        for bad in [
            "",
            "10.0.0.5",
            "10.0.0.5:",
            "10.0.0.5:0",
            "10.0.0.5:65536",
            "10.0.0.5:+80",
            "10.0.0.5:80 ",
            " 10.0.0.5:80",
            "10.0.0.5:80\n    server evil 1.2.3.4:80",
            "10.0.0.5:80 backup",
            "fd00::5:8080",
            "[fd00::5]",
            "[fd00::5]:",
            "[nothex]:80",
            "http://10.0.0.5:80",
            "999.1.1.1:80",
            "-bad.host:80",
            "a..b:80",
            "host_name:80",
            "web-1.local:80",
            "localhost:80",
            "010.0.0.1:80",
        ] {
            assert!(Addr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_what_haproxy_accepts() {
        let p = "/app/servers";
        assert_eq!(server_name(p, b"/app/servers/web.1").unwrap(), "web.1");
        assert_eq!(server_name(p, b"/app/servers/a_b-c:d").unwrap(), "a_b-c:d");
        for bad in [
            &b"/app/servers/"[..],
            b"/app/servers/a/b",
            b"/app/serversx",
            b"/other/a",
            b"/app/servers/a b",
            b"/app/servers/a\nb",
            b"/app/servers/\xff",
            b"/app/servers/a#b",
            b"/app/servers/caf\xc3\xa9",
        ] {
            assert!(server_name(p, bad).is_err(), "{bad:?}");
        }
        let long = format!("/app/servers/{}", "a".repeat(MAX_NAME + 1));
        assert!(server_name(p, long.as_bytes()).is_err());
    }

    #[test]
    fn parses_real_runtime_answers() {
        let conn = "# bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb safe_nb idle_lim idle_cur idle_per_thr[2]\n\
                    servers/a 3/1 127.0.0.1 28081 - 5000 0 1 1 0 0 -1 0 0 0\n\
                    servers/b 3/2 127.0.0.1 28082 - 0 4 0 0 0 0 0 0\n";
        let c = parse_connections(conn).unwrap();
        assert_eq!((c["a"], c["b"]), (0, 4));
        let state = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
                     3 servers 1 a 127.0.0.1 0 0 1 1 1 8 2 0 6 0 0 0 - 28081 - 0 0 - - 0\n";
        let s = parse_servers_state(state).unwrap();
        assert_eq!(s["a"].haproxy(), "127.0.0.1:28081");
        for bad in ["", "Unknown command", "1\n# srv_name\nx"] {
            assert!(parse_servers_state(bad).is_err(), "{bad:?}");
        }
        assert!(parse_connections("No such backend.").is_err());
        let mut m = crate::fuzz::Mutator::new(0x4a9);
        for _ in 0..3_000 {
            let _ = parse_connections(&m.mutate(conn.as_bytes()));
            let _ = parse_servers_state(&m.mutate(state.as_bytes()));
            let _ = Addr::parse(&m.mutate(b"[fd00::5]:8080"));
        }
    }

    #[test]
    fn config_lists_the_servers_with_checks() {
        let f = Frontend {
            listen: "127.0.0.1:8080".into(),
            stats: Some("127.0.0.1:8404".into()),
            dir: "/run/lb".into(),
            check_inter: Duration::from_millis(500),
        };
        let mut servers = BTreeMap::new();
        servers.insert("b".to_owned(), Addr::parse("[fd00::2]:80").unwrap());
        servers.insert("a".to_owned(), Addr::parse("10.0.0.1:80").unwrap());
        let cfg = f.render(&servers);
        assert!(cfg.contains("    server a 10.0.0.1:80 check inter 500ms fall 2 rise 1\n    server b fd00::2:80 check"));
        assert!(cfg.contains("stats uri /admin-status"));
        assert!(cfg.contains("server-state-file /run/lb/servers.state"));
    }
}
