//! An ACME CA for the tests: Debian's `pebble` (validation on: no `PEBBLE_VA_ALWAYS_VALID`;
//! `PEBBLE_VA_NOSLEEP=1` so it validates at once), with `pebble-challtestsrv` as its DNS, whose
//! A records the test sets per host. Both on loopback, on ports chosen here (tried again on
//! other ports when one was taken), killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::etcd::free_port;
use super::tls::Ca;
use super::wait_until;

pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// The directory URL to give `--acme`.
    pub directory: String,
    /// The CA that signed pebble's own HTTPS certificate (`--acme-cacert`).
    pub cacert: PathBuf,
    mgmt: u16,
    dns_mgmt: u16,
    log: PathBuf,
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start pebble (apt-get install pebble)")
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Pebble {
    /// Starts pebble, validating HTTP-01 on port `http_port` of whatever address the DNS
    /// gives for a host (127.0.0.1 unless [`Pebble::point`] says otherwise).
    pub fn start(dir: &Path, http_port: u16) -> Pebble {
        let ca = Ca::new(dir);
        let text = ca.issue(&["localhost"], 30);
        let at = text.find("-----BEGIN PRIVATE KEY").unwrap();
        let (cert, key) = (dir.join("pebble-cert.pem"), dir.join("pebble-key.pem"));
        std::fs::write(&cert, &text[..at]).unwrap();
        std::fs::write(&key, &text[at..]).unwrap();
        for _ in 0..5 {
            let (listen, mgmt, tls, dns_port, dns_mgmt) = (
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
            );
            let dns = spawn(
                Command::new("pebble-challtestsrv")
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .arg("-dns01")
                    .arg(format!("127.0.0.1:{dns_port}"))
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .arg("-management")
                    .arg(format!("127.0.0.1:{dns_mgmt}")),
                &dir.join("challtestsrv.log"),
            );
            let config = serde_json::json!({"pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }});
            let config_path = dir.join("pebble.json");
            std::fs::write(&config_path, config.to_string()).unwrap();
            let log = dir.join("pebble.log");
            let pebble = spawn(
                Command::new("pebble")
                    .arg("-config")
                    .arg(&config_path)
                    .arg("-dnsserver")
                    .arg(format!("127.0.0.1:{dns_port}"))
                    .env("PEBBLE_VA_NOSLEEP", "1")
                    .env_remove("PEBBLE_VA_ALWAYS_VALID"),
                &log,
            );
            let directory = format!("https://localhost:{listen}/dir");
            let p = Pebble {
                pebble,
                dns,
                directory,
                cacert: ca.cert_path(),
                mgmt,
                dns_mgmt,
                log,
            };
            let up = wait_until(Duration::from_secs(10), || {
                p.curl(&["--cacert"], &p.directory)
                    .is_some_and(|d| d.contains("newOrder"))
                    && p.try_point("ready.test", "127.0.0.1")
            });
            if up {
                return p;
            }
            eprintln!("pebble did not come up (a port taken?): {}", p.log());
            drop(p);
        }
        panic!("pebble did not start in 5 tries");
    }

    /// `curl -sf` of `url` (with `--cacert CA` when `ca` is that flag), its body.
    fn curl(&self, ca: &[&str], url: &str) -> Option<String> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "--max-time", "5"]);
        if !ca.is_empty() {
            cmd.args(ca).arg(&self.cacert);
        }
        let out = cmd.arg(url).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The DNS answers `host`'s A queries with `ip` from now on.
    pub fn point(&self, host: &str, ip: &str) {
        assert!(self.try_point(host, ip), "pebble-challtestsrv add-a {host}");
    }

    fn try_point(&self, host: &str, ip: &str) -> bool {
        // `add-a` adds to what the host had: cleared first.
        let post = |path: &str, body: serde_json::Value| {
            Command::new("curl")
                .args(["-sf", "--max-time", "5", "-d"])
                .arg(body.to_string())
                .arg(format!("http://127.0.0.1:{}/{path}", self.dns_mgmt))
                .status()
                .is_ok_and(|s| s.success())
        };
        let host = format!("{host}.");
        post("clear-a", serde_json::json!({ "host": host }))
            && post(
                "add-a",
                serde_json::json!({ "host": host, "addresses": [ip] }),
            )
    }

    /// Pebble's root certificate, which its certificates chain to (PEM).
    pub fn root(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--cacert"])
            .arg(&self.cacert)
            .arg(format!("https://localhost:{}/roots/0", self.mgmt))
            .output()
            .unwrap();
        assert!(out.status.success(), "pebble's root");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Orders pebble created (`Added order ... to the db`; a `POST /order-plz` it refused
    /// with `badNonce`, which the client sends again, is none).
    pub fn orders(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("Added order"))
            .count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        kill(&mut self.pebble);
        kill(&mut self.dns);
    }
}
