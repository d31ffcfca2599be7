//! End to end: a real etcd, the HAProxy consumer stage (hecd-haproxy: an etcd watch applied
//! through HAProxy's runtime API) and apps under hecd-init, with a bounded load through HAProxy
//! while instances are stopped, killed and added.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::{Etcd, free_port};
use common::{Hecd, TempDir, now_ms, wait_until};

/// The consumer stage in its own process group (hecd-haproxy and HAProxy), killed on drop.
struct Stage {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl Stage {
    fn start(etcd: &Etcd) -> Stage {
        // A port chosen free may be taken before HAProxy binds it: then another one.
        for _ in 0..5 {
            let dir = TempDir::new("haproxy");
            let port = free_port();
            let log = std::fs::File::create(dir.0.join("stage.log")).unwrap();
            let child = Command::new(common::hecd_haproxy())
                .args([
                    "--etcd",
                    &etcd.url(),
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--dir",
                ])
                .arg(dir.0.join("run"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start hecd-haproxy (needs haproxy)");
            let stage = Stage { child, dir, port };
            let watching = wait_until(Duration::from_secs(10), || {
                stage.log().contains("hecd-haproxy: HAProxy master pid")
                    || stage.log().contains("cannot bind")
            });
            if stage.log().contains("cannot bind") {
                continue;
            }
            assert!(watching, "the stage did not start:\n{}", stage.log());
            return stage;
        }
        panic!("HAProxy could not bind a free port in 5 tries");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stage.log")).unwrap_or_default()
    }

    fn config(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("run/haproxy.cfg")).unwrap_or_default()
    }

    /// One request through HAProxy; the body (the app's name) or `None` on any failure.
    fn get(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.trim().to_owned())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- consumer stage ---\n{}\n--- haproxy.cfg ---\n{}",
                self.log(),
                self.config()
            );
        }
    }
}

/// An app (tiny_server logging its requests) under hecd-init, registered as `name`.
fn app(etcd: &Etcd, name: &str) -> Hecd {
    let (h, _) = common::start_registered_env(
        &etcd.url(),
        name,
        &["--ttl", "3", "--check-interval", "500ms", "--drain", "2"],
        &[("TINY_LOG_REQUESTS", "1")],
    );
    h
}

/// Sends about `rate` requests a second for `for_`, calling `during` once after `at`;
/// returns (ok, failed) and who answered.
fn load(
    stage: &Stage,
    rate: u32,
    for_: Duration,
    at: Duration,
    mut during: impl FnMut(),
) -> (u32, u32, Vec<String>) {
    let started = Instant::now();
    let (mut ok, mut failed, mut who) = (0, 0, Vec::new());
    let mut fired = false;
    let gap = Duration::from_secs(1) / rate;
    while started.elapsed() < for_ {
        let tick = Instant::now();
        match stage.get() {
            Some(name) => {
                ok += 1;
                who.push(name);
            }
            None => failed += 1,
        }
        if !fired && started.elapsed() >= at {
            fired = true;
            during();
        }
        std::thread::sleep(gap.saturating_sub(tick.elapsed()));
    }
    (ok, failed, who)
}

fn backends(stage: &Stage) -> Vec<String> {
    stage
        .config()
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("server ")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn stopping_an_instance_under_load_fails_no_request() {
    let etcd = Etcd::start();
    let stage = Stage::start(&etcd);
    let mut apps: Vec<Hecd> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|n| app(&etcd, n))
        .collect();
    assert!(
        wait_until(Duration::from_secs(15), || backends(&stage).len() == 3),
        "backends {:?}\n{}",
        backends(&stage),
        stage.log()
    );
    // Let every server pass HAProxy's own first check.
    assert!(wait_until(Duration::from_secs(10), || {
        let mut seen: Vec<String> = (0..9).filter_map(|_| stage.get()).collect();
        seen.sort();
        seen.dedup();
        seen.len() == 3
    }));

    let mut term_sent = 0;
    let (ok, failed, who) = load(
        &stage,
        50,
        Duration::from_secs(8),
        Duration::from_secs(2),
        || {
            term_sent = now_ms();
            apps[0].signal(libc::SIGTERM);
        },
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed while web-1 stopped",
        ok + failed
    );
    assert!(ok >= 300, "load too thin: {ok}");
    assert!(
        who.iter().any(|w| w == "web-1") && who.iter().any(|w| w == "web-2"),
        "traffic was spread"
    );
    assert_eq!(apps[0].expect_exit(), 0);

    // web-1 got no request after its key was deleted plus the consumer's reaction (a watch
    // event and one runtime command; 1 s of margin), though it kept serving until its drain
    // ended.
    let mut last_request = 0u128;
    let mut signalled = 0u128;
    while let Some(line) = apps[0].line(Duration::from_millis(200)) {
        if let Some(ms) = line.strip_prefix("request / at ") {
            last_request = last_request.max(ms.parse().unwrap());
        }
        if let Some(ms) = line.strip_prefix("signal 15 at ") {
            signalled = ms.parse().unwrap();
        }
    }
    assert!(signalled > term_sent, "the app got SIGTERM");
    assert!(
        last_request < term_sent + 1000,
        "web-1 still got traffic {} ms after its key was deleted",
        last_request - term_sent
    );
    assert!(!backends(&stage).contains(&"web-1".to_string()));
    apps.remove(0);

    // SIGKILL hecd-init of web-2 (its app keeps running, but the lease runs out): the backend
    // goes within TTL + 1 s.
    let killed = Instant::now();
    apps[0].signal(libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(6), || !backends(&stage)
            .contains(&"web-2".to_string())),
        "{:?}",
        backends(&stage)
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(5),
        "backend gone after {:?}",
        killed.elapsed()
    );

    // A fourth instance takes traffic within one check interval plus the consumer's reaction.
    let started = Instant::now();
    let _web4 = app(&etcd, "web-4");
    let took = wait_until(Duration::from_secs(10), || {
        stage.get().as_deref() == Some("web-4") || stage.get().as_deref() == Some("web-4")
    });
    assert!(took, "web-4 never answered:\n{}", stage.log());
    eprintln!(
        "web-4 took traffic {:?} after it started",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "web-4 took {:?}",
        started.elapsed()
    );
}

/// How many times the stage has reloaded HAProxy so far.
fn reloads(stage: &Stage) -> usize {
    stage.log().matches("reloading HAProxy").count()
}

/// A burst of keys, and a bad one in it, applied at runtime: every good key becomes a server,
/// the bad one never reaches HAProxy or its config, and HAProxy is never reloaded.
#[test]
fn consumer_stage_applies_bursts_at_runtime_and_skips_bad_values() {
    let etcd = Etcd::start();
    let stage = Stage::start(&etcd);
    // 20 keys, one every 10 ms (each a separate etcd revision and watch event).
    for i in 0..20 {
        etcd.put(
            &format!("/app/servers/b{i:02}"),
            &format!("127.0.0.1:{}", 40000 + i),
        );
        if i == 10 {
            etcd.put("/app/servers/zz-bad", "not an address");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        wait_until(Duration::from_secs(10), || backends(&stage).len() == 20),
        "{:?}\n{}",
        backends(&stage),
        stage.log()
    );
    assert_eq!(reloads(&stage), 0, "{}", stage.log());
    assert!(!stage.config().contains("zz-bad"));
    assert!(
        stage.log().contains("skipping key /app/servers/zz-bad"),
        "{}",
        stage.log()
    );
    // Fixed: the same key with a good value is a server.
    etcd.put("/app/servers/zz-bad", "127.0.0.1:40020");
    assert!(
        wait_until(Duration::from_secs(10), || backends(&stage).len() == 21),
        "{}",
        stage.log()
    );
    assert_eq!(reloads(&stage), 0, "{}", stage.log());
}
