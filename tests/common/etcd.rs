//! A real etcd-server (Debian's `etcd`, 3.4) per test: free loopback ports, a temp data dir,
//! its own process group, stopped (and its dir removed) on drop. Reads go through the v3 JSON
//! gateway on a plain-HTTP client URL, so a TLS-only setup can still be observed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{TempDir, wait_until};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How often a member is started on new ports when one was taken before etcd bound it.
const BIND_TRIES: usize = 5;

/// One etcd member.
pub struct Etcd {
    pub name: String,
    /// Port of the plain-HTTP client URL the tests read through.
    pub port: u16,
    pub peer_port: u16,
    /// Extra client URL (e.g. an https:// one), if any.
    pub extra_url: Option<String>,
    cluster: String,
    args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Etcd {
    /// A single-member cluster.
    pub fn start() -> Etcd {
        Self::start_with(&[])
    }

    /// A single-member cluster with extra etcd flags.
    pub fn start_with(args: &[&str]) -> Etcd {
        Self::start_solo(None, args)
    }

    /// A single member with an extra client URL `SCHEME://HOST:PORT` on a free port (e.g.
    /// `https://127.0.0.1`, or `http://0.0.0.0` for containers) and flags; the URL chosen is
    /// in `extra_url`.
    pub fn start_with_url(scheme_host: &str, args: &[&str]) -> Etcd {
        Self::start_solo(Some(scheme_host), args)
    }

    /// A port chosen free may be taken before etcd binds it (a busy machine, tests side by
    /// side): then etcd exits saying so, and the member is started again on new ports.
    fn start_solo(scheme_host: Option<&str>, args: &[&str]) -> Etcd {
        for _ in 0..BIND_TRIES {
            let extra = scheme_host.map(|sh| format!("{sh}:{}", free_port()));
            let mut e = Self::member("solo", free_port(), free_port(), extra);
            e.cluster = format!("solo=http://127.0.0.1:{}", e.peer_port);
            e.args = args.iter().map(|s| s.to_string()).collect();
            e.spawn();
            if e.became_healthy() {
                return e;
            }
            e.kill();
        }
        panic!("etcd could not bind free ports in {BIND_TRIES} tries");
    }

    fn member(name: &str, port: u16, peer_port: u16, extra_url: Option<String>) -> Etcd {
        let dir = TempDir::new(&format!("etcd-{name}"));
        let log = dir.0.join("etcd.log");
        Etcd {
            name: name.to_owned(),
            port,
            peer_port,
            extra_url,
            cluster: String::new(),
            args: Vec::new(),
            dir,
            child: None,
            log,
        }
    }

    /// A 3-member cluster on loopback (started again on new ports if one was taken).
    pub fn cluster3() -> Vec<Etcd> {
        for _ in 0..BIND_TRIES {
            let mut members: Vec<Etcd> = (0..3)
                .map(|i| Self::member(&format!("m{i}"), free_port(), free_port(), None))
                .collect();
            let cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                m.cluster = cluster.clone();
                m.spawn();
            }
            if members.iter().all(Etcd::became_healthy) {
                return members;
            }
            // Dropping them kills them.
        }
        panic!("an etcd cluster could not bind free ports in {BIND_TRIES} tries");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    fn spawn(&mut self) {
        let mut client_urls = self.url();
        if let Some(extra) = &self.extra_url {
            client_urls = format!("{extra},{client_urls}");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &self.name, "--data-dir"])
            .arg(self.data_dir())
            .args([
                "--listen-client-urls",
                &client_urls,
                "--advertise-client-urls",
                &client_urls,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_port),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer_port),
            ])
            .args([
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                "new",
            ])
            // Same token for every member of a cluster, different across test clusters.
            .args([
                "--initial-cluster-token",
                &format!("hecd-{}", cluster_id(&self.cluster)),
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0);
        self.child = Some(
            cmd.spawn()
                .expect("start etcd (apt-get install etcd-server)"),
        );
    }

    /// Waits until the member serves requests (15 s at most).
    pub fn wait_healthy(&self) {
        let ok = wait_until(Duration::from_secs(15), || self.healthy());
        assert!(
            ok,
            "etcd {} did not become healthy; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    fn healthy(&self) -> bool {
        self.call("/health", None)
            .is_some_and(|v| v.get("health").and_then(Value::as_str) == Some("true"))
    }

    /// Waits until the member is healthy (true), or says it could not bind a port (false, so
    /// the caller starts it on others); fails the test on anything else.
    fn became_healthy(&self) -> bool {
        let mut lost_port = false;
        let ok = wait_until(Duration::from_secs(15), || {
            lost_port = self.log_text().contains("address already in use");
            lost_port || self.healthy()
        });
        if lost_port {
            eprintln!(
                "etcd {}: a port was taken before it bound it; new ports",
                self.name
            );
            return false;
        }
        if !ok && self.log_text().trim().is_empty() {
            // Not a word in 15 s: it never really started (a machine busy with containers
            // and builds has been seen to do that). Started again, like a lost port.
            eprintln!("etcd {}: silent for 15 s; started again", self.name);
            return false;
        }
        assert!(
            ok,
            "etcd {} did not become healthy; log:\n{}",
            self.name,
            self.log_text()
        );
        true
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, sig: i32) {
        if let Some(child) = &mut self.child {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(child.id() as i32), sig) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            self.child = None;
        }
    }

    /// Stops the member gracefully.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Kills the member at once.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// The member's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Kills the member and deletes its data: it starts again as a new, empty cluster.
    pub fn wipe(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("wipe data dir");
    }

    /// Starts a stopped member again without waiting for it: the members of a cluster must
    /// all be started before any of them can elect a leader and become healthy.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd {} is running", self.name);
        self.spawn();
    }

    /// Starts the member again, with its data, or with an empty data dir (`wipe`).
    pub fn restart(&mut self, wipe: bool) {
        self.stop();
        if wipe {
            std::fs::remove_dir_all(self.data_dir()).expect("wipe data dir");
        }
        self.spawn();
        self.wait_healthy();
    }

    /// POSTs (or GETs, without a body) a JSON gateway path; `None` when no JSON came back.
    pub fn call(&self, path: &str, body: Option<Value>) -> Option<Value> {
        call_on(self.port, path, body)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<String> {
        get_on(self.port, key)
    }

    fn kv(&self, key: &str) -> Option<Value> {
        kv_on(self.port, key)
    }

    /// The lease `key` is attached to.
    pub fn lease_of(&self, key: &str) -> Option<i64> {
        self.kv(key)?.get("lease")?.as_str()?.parse().ok()
    }

    /// (granted TTL, remaining TTL) of a lease.
    pub fn lease_ttl(&self, lease: i64) -> Option<(i64, i64)> {
        let v = self.call(
            "/v3/lease/timetolive",
            Some(json!({ "ID": lease.to_string() })),
        )?;
        let field = |n: &str| v.get(n)?.as_str()?.parse::<i64>().ok();
        Some((field("grantedTTL")?, field("TTL")?))
    }

    pub fn revoke(&self, lease: i64) {
        self.call("/v3/lease/revoke", Some(json!({ "ID": lease.to_string() })));
    }

    /// Whether this member is the cluster's leader.
    pub fn is_leader(&self) -> bool {
        self.call("/v3/maintenance/status", Some(json!({})))
            .is_some_and(|v| v.get("leader") == v.get("header").and_then(|h| h.get("member_id")))
    }

    /// Puts `key = value` (any bytes, any size etcd takes) through the JSON gateway.
    pub fn put(&self, key: &str, value: &str) {
        let body = json!({
            "key": b64encode(key.as_bytes()),
            "value": b64encode(value.as_bytes()),
        });
        assert!(
            self.call("/v3/kv/put", Some(body)).is_some(),
            "put {key:?} failed"
        );
    }

    /// A member with an extra `https://` client URL served with the certificates
    /// [`make_certs`] wrote in `certs` (plus `args`); returns it and that URL.
    pub fn start_tls(certs: &std::path::Path, args: &[&str]) -> (Etcd, String) {
        let file = |f: &str| certs.join(f).to_string_lossy().into_owned();
        let (cert, key) = (file("server.pem"), file("server.key"));
        let mut all = vec!["--cert-file", cert.as_str(), "--key-file", key.as_str()];
        all.extend_from_slice(args);
        let etcd = Etcd::start_with_url("https://127.0.0.1", &all);
        let https = etcd.extra_url.clone().expect("the https URL");
        (etcd, https)
    }

    /// Turns authentication on with a `root` user (role `root`) whose password is `password`.
    pub fn enable_auth(&self, password: &str) {
        let user = format!("root:{password}");
        for args in [
            &["user", "add", user.as_str()][..],
            &["role", "add", "root"],
            &["user", "grant-role", "root", "root"],
            &["auth", "enable"],
        ] {
            let out = self.etcdctl(args);
            assert!(!out.contains("Error"), "etcdctl {args:?}: {out}");
        }
    }

    /// Runs etcdctl against this member's plain URL.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        etcdctl(&self.url(), args)
    }
}

/// Runs etcdctl (v3) against `endpoints` (comma-separated URLs), bounded by 10 s; returns
/// what it printed, errors included.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["10", "etcdctl", "--dial-timeout=2s", "--command-timeout=4s"])
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster_id(cluster: &str) -> usize {
    cluster.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    })
}

pub fn b64encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[(n >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}

pub fn b64decode(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for c in clean.chunks(4) {
        let n = c.iter().enumerate().fold(0u32, |acc, (i, b)| {
            acc | (u32::from(val(*b)) << (18 - 6 * i))
        });
        for i in 0..c.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
pub fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hecd test CA",
        ],
    ]
    .concat());
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// POSTs (or GETs, without a body) a JSON gateway path of the member whose client port is
/// `port`; `None` when no JSON came back. For threads that do not own the [`Etcd`].
pub fn call_on(port: u16, path: &str, body: Option<Value>) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let req = match &body {
        Some(b) => {
            let text = b.to_string();
            format!(
                "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        }
        None => format!("GET {path} HTTP/1.0\r\n\r\n"),
    };
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// The text of `/metrics` on the member whose client port is `port` (empty if it does not
/// answer).
pub fn metrics_on(port: u16) -> String {
    let get = || -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out.split_once("\r\n\r\n")?.1.to_owned())
    };
    get().unwrap_or_default()
}

/// The sum of the samples in Prometheus `text` whose line starts with `start` (a metric name
/// and, if wanted, the start of its labels).
pub fn metric_sum(text: &str, start: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of `key` on the member whose client port is `port`, if present.
pub fn get_on(port: u16, key: &str) -> Option<String> {
    let kv = kv_on(port, key)?;
    String::from_utf8(b64decode(kv.get("value")?.as_str()?)).ok()
}

fn kv_on(port: u16, key: &str) -> Option<Value> {
    let v = call_on(
        port,
        "/v3/kv/range",
        Some(json!({ "key": b64encode(key.as_bytes()) })),
    )?;
    v.get("kvs")?.as_array()?.first().cloned()
}
