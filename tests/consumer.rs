//! hecd-haproxy against a real etcd and a real HAProxy 2.6, with real hecd-init instances
//! registering tiny_server apps: membership changes under load applied without reloads, bad
//! keys skipped, the last known set kept while etcd is down or hostile, bounded drains.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::echo::{EchoApp, exchange, header_values};
use common::etcd::{Etcd, metric_sum};
use common::hostile::{Hostile, all_malformed};
use common::lb::{Lb, Load};
use common::{Hecd, TempDir, start_command, start_registered, wait_until};

/// `GET /` through the load balancer on a fresh connection: the answering server's name.
fn get(port: u16) -> Result<String, String> {
    common::http_get(&format!("127.0.0.1:{port}")).map(|body| body.trim().to_owned())
}

/// Instances registered through hecd-init (TTL 3 s, drain 1 s, HTTP check), started one by
/// one.
fn instance(etcd: &Etcd, name: &str) -> Hecd {
    let (h, _port) = start_registered(
        &etcd.url(),
        name,
        &["--ttl", "3", "--check-interval", "200ms", "--drain", "1"],
    );
    let up = wait_until(Duration::from_secs(10), || {
        etcd.get(&common::key(name)).is_some()
    });
    assert!(up, "{name} not registered:\n{}", h.stderr());
    h
}

/// The acceptance test of the issue: instances stopped, started and SIGKILLed, etcd SIGKILLed
/// and restarted, all under 50 requests a second on fresh connections: no failed request, the
/// backend follows etcd, and the HAProxy workers at the end are those of the start.
#[test]
fn issue_10_changes_under_load_fail_no_request_and_never_reload() {
    let mut etcd = Etcd::start();
    let mut a = instance(&etcd, "a");
    let _b = instance(&etcd, "b");
    let lb = Lb::start(&etcd.url(), &[]);
    lb.expect_servers(&["a", "b"], Duration::from_secs(5));
    let (master, workers) = lb.workers();
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    let load = Load::start(&[lb.port], 50);
    let load_started = Instant::now();
    thread::sleep(Duration::from_secs(1));

    // Started: a third instance joins.
    let mut c = instance(&etcd, "c");
    lb.expect_servers(&["a", "b", "c"], Duration::from_secs(5));
    thread::sleep(Duration::from_secs(1));

    // Stopped: SIGTERM to hecd-init: key, drain, signal.
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(10)).is_some(), "a did not stop");
    lb.expect_servers(&["b", "c"], Duration::from_secs(5));

    // SIGKILLed: the app dies at once (hecd-init deletes the key when it sees the exit). New
    // requests that find it gone are redispatched by HAProxy; one already sent to it and not
    // yet answered dies with it (a SIGKILL leaves nothing to drain, and HAProxy does not send a
    // request twice), which happens when the machine is slow enough to leave one in flight.
    let c_app = c.app_pid();
    let killed_ms = load_started.elapsed().as_millis();
    send(c_app, libc::SIGKILL);
    lb.expect_servers(&["b"], Duration::from_secs(5));
    let _d = instance(&etcd, "d");
    lb.expect_servers(&["b", "d"], Duration::from_secs(5));

    // etcd SIGKILLed: the backend stays; restarted with its data: it follows again.
    etcd.kill();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        lb.servers().keys().cloned().collect::<Vec<_>>(),
        ["b", "d"],
        "the backend changed while etcd was down"
    );
    etcd.restart(false);
    let _e = instance(&etcd, "e");
    lb.expect_servers(&["b", "d", "e"], Duration::from_secs(15));
    thread::sleep(Duration::from_secs(1));

    let (sent, failed, answered) = load.finish();
    assert!(sent > 200, "only {sent} requests sent");
    // Failures are "<ms since the load started> ms, ...": only a 502 for a request in flight
    // to c when it was killed may fail (the load's clock starts a moment before ours).
    let in_flight_at_kill = |f: &String| {
        let at: u128 = f
            .split(' ')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        f.contains("502 Bad Gateway") && at + 100 >= killed_ms && at <= killed_ms + 1000
    };
    let unexpected: Vec<&String> = failed.iter().filter(|f| !in_flight_at_kill(f)).collect();
    assert!(
        unexpected.is_empty() && failed.len() <= 2,
        "failed requests (c was SIGKILLed at {killed_ms} ms): {failed:#?}\n{}",
        lb.h.stderr()
    );
    for name in ["a", "b", "c", "d", "e"] {
        assert!(
            answered.contains_key(name),
            "{name} never answered: {answered:?}"
        );
    }
    assert_eq!(lb.workers(), (master, workers), "HAProxy was reloaded");
    let log = lb.h.stderr();
    assert!(!log.contains("reloading"), "{log}");
    assert!(log.contains("added server e"), "{log}");
    assert!(log.contains("removed server a"), "{log}");
    assert_eq!(
        lb.config_servers().len(),
        3,
        "config file: {:?}",
        lb.config_servers()
    );
    assert!(lb.config_servers()[2].starts_with("server e 127.0.0.1:"));
}

/// Issue 25: HAProxy's master killed by a real-time signal (40), then its worker SIGKILLed
/// (which ends the master): each time hecd-haproxy starts HAProxy again with the same servers
/// and says why; the fifth death within a minute makes it exit 1 with one line.
#[test]
fn issue_25_haproxy_is_started_again_whatever_ends_it() {
    let etcd = Etcd::start();
    let _a = instance(&etcd, "a");
    let _b = instance(&etcd, "b");
    let mut lb = Lb::start(&etcd.url(), &[]);
    lb.expect_servers(&["a", "b"], Duration::from_secs(5));
    // Started (a death while it starts is a failed start-up: exit 1).
    lb.h.expect_stderr("HAProxy master pid");
    let serves = |lb: &Lb| {
        let mut seen: Vec<String> = (0..6).filter_map(|_| get(lb.port).ok()).collect();
        seen.sort();
        seen.dedup();
        seen == ["a", "b"]
    };
    assert!(serves(&lb));
    let mut deaths = 0;
    let mut kill = |lb: &Lb, whom: &str, sig: i32| {
        let (master, workers) = lb.workers();
        let victim = if whom == "master" { master } else { workers[0] };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(victim, sig) };
        deaths += 1;
        let started = Instant::now();
        let back = wait_until(Duration::from_secs(10), || {
            lb.h.stderr().matches("serves again").count() == deaths && serves(lb)
        });
        assert!(
            back,
            "not serving again after {whom} got {sig}:\n{}",
            lb.h.stderr()
        );
        eprintln!(
            "{whom} killed by {sig}: serving again {} ms later",
            started.elapsed().as_millis()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        lb.expect_servers(&["a", "b"], Duration::from_secs(2));
    };
    kill(&lb, "master", 40);
    // (Signal 40 is SIGRTMIN+6 with musl and glibc; qemu-user renumbers real-time signals.)
    lb.h.expect_stderr("HAProxy's master was killed by SIG");
    lb.h.expect_stderr("; starting it again (1 of 5 within 60 s)");
    kill(&lb, "worker", libc::SIGKILL);
    lb.h.expect_stderr("starting it again (2 of 5");
    kill(&lb, "master", libc::SIGSEGV);
    kill(&lb, "master", libc::SIGKILL);
    assert_eq!(deaths, 4);
    // The fifth within the minute: hecd-haproxy gives up, so its orchestrator starts it anew.
    let (master, _) = lb.workers();
    // SAFETY: as above.
    unsafe { libc::kill(master, libc::SIGKILL) };
    let status = lb.h.wait(Duration::from_secs(10)).and_then(|s| s.code());
    let log = lb.h.stderr_final();
    assert_eq!(status, Some(1), "{log}");
    assert!(log.contains("5 times within 60 s; giving up"), "{log}");
    assert!(!common::alive(master));
}

/// Issue 25: while nothing changes, nothing is re-created: over 10 s with 300 declared services
/// followed, etcd starts no watch stream and keeps the same watchers (all 302 of them: etcd's
/// gateway once created only the first few dozen of a stream's watches), and the balancer's only
/// regular request is its one-a-second leader probe. A change to the last service is served.
#[test]
fn issue_25_no_watch_is_re_created_while_nothing_changes() {
    let etcd = Etcd::start();
    for i in 0..300 {
        etcd.put(&format!("/app/svc{i}/one"), "127.0.0.1:9");
        etcd.put(
            &format!("/hecd/routes/app/svc{i}/one"),
            &format!("svc{i}.example.com"),
        );
    }
    let lb = Lb::start(&etcd.url(), &[]);
    let routed = wait_until(Duration::from_secs(10), || {
        lb.admin(&format!("show map {}", lb.dir.join("routes.map").display()))
            .is_some_and(|m| m.lines().filter(|l| l.contains("pool-")).count() == 300)
    });
    assert!(routed, "{}", lb.h.stderr());
    thread::sleep(Duration::from_secs(2));
    let watch = "grpc_server_started_total{grpc_method=\"Watch\"";
    let status = "grpc_server_started_total{grpc_method=\"Status\"";
    let before = common::etcd::metrics_on(etcd.port);
    thread::sleep(Duration::from_secs(10));
    let after = common::etcd::metrics_on(etcd.port);
    let delta = |m: &str| metric_sum(&after, m) - metric_sum(&before, m);
    eprintln!(
        "over 10 s: {} watch streams started, {} status probes, watchers {} → {}",
        delta(watch),
        delta(status),
        metric_sum(&before, "etcd_debugging_mvcc_watcher_total"),
        metric_sum(&after, "etcd_debugging_mvcc_watcher_total")
    );
    assert_eq!(
        delta(watch),
        0.0,
        "watch streams re-created while nothing changed"
    );
    // Every watch exists (the declarations' and each service's), and the same ones after.
    assert_eq!(
        metric_sum(&before, "etcd_debugging_mvcc_watcher_total"),
        302.0
    );
    assert_eq!(
        metric_sum(&after, "etcd_debugging_mvcc_watcher_total"),
        302.0
    );
    assert!((5.0..=15.0).contains(&delta(status)), "{}", delta(status));
    // Still following: a new server of a service is served.
    etcd.put("/app/svc299/two", "127.0.0.1:10");
    let added = wait_until(Duration::from_secs(5), || {
        lb.admin("show servers state")
            .is_some_and(|s| s.contains(" two 127.0.0.1 "))
    });
    assert!(added, "{}", lb.h.stderr());
}

/// Issue 23, what the app expects behind an edge: the balancer tells it the client's address,
/// the scheme, the Host and the port, and whatever the client sent in those headers does not
/// reach it.
#[test]
fn issue_23_the_app_learns_the_client_and_cannot_be_fooled() {
    let etcd = Etcd::start();
    let app = EchoApp::start();
    etcd.put("/app/servers/echo", &format!("127.0.0.1:{}", app.port));
    let lb = Lb::start(&etcd.url(), &[]);
    lb.expect_servers(&["echo"], Duration::from_secs(10));
    let answer = exchange(
        lb.port,
        "GET /x?y=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nX-Forwarded-For: 6.6.6.6\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\n\
         x-forwarded-for: 7.7.7.7\r\nConnection: close\r\n\r\n",
    );
    let (_, seen) = answer.split_once("\r\n\r\n").expect("an answer");
    assert!(seen.starts_with("GET /x?y=1 HTTP/1.1"), "{answer}");
    assert_eq!(
        header_values(seen, "X-Forwarded-For"),
        ["127.0.0.1"],
        "{seen}"
    );
    assert_eq!(header_values(seen, "X-Forwarded-Proto"), ["http"], "{seen}");
    assert_eq!(
        header_values(seen, "X-Forwarded-Host"),
        ["Example.COM:8080"],
        "{seen}"
    );
    assert_eq!(
        header_values(seen, "X-Forwarded-Port"),
        [lb.port.to_string()],
        "{seen}"
    );
    assert!(!seen.contains("6.6.6.6") && !seen.contains("7.7.7.7") && !seen.contains("evil"));
    // No Host at all (HTTP/1.0): no X-Forwarded-Host either, the client's included.
    let answer = exchange(
        lb.port,
        "GET / HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    );
    let (_, seen) = answer.split_once("\r\n\r\n").expect("an answer");
    assert!(header_values(seen, "X-Forwarded-Host").is_empty(), "{seen}");
    assert_eq!(
        header_values(seen, "X-Forwarded-For"),
        ["127.0.0.1"],
        "{seen}"
    );
}

/// A WebSocket handshake on `s` (RFC 6455's sample key), answered 101.
fn upgrade_on<S: Read + Write>(s: &mut S) {
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header_values(&head, "Sec-WebSocket-Accept"),
        ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="],
        "RFC 6455's sample"
    );
}

/// Sends `text` on `s`, reads the echo.
fn echo<S: Read + Write + ?Sized>(s: &mut S, text: &[u8]) -> Option<Vec<u8>> {
    s.write_all(text).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| buf[..n].to_vec())
}

/// Issue 23: an upgraded connection (a WebSocket handshake, then bytes echoed) stays open idle
/// for 40 s, beyond the 30 s an ordinary request may be silent, for `--tunnel-timeout` (1 h by
/// default): over HTTP/1.1 in clear and over HTTPS, and over HTTP/2 (RFC 8441's extended
/// CONNECT, HAProxy speaking HTTP/1.1 to the app); a shorter `--tunnel-timeout` closes it; an
/// idle connection through a `--tcp` listener lives as long; a client that sends half a
/// request head is cut.
#[test]
fn issue_23_an_idle_websocket_lives_its_tunnel_timeout() {
    let tmp = TempDir::new("ws");
    let ca = common::tls::Ca::new(&tmp.0);
    let certs = tmp.0.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("ws.pem"), ca.issue(&["ws.example"], 30)).unwrap();
    let etcd = Etcd::start();
    let app = EchoApp::start();
    etcd.put("/app/servers/ws", &format!("127.0.0.1:{}", app.port));
    etcd.put("/app/wstcp/ws", &format!("127.0.0.1:{}", app.port));
    // The long-lived one also has a --tcp service (an established TCP connection lives as
    // long) and HTTPS.
    let certs_arg = certs.display().to_string();
    let long = Lb::start(
        &etcd.url(),
        &[
            "--tcp",
            "127.0.0.1:{free}=/app/wstcp",
            "--https",
            "127.0.0.1:{free}",
            "--certs",
            &certs_arg,
            // ws.example has a certificate: without this, plain HTTP to it is redirected.
            "--no-redirect",
        ],
    );
    let short = Lb::start(&etcd.url(), &["--tunnel-timeout", "2s"]);
    long.expect_servers_in("tcp-1", &["ws"], Duration::from_secs(10));
    long.expect_servers(&["ws"], Duration::from_secs(10));
    short.expect_servers(&["ws"], Duration::from_secs(10));
    let plain = |port: u16| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        upgrade_on(&mut s);
        s
    };
    let mut kept = plain(long.port);
    let mut cut = plain(short.port);
    let mut tcp = plain(long.tcp_port(1));
    let mut tls =
        common::tls::connect(long.https_port(), "ws.example", &ca.client(&["http/1.1"])).unwrap();
    upgrade_on(&mut tls);
    // Over HTTP/2: a Python h2 client (Debian's python3-h2) idles 40 s between two echoes.
    let h2 = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/h2_websocket.py"
        ))
        .arg(long.https_port().to_string())
        .arg("ws.example")
        .arg(ca.cert_path())
        .arg("40")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tests/fixtures/h2_websocket.py");
    let mut h2 = common::KillOnDrop(h2);
    // A slow client: half a request head, then nothing.
    let mut slow = TcpStream::connect(("127.0.0.1", long.port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: ws.example\r\n")
        .unwrap();
    assert_eq!(echo(&mut kept, b"hello").as_deref(), Some(&b"hello"[..]));
    assert_eq!(echo(&mut cut, b"hello").as_deref(), Some(&b"hello"[..]));
    assert_eq!(echo(&mut tcp, b"hello").as_deref(), Some(&b"hello"[..]));
    assert_eq!(echo(&mut tls, b"hello").as_deref(), Some(&b"hello"[..]));
    // The slow client is answered 408 and cut after `timeout http-request` (10 s), well before
    // `timeout client` (30 s) would.
    thread::sleep(Duration::from_secs(15));
    slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = String::new();
    let closed = slow.read_to_string(&mut answer).is_ok();
    assert!(
        closed,
        "a half-sent request still holds its connection after 15 s: {answer:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // Idle 40 s in all, past `timeout client` and `timeout server` (30 s).
    thread::sleep(Duration::from_secs(25));
    for (what, s) in [
        ("WebSocket", &mut kept as &mut dyn ReadWrite),
        ("TCP connection", &mut tcp),
        ("WebSocket over HTTPS", &mut tls),
    ] {
        assert_eq!(
            echo(s, b"still here").as_deref(),
            Some(&b"still here"[..]),
            "the idle {what} was closed"
        );
    }
    assert_eq!(
        echo(&mut cut, b"gone?"),
        None,
        "--tunnel-timeout 2s did not close it"
    );
    let finished = wait_until(Duration::from_secs(15), || {
        matches!(h2.0.try_wait(), Ok(Some(_)))
    });
    let mut out = String::new();
    if finished {
        let _ = h2.0.stdout.take().unwrap().read_to_string(&mut out);
        let _ = h2.0.stderr.take().unwrap().read_to_string(&mut out);
    }
    assert!(
        finished && h2.0.wait().unwrap().success(),
        "the WebSocket over HTTP/2: {out}"
    );
    assert!(out.contains("echo after idle hello h2"), "{out}");
}

/// A stream of either kind, for one loop over them.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Issue 23, TCP services: two instances of a service behind `--tcp`, reached over plain TCP
/// (the test's requests are HTTP, which HAProxy passes on as bytes): connections go to both;
/// one is stopped under a connection loop, its drain is confirmed, and no connection fails.
#[test]
fn issue_23_a_tcp_service_spreads_and_drains_like_an_http_one() {
    let etcd = Etcd::start();
    let lb = Lb::start(
        &etcd.url(),
        &["--tcp", "127.0.0.1:{free}=/app/db", "--lb-id", "lb-tcp"],
    );
    let args = [
        "--prefix",
        "/app/db",
        "--ttl",
        "3",
        "--check-interval",
        "200ms",
        "--drain",
        "5",
    ];
    let (mut a, _) = start_registered(&etcd.url(), "db-a", &args);
    let (_b, _) = start_registered(&etcd.url(), "db-b", &args);
    lb.expect_servers_in("tcp-1", &["db-a", "db-b"], Duration::from_secs(10));
    // The default service has nothing: nothing of /app/db is routed there.
    assert!(lb.servers().is_empty(), "{:?}", lb.servers());
    thread::sleep(Duration::from_secs(1)); // HAProxy's first health checks
    let load = Load::start(&[lb.tcp_port(1)], 40);
    thread::sleep(Duration::from_secs(2));
    a.signal(libc::SIGTERM);
    assert_eq!(a.expect_exit(), 0);
    let stderr = a.stderr_final();
    assert!(
        stderr.contains("1 of 1 load balancers confirmed"),
        "the drain was not confirmed:\n{stderr}\n--- hecd-haproxy ---\n{}",
        lb.h.stderr()
    );
    lb.expect_servers_in("tcp-1", &["db-b"], Duration::from_secs(10));
    thread::sleep(Duration::from_secs(1));
    let (sent, failed, answered) = load.finish();
    eprintln!("{sent} connections, answered by {answered:?}");
    assert!(failed.is_empty(), "failed connections: {failed:?}");
    assert!(
        answered.contains_key("db-a") && answered.contains_key("db-b"),
        "{answered:?}"
    );
}

fn send(pid: i32, sig: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::try_from(sig).unwrap(),
    );
}

/// Keys that are not `PREFIX/NAME = HOST:PORT` never reach HAProxy and change nothing for the
/// good ones: bad names, values with HAProxy keywords or a line break, a value over the 1 MiB
/// read limit, a nested key.
#[test]
fn issue_10_bad_keys_change_nothing_for_the_good_ones() {
    let etcd = Etcd::start();
    let _a = instance(&etcd, "a");
    let lb = Lb::start(&etcd.url(), &[]);
    lb.expect_servers(&["a"], Duration::from_secs(5));
    let load = Load::start(&[lb.port], 50);
    let huge = format!("10.0.0.1:80{}", " ".repeat(1_200_000));
    for (key, value) in [
        ("/app/servers/bad name", "127.0.0.1:1"),
        (
            "/app/servers/evil",
            "127.0.0.1:1\n    server evil2 127.0.0.1:2",
        ),
        ("/app/servers/backup", "127.0.0.1:1 backup"),
        ("/app/servers/noport", "127.0.0.1"),
        ("/app/servers/v6", "fd00::1:80"),
        ("/app/servers/x/y", "127.0.0.1:1"),
        ("/app/servers/huge", huge.as_str()),
    ] {
        etcd.put(key, value);
    }
    // A good key after them shows they were all read.
    let _b = instance(&etcd, "b");
    lb.expect_servers(&["a", "b"], Duration::from_secs(5));
    // Again through a full read: a restart of hecd-haproxy in the same directory.
    let dir = lb.dir.clone();
    let (_, failed, _) = load.finish();
    assert!(failed.is_empty(), "{failed:?}");
    let log = lb.h.stderr();
    for bad in ["bad name", "evil", "backup", "noport", "v6", "x/y"] {
        assert!(log.contains(bad), "no log line about {bad}: {log}");
    }
    let cfg = std::fs::read_to_string(dir.join("haproxy.cfg")).unwrap();
    assert!(
        !cfg.contains("evil") && !cfg.contains("127.0.0.1:1 "),
        "{cfg}"
    );
    let mut lb2 = lb;
    lb2.h.signal(libc::SIGTERM);
    assert!(lb2.h.wait(Duration::from_secs(10)).is_some());
    let again = Lb::start_in(&etcd.url(), &dir, &[]);
    again.expect_servers(&["a", "b"], Duration::from_secs(5));
    again.h.expect_stderr("over 1 MiB");
}

/// etcd gone or hostile: the last known set stays (and a restart of hecd-haproxy with etcd
/// unreachable comes up with it from the config file), the outage is logged once, and the
/// backend follows etcd again when it answers.
#[test]
fn issue_10_store_failures_never_blank_the_backend() {
    let mut etcd = Etcd::start();
    let _a = instance(&etcd, "a");
    let _b = instance(&etcd, "b");
    let lb = Lb::start(&etcd.url(), &[]);
    lb.expect_servers(&["a", "b"], Duration::from_secs(5));
    let (dir, tmp) = lb.stop_keeping_dir();

    // Restarted with only a hostile endpoint: HAProxy comes up with the last config's servers.
    let hostile = Hostile::start(all_malformed());
    let lb = Lb::start_in(&hostile.url(), &dir, &[]);
    lb.expect_servers(&["a", "b"], Duration::from_secs(5));
    let load = Load::start(&[lb.port], 50);
    thread::sleep(Duration::from_secs(3));
    assert!(hostile.served() > 2, "the hostile endpoint was not asked");
    let log = lb.h.stderr();
    assert_eq!(
        log.matches("keeping the servers HAProxy has").count(),
        1,
        "one line per outage: {log}"
    );
    let (_, failed, _) = load.finish();
    assert!(failed.is_empty(), "{failed:?}");
    let rss = common::status_field(lb.h.pid(), "VmHWM").unwrap_or_default();
    let kib: u64 = rss
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert!(kib < 64 * 1024, "hecd-haproxy peak RSS {rss}");
    drop(lb);

    // With the real etcd and the hostile one: etcd down → the set stays; back → it follows.
    // The real one first: the balancer's id picks the endpoint it starts with.
    let urls = common::endpoints_for("lb-mixed", &etcd.url(), &[&hostile.url()]);
    let lb = Lb::start_in(&urls, &dir, &["--lb-id", "lb-mixed"]);
    lb.expect_servers(&["a", "b"], Duration::from_secs(5));
    etcd.kill();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(lb.servers().len(), 2, "{}", lb.h.stderr());
    etcd.restart(false);
    let _c = instance(&etcd, "c");
    lb.expect_servers(&["a", "b", "c"], Duration::from_secs(20));
    // The line goes through the logger's queue: it may follow the change it announces.
    lb.h.expect_stderr("etcd answers again");
    drop(tmp);
}

/// A removed server with a request in flight drains: it stays (no new requests) while the
/// request runs, and is cut at `--drain-timeout`; an idle one goes at once.
#[test]
fn issue_10_removed_servers_drain_within_the_bound() {
    let etcd = Etcd::start();
    let tmp = TempDir::new("slow");
    let slow_file = tmp.0.join("slow");
    std::fs::write(&slow_file, "").unwrap();
    let (slow, _) = common::start_registered_env(
        &etcd.url(),
        "slow",
        &["--ttl", "3", "--check", "tcp", "--check-interval", "200ms"],
        &[("TINY_SLOW_FILE", slow_file.to_str().unwrap())],
    );
    assert!(wait_until(Duration::from_secs(10), || etcd
        .get(&common::key("slow"))
        .is_some()));
    let lb = Lb::start(&etcd.url(), &["--drain-timeout", "3s"]);
    lb.expect_servers(&["slow"], Duration::from_secs(5));
    // /healthz on the slow app answers after 20 s: a long request in flight.
    let port = lb.port;
    let long = thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    assert!(wait_until(Duration::from_secs(5), || slow
        .stderr()
        .contains("slow")
        || lb.admin("show servers conn servers").is_some_and(|c| c
            .lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(6) == Some("1")))));
    let deleted = Instant::now();
    etcd.etcdctl(&["del", "/app/servers/slow"]);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lb.servers().keys().cloned().collect::<Vec<_>>(),
        ["slow"],
        "a server with a request in flight went before its drain"
    );
    lb.expect_servers(&[], Duration::from_secs(6));
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "removed after {took:?}, before the 3 s bound"
    );
    // The log line follows the removal through the logger's queue: wait for it.
    lb.h.expect_stderr("after the drain timeout");
    let _ = long.join();
    std::fs::remove_file(&slow_file).unwrap();
}

/// Bad options: one line naming the option, exit status 2, nothing started.
#[test]
fn issue_10_bad_options_exit_2_with_one_line() {
    for (args, want) in [
        (
            vec!["--listen", ":80", "--dir", "/tmp/x"],
            "hecd-haproxy: --etcd: required",
        ),
        (
            vec!["--etcd", "etcd:2379", "--listen", ":80", "--dir", "/tmp/x"],
            "hecd-haproxy: --etcd: expected http:// or https:// URLs",
        ),
        (
            BAD_LISTEN.to_vec(),
            "hecd-haproxy: --listen: expected ADDR:PORT",
        ),
        (
            vec![
                "--etcd",
                "https://e:2379",
                "--listen",
                ":80",
                "--dir",
                "/tmp/x",
                "--etcd-cacert",
                "/nonexistent",
            ],
            "hecd-haproxy: --etcd-cacert: cannot read /nonexistent",
        ),
    ] {
        let (code, err) = run_lb(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
    }
    // Every problem is reported: an unknown option does not hide a bad value.
    let (code, err) = run_lb(&[&["--nope"][..], &BAD_LISTEN].concat());
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("hecd-haproxy: --nope: unknown option"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("hecd-haproxy: --listen: expected"),
        "{err}"
    );
    // A config HAProxy refuses is reported with HAProxy's reason (haproxy -c without -q).
    let tmp = TempDir::new("lb-bad-listen");
    let dir = tmp.0.to_string_lossy();
    let (code, err) = run_lb(&[
        "--etcd",
        "http://127.0.0.1:9",
        "--listen",
        "nosuchhost.invalid:80",
        "--dir",
        &dir,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("-c rejects") && err.contains("invalid address: 'nosuchhost.invalid'"),
        "{err}"
    );
    let help = Command::new(common::hecd_haproxy())
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--drain-timeout"));
}

/// The same etcd conventions as hecd-init: TLS verified against the cluster's CA, a user whose
/// password comes from a file, the read and the watch both going through them. (etcd 3.4's
/// gateway refuses a client certificate that has a CN once auth is on, so client certificates
/// are tested without auth, in the hecd-init tests.)
#[test]
fn issue_10_follows_etcd_over_tls_with_auth() {
    let dir = TempDir::new("lb-tls");
    common::etcd::make_certs(&dir.0);
    let p = |f: &str| dir.0.join(f).to_string_lossy().into_owned();
    let (etcd, https) = Etcd::start_tls(&dir.0, &[]);
    etcd.enable_auth("lb-pass");
    let apps: Vec<(Hecd, u16)> = ["a", "b"]
        .iter()
        .map(|name| {
            let mut cmd = Command::new(common::example("tiny_server"));
            cmd.args(["0", name]);
            let h = start_command(cmd);
            let port = common::listening_port(&h.expect_line("listening"));
            (h, port)
        })
        .collect();
    let put = |name: &str, port: u16| {
        let out = etcd.etcdctl(&[
            "--user",
            "root:lb-pass",
            "put",
            &common::key(name),
            &format!("127.0.0.1:{port}"),
        ]);
        assert!(out.contains("OK"), "{out}");
    };
    put("a", apps[0].1);
    std::fs::write(dir.0.join("password"), "lb-pass\n").unwrap();
    let lb = Lb::start(
        &https,
        &[
            "--etcd-cacert",
            &p("ca.pem"),
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &p("password"),
        ],
    );
    lb.expect_servers(&["a"], Duration::from_secs(10));
    put("b", apps[1].1);
    lb.expect_servers(&["a", "b"], Duration::from_secs(5));
    assert_eq!(
        get(lb.port).ok().as_deref().map(|n| n == "a" || n == "b"),
        Some(true)
    );
}

/// HAProxy never outlives hecd-haproxy: SIGKILL to hecd-haproxy alone (not its group), and
/// the master and its workers are gone within seconds (nothing keeps serving a backend that no
/// one updates any more).
#[test]
fn issue_10_haproxy_dies_with_a_killed_hecd_haproxy() {
    let etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &[]);
    let (master, workers) = lb.workers();
    assert!(common::alive(master) && workers.iter().all(|w| common::alive(*w)));
    send(lb.h.pid(), libc::SIGKILL);
    let gone = wait_until(Duration::from_secs(10), || {
        !common::alive(master) && workers.iter().all(|w| !common::alive(*w))
    });
    assert!(
        gone,
        "HAProxy outlived hecd-haproxy: master {master}, workers {workers:?}"
    );
}

/// A command line whose only fault is `--listen`.
const BAD_LISTEN: [&str; 6] = [
    "--etcd",
    "http://e:2379",
    "--listen",
    "80",
    "--dir",
    "/tmp/x",
];

/// Runs hecd-haproxy to its end (a usage or set-up error): its exit status and stderr.
/// A relative `--dir` is created and used from hecd-haproxy's working directory (it used to
/// be created, then refused by `haproxy -c` for its relative admin socket: exit 1).
#[test]
fn a_relative_dir_works() {
    let etcd = Etcd::start();
    let tmp = TempDir::new("reldir");
    for _ in 0..5 {
        let port = common::etcd::free_port();
        let mut cmd = Command::new(common::hecd_haproxy());
        cmd.current_dir(&tmp.0)
            .args(["--etcd", &etcd.url(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--dir", "lbdir/sub"]);
        let mut h = start_command(cmd);
        let socket = tmp.0.join("lbdir/sub/admin.sock");
        let mut exited = false;
        let up = wait_until(Duration::from_secs(20), || {
            exited = h.wait(Duration::ZERO).is_some();
            exited || socket.exists()
        });
        if exited && h.stderr_final().contains("cannot bind") {
            continue; // the port was taken in between: another
        }
        assert!(up && !exited, "{}", h.stderr());
        h.expect_stderr("HAProxy master pid");
        h.signal(libc::SIGTERM);
        assert_eq!(h.expect_exit(), 0, "{}", h.stderr_final());
        return;
    }
    panic!("no free port in 5 tries");
}

fn run_lb(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::hecd_haproxy())
        .args(args)
        .env_remove("HECD_ETCD")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
