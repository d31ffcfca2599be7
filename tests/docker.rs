//! hecd-init as PID 1 of real Docker containers (images built FROM scratch from the static
//! binary and Debian's static busybox), registering in a real etcd on the host: published and
//! container modes, port auto-detection, `docker stop`/`docker kill`, the HTTP health check,
//! and a Swarm service on an overlay network. Needs dockerd (scripts/test starts it) and the
//! static build (scripts/test runs scripts/build-static first).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{TempDir, http_get, key, wait_until};

const IMAGE: &str = "hecd-test-app:latest";

/// Whether the engine is a Swarm node changes what published mode advertises: tests that
/// depend on it (Swarm ones, and the plain `-P` one) take this lock.
fn engine_mode() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `docker ARGS` (bounded by 120 s); returns (success, stdout + stderr).
fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg("docker")
        .args(args)
        .output()
        .expect("run docker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_owned())
}

fn docker_ok(args: &[&str]) -> String {
    let (ok, out) = docker(args);
    assert!(ok, "docker {args:?} failed: {out}");
    out
}

/// Builds the test image once per test binary: /hecd-init, /bin/busybox, an app script that
/// serves /www on :8080 and prints `got-TERM` (then exits 3) when it gets SIGTERM, and
/// /privileges (the example that tries what an app can reach).
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let (ok, info) = docker(&["info", "--format", "{{.ServerVersion}}"]);
        assert!(ok, "no Docker engine (scripts/test starts dockerd): {info}");
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin = root.join("target/x86_64-unknown-linux-musl/release/hecd-init");
        assert!(bin.exists(), "{} missing: run scripts/build-static first", bin.display());
        let ctx = TempDir::new("image");
        std::fs::copy(&bin, ctx.0.join("hecd-init")).unwrap();
        let probe = root.join("target/x86_64-unknown-linux-musl/release/examples/privileges");
        std::fs::copy(&probe, ctx.0.join("privileges"))
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-static)", probe.display()));
        std::fs::copy("/bin/busybox", ctx.0.join("busybox")).expect("busybox-static");
        std::fs::create_dir(ctx.0.join("www")).unwrap();
        std::fs::write(ctx.0.join("www/index.html"), "hello\n").unwrap();
        std::fs::write(ctx.0.join("www/healthz"), "ok\n").unwrap();
        std::fs::write(
            ctx.0.join("app.sh"),
            "trap 'echo got-TERM; exit 3' TERM\n/bin/busybox httpd -f -p 8080 -h /www &\nwait\n",
        )
        .unwrap();
        std::fs::write(
            ctx.0.join("Dockerfile"),
            "FROM scratch\nCOPY hecd-init /hecd-init\nCOPY privileges /privileges\nCOPY busybox /bin/busybox\nCOPY app.sh /app.sh\nCOPY www /www\nEXPOSE 8080\n\
             ENTRYPOINT [\"/hecd-init\", \"--\"]\nCMD [\"/bin/busybox\", \"sh\", \"/app.sh\"]\n",
        )
        .unwrap();
        docker_ok(&["build", "-q", "-t", IMAGE, ctx.0.to_str().unwrap()]);
    });
    IMAGE
}

/// The docker0 bridge's address: the host, as containers reach it (their default gateway).
fn bridge_gateway() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("ip (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no IPv4 address on docker0: {text}"))
}

/// etcd listening on all addresses (containers reach it via the bridge gateway).
fn etcd_for_containers() -> (Etcd, String) {
    let etcd = Etcd::start_with_url("http://0.0.0.0", &[]);
    let extra = etcd.extra_url.clone().expect("extra URL");
    let port = extra.rsplit(':').next().expect("port");
    let url = format!("http://{}:{port}", bridge_gateway());
    (etcd, url)
}

/// A container removed (with force) when the test ends, however it ends.
struct Container(String);

impl Container {
    fn run(name: &str, args: &[&str]) -> Container {
        docker(&["rm", "-f", name]);
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        docker_ok(&all);
        Container(name.to_owned())
    }

    fn logs(&self) -> String {
        docker(&["logs", "-t", &self.0]).1
    }

    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "--format", format, &self.0])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- docker logs {} ---\n{}", self.0, self.logs());
        }
        docker(&["rm", "-f", &self.0]);
    }
}

fn env(etcd_url: &str) -> Vec<String> {
    [
        "HECD_ETCD=".to_owned() + etcd_url,
        "HECD_TTL=3".into(),
        "HECD_CHECK_INTERVAL=500ms".into(),
        "HECD_DRAIN=1".into(),
    ]
    .into_iter()
    .flat_map(|e| ["-e".to_owned(), e])
    .collect()
}

fn args<'a>(env: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    env.iter()
        .map(String::as_str)
        .chain(rest.iter().copied())
        .collect()
}

/// RFC 3339 timestamp of `docker logs -t` → ms since the epoch (UTC, as Docker writes it).
fn log_time_ms(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ms: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + t[0]) * 3600 + t[1] * 60 + t[2]) * 1000 + ms)
}

/// Waits up to 20 s for the key of container `c` (named as its key) to be the bridge gateway
/// with the host port Docker published for 8080; returns whether it came, and that value.
fn expect_published_key(etcd: &Etcd, c: &Container) -> (bool, String) {
    let published = docker_ok(&["port", &c.0, "8080/tcp"]);
    let host_port = published
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .expect("published port")
        .to_owned();
    let want = format!("{}:{host_port}", bridge_gateway());
    let ok = wait_until(Duration::from_secs(20), || {
        etcd.get(&key(&c.0)).as_deref() == Some(want.as_str())
    });
    (ok, want)
}

#[test]
fn published_port_with_the_socket_then_docker_stop() {
    let image = image();
    let _plain = engine_mode();
    assert_eq!(
        docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]),
        "inactive",
        "this test needs an engine that is not a Swarm node"
    );
    let (etcd, url) = etcd_for_containers();
    let env = env(&url);
    let c = Container::run(
        "hecd-t-pub",
        &args(
            &env,
            &[
                "-P",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                image,
            ],
        ),
    );
    // -P binds 0.0.0.0, so the host address is the default gateway (with a warning).
    let (ok, want) = expect_published_key(&etcd, &c);
    assert!(
        ok,
        "key {} = {:?}, want {want}; logs:\n{}",
        key("hecd-t-pub"),
        etcd.get(&key("hecd-t-pub")),
        c.logs()
    );
    assert!(
        c.logs().contains("(default gateway: no --host-ip")
            && c.logs().contains("only this host can reach it"),
        "{}",
        c.logs()
    );

    // docker stop: the key goes first, the app gets SIGTERM about --drain (1 s) later.
    let started = Instant::now();
    let mut gone_ms = None;
    let stopper = std::thread::spawn({
        let name = c.0.clone();
        move || docker(&["stop", "-t", "10", &name])
    });
    while started.elapsed() < Duration::from_secs(15) {
        if etcd.get(&key("hecd-t-pub")).is_none() {
            gone_ms = Some(common::now_ms() as i64);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(stopper.join().unwrap().0, "docker stop failed");
    let gone_ms = gone_ms.expect("key deleted on docker stop");
    let logs = c.logs();
    let term_ms = logs
        .lines()
        .find(|l| l.contains("got-TERM"))
        .and_then(log_time_ms)
        .unwrap_or_else(|| panic!("the app never got SIGTERM:\n{logs}"));
    assert!(
        gone_ms < term_ms,
        "key gone at {gone_ms}, app signalled at {term_ms}:\n{logs}"
    );
    assert!(
        term_ms - gone_ms >= 700,
        "no drain between delete and signal ({} ms)",
        term_ms - gone_ms
    );
    assert_eq!(
        c.inspect("{{.State.ExitCode}}"),
        "3",
        "exit status passed through docker"
    );
}

/// Issue 16: the app runs as 65534:65534 in a container with the Docker socket mounted.
/// hecd-init (root) still uses the API (the key carries the published port) and still finds
/// the app's port (by socket owner: without CAP_SYS_PTRACE it may not list another user's
/// descriptors); the app's own connect() to the socket is refused.
#[test]
fn issue_16_user_app_cannot_reach_the_docker_socket_hecd_init_uses() {
    let image = image();
    let _plain = engine_mode();
    let (etcd, url) = etcd_for_containers();
    let env = env(&url);
    let c = Container::run(
        "hecd-t-user",
        &args(
            &env,
            &[
                "-P",
                "-e",
                "HECD_USER=65534:65534",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                image,
                "/privileges",
                "connect:/var/run/docker.sock",
                "id",
                "serve:8080",
            ],
        ),
    );
    let (ok, want) = expect_published_key(&etcd, &c);
    assert!(
        ok,
        "key {:?}, want {want}; logs:\n{}",
        etcd.get(&key("hecd-t-user")),
        c.logs()
    );
    let logs = c.logs();
    assert!(
        logs.contains("connect:/var/run/docker.sock denied: Permission denied"),
        "the app must not connect to the socket:\n{logs}"
    );
    assert!(logs.contains("id 65534 65534 65534 /"), "{logs}");
}

#[test]
fn container_mode_without_the_socket_then_docker_kill() {
    let image = image();
    let (etcd, url) = etcd_for_containers();
    let env = env(&url);
    let c = Container::run("hecd-t-ctr", &args(&env, &[image]));
    let hostname = c.inspect("{{.Config.Hostname}}");
    let ip = c.inspect("{{.NetworkSettings.IPAddress}}");
    // No socket: the name is the hostname, the address the container's IP and the port the
    // app listens on (found, not configured).
    let want = format!("{ip}:8080");
    let ok = wait_until(Duration::from_secs(20), || {
        etcd.get(&key(&hostname)).as_deref() == Some(want.as_str())
    });
    assert!(
        ok,
        "key {} = {:?}, want {want}; logs:\n{}",
        key(&hostname),
        etcd.get(&key(&hostname)),
        c.logs()
    );

    let killed = Instant::now();
    docker_ok(&["kill", &c.0]);
    let gone = wait_until(Duration::from_secs(8), || {
        etcd.get(&key(&hostname)).is_none()
    });
    assert!(gone, "key still there after docker kill");
    assert!(
        killed.elapsed() <= Duration::from_secs(4) + Duration::from_millis(500),
        "gone after {:?}, TTL 3 s",
        killed.elapsed()
    );
}

#[test]
fn failing_health_path_removes_the_key_until_it_recovers() {
    let image = image();
    let (etcd, url) = etcd_for_containers();
    let mut env = env(&url);
    env.extend([
        "-e".into(),
        "HECD_CHECK=http:/healthz".into(),
        "-e".into(),
        "HECD_NAME=hecd-t-health".into(),
    ]);
    let c = Container::run("hecd-t-health", &args(&env, &[image]));
    let present = |want: bool| {
        wait_until(Duration::from_secs(20), || {
            etcd.get(&key("hecd-t-health")).is_some() == want
        })
    };
    assert!(present(true), "not registered:\n{}", c.logs());
    docker_ok(&["exec", &c.0, "/bin/busybox", "rm", "/www/healthz"]);
    assert!(
        present(false),
        "key not removed while /healthz fails:\n{}",
        c.logs()
    );
    assert_eq!(
        c.inspect("{{.State.Running}}"),
        "true",
        "the app keeps running"
    );
    docker_ok(&["exec", &c.0, "/bin/busybox", "touch", "/www/healthz"]);
    assert!(present(true), "key not back after recovery:\n{}", c.logs());
}

/// Swarm mode for one test: init (if needed) and leave again (if this test joined).
struct Swarm {
    joined_here: bool,
    cleanup: Vec<Vec<String>>,
    // Dropped last: the engine leaves Swarm mode before another test may look.
    _mode: MutexGuard<'static, ()>,
}

impl Swarm {
    fn init() -> Swarm {
        let mode = engine_mode();
        let state = docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        let joined_here = state != "active";
        if joined_here {
            docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        }
        Swarm {
            joined_here,
            cleanup: Vec::new(),
            _mode: mode,
        }
    }
}

impl Swarm {
    /// Creates service NAME (removed when the test ends) from `docker service create` ARGS,
    /// with the test's `HECD_*` variables; ARGS end with the image.
    fn service(&mut self, name: &str, etcd_url: &str, args: &[&str]) {
        docker(&["service", "rm", name]);
        self.cleanup
            .push(vec!["service".into(), "rm".into(), name.into()]);
        let mut create = vec!["service", "create", "--detach", "--name", name];
        let env = service_env(etcd_url);
        create.extend(env.iter().map(String::as_str));
        create.extend_from_slice(args);
        docker_ok(&create);
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for args in self.cleanup.iter().rev() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            docker(&args);
        }
        if self.joined_here {
            docker(&["swarm", "leave", "--force"]);
        }
    }
}

/// The `--env` options every test service gets (tasks named by `{{.Task.Name}}`).
fn service_env(url: &str) -> Vec<String> {
    [
        format!("HECD_ETCD={url}"),
        "HECD_TTL=3".into(),
        "HECD_CHECK_INTERVAL=500ms".into(),
        "HECD_NAME={{.Task.Name}}".into(),
    ]
    .into_iter()
    .flat_map(|e| ["--env".to_owned(), e])
    .collect()
}

/// The (key, value) pairs registered by the tasks of SERVICE.
fn service_keys(etcd: &Etcd, service: &str) -> Vec<(String, String)> {
    let out = etcd.etcdctl(&["get", "--prefix", &format!("/app/servers/{service}.")]);
    out.lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.to_string())))
        .collect()
}

#[test]
fn swarm_service_on_an_overlay_network_registers_each_task() {
    let image = image();
    let (etcd, url) = etcd_for_containers();
    let mut swarm = Swarm::init();
    docker(&["service", "rm", "hecd-web"]);
    docker(&["network", "rm", "hecd-net"]);
    docker_ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "hecd-net",
    ]);
    swarm
        .cleanup
        .push(vec!["network".into(), "rm".into(), "hecd-net".into()]);
    let subnet = docker_ok(&[
        "network",
        "inspect",
        "hecd-net",
        "--format",
        "{{(index .IPAM.Config 0).Subnet}}",
    ]);
    let prefix = subnet
        .rsplit_once('.')
        .map(|(p, _)| format!("{p}."))
        .expect("an IPv4 subnet");
    swarm.service(
        "hecd-web",
        &url,
        &[
            "--replicas",
            "3",
            "--network",
            "hecd-net",
            "--stop-grace-period",
            "10s",
            image,
        ],
    );
    let keys = || service_keys(&etcd, "hecd-web");
    let three = wait_until(Duration::from_secs(60), || keys().len() == 3);
    assert!(
        three,
        "want 3 keys, got {:?}\n{}",
        keys(),
        docker(&["service", "ps", "--no-trunc", "hecd-web"]).1
    );
    for (k, v) in keys() {
        assert!(
            v.starts_with(&prefix) && v.ends_with(":8080"),
            "{k} = {v}: not an overlay address in {subnet}"
        );
    }
    docker_ok(&["service", "scale", "--detach", "hecd-web=1"]);
    let one = wait_until(Duration::from_secs(60), || keys().len() == 1);
    assert!(one, "after scaling to 1: {:?}", keys());
}

/// Published mode across a Swarm with no per-node setting: tasks publishing `mode=host` ports
/// (dynamic host ports here, so two tasks fit on one node) and no `HECD_HOST_IP` advertise the
/// node's Swarm address (`--advertise-addr 127.0.0.1` here) with their own published port, and
/// each answers there.
#[test]
fn issue_11_swarm_host_mode_ports_advertise_the_node_address() {
    let image = image();
    let (etcd, url) = etcd_for_containers();
    let mut swarm = Swarm::init();
    let node_addr = docker_ok(&["info", "--format", "{{.Swarm.NodeAddr}}"]);
    assert_eq!(node_addr, "127.0.0.1", "the test swarm advertises loopback");
    swarm.service(
        "hecd-edge",
        &url,
        &[
            "--replicas",
            "2",
            "--publish",
            "mode=host,target=8080",
            "--mount",
            "type=bind,src=/var/run/docker.sock,dst=/var/run/docker.sock,readonly",
            image,
        ],
    );
    let keys = || service_keys(&etcd, "hecd-edge");
    let tasks = || {
        docker_ok(&[
            "ps",
            "-q",
            "--filter",
            "label=com.docker.swarm.service.name=hecd-edge",
        ])
    };
    let two = wait_until(Duration::from_secs(60), || keys().len() == 2);
    let logs: Vec<String> = tasks().lines().map(|id| docker(&["logs", id]).1).collect();
    assert!(
        two,
        "want 2 keys, got {:?}\n{}\n{logs:#?}",
        keys(),
        docker(&["service", "ps", "--no-trunc", "hecd-edge"]).1
    );
    let mut published: Vec<String> = tasks()
        .lines()
        .map(|id| {
            let port = docker_ok(&["port", id, "8080/tcp"]);
            let host_port = port.lines().next().and_then(|l| l.rsplit(':').next());
            format!("{node_addr}:{}", host_port.expect("a published port"))
        })
        .collect();
    let mut advertised: Vec<String> = keys().into_iter().map(|(_, v)| v).collect();
    published.sort();
    advertised.sort();
    assert_eq!(advertised, published, "logs: {logs:#?}");
    for addr in &advertised {
        assert_eq!(
            http_get(addr).as_deref(),
            Ok("hello\n"),
            "GET http://{addr}/"
        );
    }
    for log in &logs {
        assert!(
            log.contains("advertising host address 127.0.0.1 (the Swarm node address"),
            "{log}"
        );
    }
}
