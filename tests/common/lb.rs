//! hecd-haproxy for the tests: started in a temporary directory with its HAProxy (both killed
//! with the test), its admin socket, and a load generator through it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::etcd::free_port;
use super::{Hecd, TempDir, start_command, wait_until};

/// hecd-haproxy running with its HAProxy, in a temporary directory.
pub struct Lb {
    pub h: Hecd,
    pub dir: PathBuf,
    pub port: u16,
    pub _tmp: Option<TempDir>,
}

impl Lb {
    pub fn start(etcd_urls: &str, args: &[&str]) -> Lb {
        let tmp = TempDir::new("lb");
        let dir = tmp.0.clone();
        let mut lb = Lb::start_in(etcd_urls, &dir, args);
        lb._tmp = Some(tmp);
        lb
    }

    pub fn start_in(etcd_urls: &str, dir: &Path, args: &[&str]) -> Lb {
        Lb::start_in_env(etcd_urls, dir, args, &[])
    }

    /// [`Lb::start`] with extra environment variables for hecd-haproxy.
    pub fn start_env(etcd_urls: &str, args: &[&str], env: &[(&str, &str)]) -> Lb {
        let tmp = TempDir::new("lb");
        let dir = tmp.0.clone();
        let mut lb = Lb::start_in_env(etcd_urls, &dir, args, env);
        lb._tmp = Some(tmp);
        lb
    }

    /// hecd-haproxy listening on `ip:port` exactly, in a temporary directory: `Err` (with
    /// its stderr) when HAProxy could not bind it, so the caller can try another port.
    pub fn start_listening(
        etcd_urls: &str,
        ip: &str,
        port: u16,
        args: &[&str],
    ) -> Result<Lb, String> {
        let tmp = TempDir::new("lb");
        let mut cmd = Command::new(super::hecd_haproxy());
        cmd.args(["--etcd", etcd_urls, "--listen"])
            .arg(format!("{ip}:{port}"))
            .arg("--dir")
            .arg(&tmp.0)
            .args(["--check-inter", "200ms"])
            .args(
                args.iter()
                    .map(|a| a.replace("{free}", &free_port().to_string())),
            );
        let h = start_command(cmd);
        let mut lb = Lb {
            h,
            dir: tmp.0.clone(),
            port,
            _tmp: Some(tmp),
        };
        let mut exited = false;
        let up = wait_until(Duration::from_secs(20), || {
            exited = lb.h.wait(Duration::ZERO).is_some();
            exited || lb.admin("show info").is_some()
        });
        if exited || !up {
            return Err(lb.h.stderr_final());
        }
        Ok(lb)
    }

    fn start_in_env(etcd_urls: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Lb {
        // A port chosen free may be taken before HAProxy binds it: then HAProxy says so and
        // hecd-haproxy exits, and it is started again on another port. `{free}` in an
        // argument (a `--tcp` listener's port) is a free port too, chosen anew each time
        // ([`Lb::tcp_port`] reads it back).
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(super::hecd_haproxy());
            cmd.args(["--etcd", etcd_urls, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--dir")
                .arg(dir)
                .args(["--check-inter", "200ms"])
                .args(
                    args.iter()
                        .map(|a| a.replace("{free}", &free_port().to_string())),
                )
                .envs(env.iter().copied());
            let h = start_command(cmd);
            let mut lb = Lb {
                h,
                dir: dir.to_owned(),
                port,
                _tmp: None,
            };
            let mut exited = false;
            let up = wait_until(Duration::from_secs(20), || {
                exited = lb.h.wait(Duration::ZERO).is_some();
                exited || lb.admin("show info").is_some()
            });
            if exited && lb.h.stderr_final().contains("cannot bind") {
                eprintln!("port {port} was taken before HAProxy bound it; another one");
                continue;
            }
            assert!(up && !exited, "HAProxy did not come up:\n{}", lb.h.stderr());
            return lb;
        }
        panic!("HAProxy could not bind a free port in 5 tries");
    }

    /// Stops hecd-haproxy with SIGTERM (it must exit 0) and hands back its directory, with the
    /// temporary directory that owns it, to start another one there.
    pub fn stop_keeping_dir(self) -> (PathBuf, Option<TempDir>) {
        let Lb {
            mut h, dir, _tmp, ..
        } = self;
        h.signal(libc::SIGTERM);
        assert_eq!(
            h.wait(Duration::from_secs(10)).and_then(|s| s.code()),
            Some(0),
            "hecd-haproxy did not stop cleanly:\n{}",
            h.stderr()
        );
        (dir, _tmp)
    }

    /// One runtime API command on HAProxy's admin socket.
    pub fn admin(&self, command: &str) -> Option<String> {
        self.admin_on("admin.sock", command)
    }

    /// One runtime API command on the admin socket `socket` of `--dir`.
    pub fn admin_on(&self, socket: &str, command: &str) -> Option<String> {
        let mut s = UnixStream::connect(self.dir.join(socket)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{command}\n").as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// The backend's servers as HAProxy has them: name → `ip:port`.
    pub fn servers(&self) -> BTreeMap<String, String> {
        let state = self.admin("show servers state servers").unwrap_or_default();
        state
            .lines()
            .skip(2)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(3)?.to_string(),
                    format!("{}:{}", f.get(4)?, f.get(18)?),
                ))
            })
            .collect()
    }

    /// Waits until HAProxy has exactly `names`, none of them still in the maintenance a server
    /// is added in (hecd-haproxy's `add server` is followed by `enable health` and `enable
    /// server`: between them the server is listed but takes no request, and a load started
    /// right then would see a 503).
    pub fn expect_servers(&self, names: &[&str], within: Duration) {
        self.expect_servers_in("servers", names, within);
    }

    /// [`Lb::expect_servers`] for the backend `backend` (`pool-N`, `tcp-N`).
    pub fn expect_servers_in(&self, backend: &str, names: &[&str], within: Duration) {
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        want.sort();
        let show = format!("show servers state {backend}");
        let ok = wait_until(within, || {
            let state = self.admin(&show).unwrap_or_default();
            let mut listed = Vec::new();
            let mut enabled = true;
            for l in state.lines().skip(2) {
                let f: Vec<&str> = l.split_whitespace().collect();
                let (Some(name), Some(admin)) = (f.get(3), f.get(6)) else {
                    continue;
                };
                listed.push(name.to_string());
                // srv_admin_state bit 0x01: forced maintenance.
                enabled &= admin.parse::<u32>().is_ok_and(|a| a & 1 == 0);
            }
            listed.sort();
            listed == want && enabled
        });
        assert!(
            ok,
            "HAProxy has {:?}, want {want:?}\n{:?}\n{}",
            self.servers(),
            self.admin(&show),
            self.h.stderr()
        );
    }

    /// The HAProxy master's pid and its worker processes now.
    pub fn workers(&self) -> (i32, Vec<i32>) {
        let master: i32 = std::fs::read_to_string(self.dir.join("haproxy.pid"))
            .expect("haproxy.pid")
            .trim()
            .parse()
            .expect("a pid");
        let mut workers = super::children(master);
        workers.sort();
        (master, workers)
    }

    /// The port of the `n`th `--tcp` listener (from 1), as the config file binds it.
    pub fn tcp_port(&self, n: usize) -> u16 {
        let config = std::fs::read_to_string(self.dir.join("haproxy.cfg")).unwrap_or_default();
        let section = format!("frontend tcp-{n}-in\n");
        config
            .split_once(&section)
            .and_then(|(_, rest)| rest.lines().find_map(|l| l.trim().strip_prefix("bind ")))
            .and_then(|bind| bind.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no --tcp listener {n} in the config:\n{config}"))
    }

    /// The port of the `--https` listener, as the config file binds it.
    pub fn https_port(&self) -> u16 {
        let config = std::fs::read_to_string(self.dir.join("haproxy.cfg")).unwrap_or_default();
        config
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("bind ") && l.contains(" ssl crt-list "))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(1)?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no --https listener in the config:\n{config}"))
    }

    /// The `server` lines of the config file hecd-haproxy keeps.
    pub fn config_servers(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("haproxy.cfg"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect()
    }
}

/// One kind of request a [`Load`] sends: `send` returns the answering server's name, or why it
/// failed; `label` names it in failures.
pub struct Request {
    pub label: String,
    pub send: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
}

/// Requests at `rate` a second through the load balancers `ports` (in turn), each on a fresh
/// connection and a thread of its own (so slow answers overlap), until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Vec<String>>>,
    answered: Arc<Mutex<BTreeMap<String, u32>>>,
    thread: Option<thread::JoinHandle<u32>>,
}

impl Load {
    pub fn start(ports: &[u16], rate: u32) -> Load {
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        Load::start_to(&addrs, rate)
    }

    /// [`Load::start`] to `HOST:PORT` addresses (a balancer on a test host).
    pub fn start_to(addrs: &[String], rate: u32) -> Load {
        let requests: Vec<Request> = addrs
            .iter()
            .map(|addr| {
                let addr = addr.clone();
                Request {
                    label: addr.clone(),
                    send: Arc::new(move || super::http_get(&addr)),
                }
            })
            .collect();
        Load::start_with(requests, rate)
    }

    /// Requests at `rate` a second, taking `requests` in turn: each `send` returns the name of
    /// the server that answered, or why the request failed.
    pub fn start_with(requests: Vec<Request>, rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, f, a) = (stop.clone(), failed.clone(), answered.clone());
        let thread = thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u32;
            let mut in_flight = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let request = &requests[sent as usize % requests.len()];
                let (label, send) = (request.label.clone(), request.send.clone());
                let (f, a) = (f.clone(), a.clone());
                in_flight.push(thread::spawn(move || match send() {
                    Ok(name) => *a.lock().unwrap().entry(name.trim().to_owned()).or_default() += 1,
                    Err(e) => f.lock().unwrap().push(format!(
                        "{} ms, {label}: {e}",
                        started.elapsed().as_millis()
                    )),
                }));
                sent += 1;
                let next = Duration::from_secs_f64(f64::from(sent) / f64::from(rate));
                if let Some(wait) = next.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
                in_flight.retain(|r| !r.is_finished());
            }
            for r in in_flight {
                let _ = r.join();
            }
            sent
        });
        Load {
            stop,
            failed,
            answered,
            thread: Some(thread),
        }
    }

    /// Stops (waiting for the requests in flight); returns (requests sent, failures, requests
    /// per answering server).
    pub fn finish(mut self) -> (u32, Vec<String>, BTreeMap<String, u32>) {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.thread.take().map_or(0, |t| t.join().unwrap());
        let failed = self.failed.lock().unwrap().clone();
        let answered = self.answered.lock().unwrap().clone();
        (sent, failed, answered)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
