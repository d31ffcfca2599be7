//! Many services behind one hecd-haproxy (issue 17), against a real etcd and HAProxy 2.6, with
//! real hecd-init instances declaring their routes with `--route`: requests go by Host and the
//! longest path prefix, new services and stops under load need no reload and fail no request,
//! conflicting and malformed declarations change nothing, `/metrics` has a backend per service,
//! and names or addresses a balancer could not serve are refused at start.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::lb::{Lb, Load, Request};
use common::{Hecd, example, hecd_init, listening_port, start_command, wait_until};

/// An instance of the service `/app/SERVICE` named `name`, answering `SERVICE:NAME`, declaring
/// `routes`; returns once its key is in etcd.
fn instance(etcd: &Etcd, service: &str, name: &str, routes: &[&str], drain: &str) -> Hecd {
    instance_with(etcd, service, name, routes, drain, &[])
}

/// [`instance`] for each of `names`, one after the other.
fn instances(
    etcd: &Etcd,
    service: &str,
    names: &[&str],
    routes: &[&str],
    drain: &str,
) -> Vec<Hecd> {
    names
        .iter()
        .map(|n| instance(etcd, service, n, routes, drain))
        .collect()
}

/// [`instance`] with more hecd-init options (`extra`, before `--`).
fn instance_with(
    etcd: &Etcd,
    service: &str,
    name: &str,
    routes: &[&str],
    drain: &str,
    extra: &[&str],
) -> Hecd {
    let mut cmd = Command::new(hecd_init());
    cmd.args(extra);
    cmd.args([
        "--etcd",
        &etcd.url(),
        "--prefix",
        &format!("/app/{service}"),
    ])
    .args(["--name", name, "--advertise", "127.0.0.1", "--ttl", "3"])
    .args([
        "--check",
        "http:/",
        "--check-interval",
        "200ms",
        "--drain",
        drain,
    ]);
    for r in routes {
        cmd.args(["--route", r]);
    }
    cmd.arg("--")
        .arg(example("tiny_server"))
        .args(["0", &format!("{service}:{name}")]);
    let mut h = start_command(cmd);
    listening_port(&h.expect_line("listening"));
    h.app_pid();
    let key = format!("/app/{service}/{name}");
    // With auth on, only an authenticated read sees the key.
    let auth = extra.contains(&"--etcd-user");
    let up = wait_until(Duration::from_secs(10), || {
        if auth {
            etcd_as_root(etcd, &key).is_some()
        } else {
            etcd.get(&key).is_some()
        }
    });
    assert!(up, "{key} not registered:\n{}", h.stderr());
    h
}

/// One HTTP/1.1 request with `Host: host` on a fresh connection: the body of a 200, or why not.
fn get(port: u16, host: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    // One write (a request in pieces waits on Nagle and the peer's delayed ACK: 40 ms).
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.take(1 << 16)
        .read_to_string(&mut out)
        .map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.split_whitespace().nth(1) == Some("200") => {
            Ok(body.trim().to_owned())
        }
        _ => Err(format!("answer {:?}", out.lines().next().unwrap_or(""))),
    }
}

/// Waits until requests for `host` + `path` have been answered by every one of `bodies` in a
/// row (answers from elsewhere, while a route is being applied, start the count again), then
/// checks that the next ten are answered by them and by nothing else.
fn expect_served(lb: &Lb, host: &str, path: &str, bodies: &[&str]) {
    let want: BTreeSet<String> = bodies.iter().map(|b| b.to_string()).collect();
    let mut seen = BTreeSet::new();
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        match get(lb.port, host, path) {
            Ok(body) if want.contains(&body) => {
                seen.insert(body);
            }
            other => {
                last = Some(other);
                seen.clear();
            }
        }
        seen == want
    });
    assert!(
        ok,
        "{host}{path}: seen {seen:?}, want {want:?}, last other answer {last:?}\n{}",
        lb.h.stderr()
    );
    for _ in 0..10 {
        let answer = get(lb.port, host, path);
        assert!(
            answer.as_ref().is_ok_and(|b| want.contains(b)),
            "{host}{path} answered {answer:?} once served by {want:?}\n{}",
            lb.h.stderr()
        );
    }
}

/// Waits until `host` + `path` gets no 200.
fn expect_not_served(lb: &Lb, host: &str, path: &str) {
    let ok = wait_until(Duration::from_secs(10), || {
        get(lb.port, host, path).is_err()
    });
    assert!(ok, "{host}{path} still served\n{}", lb.h.stderr());
}

#[test]
fn issue_17_three_services_route_by_host_and_path() {
    let etcd = Etcd::start();
    let stats = common::etcd::free_port();
    let lb = Lb::start(&etcd.url(), &["--stats", &format!("127.0.0.1:{stats}")]);
    let (master, workers) = lb.workers();
    let _api = instances(&etcd, "api", &["a1", "a2"], &["api.example.com"], "2");
    let _web = instances(&etcd, "web", &["w1", "w2"], &["www.example.com"], "2");
    let _docs = instances(&etcd, "docs", &["d1", "d2"], &["www.example.com/docs"], "2");
    expect_served(&lb, "api.example.com", "/", &["api:a1", "api:a2"]);
    expect_served(&lb, "www.example.com", "/", &["web:w1", "web:w2"]);
    expect_served(
        &lb,
        "www.example.com",
        "/docs/intro",
        &["docs:d1", "docs:d2"],
    );
    // A Host with a port, or in upper case, routes the same; a path that only starts like a
    // route's goes by the longest prefix that matches.
    expect_served(&lb, "API.Example.COM:8080", "/x", &["api:a1", "api:a2"]);
    expect_served(&lb, "www.example.com:80", "/docs", &["docs:d1", "docs:d2"]);
    expect_served(&lb, "www.example.com", "/doc", &["web:w1", "web:w2"]);
    // An undeclared host (and one that only ends like a declared one) gets no 200: the
    // default service has no instance here.
    for host in [
        "other.example.com",
        "api.example.com.evil.org",
        "xapi.example.com",
    ] {
        let answer = get(lb.port, host, "/");
        assert!(answer.is_err(), "{host}: {answer:?}");
    }
    // Keep-alive: requests on one connection are routed one by one, each to its own service.
    let mut s = TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n\
          GET /docs/a HTTP/1.1\r\nHost: www.example.com\r\n\r\n\
          GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.take(1 << 16).read_to_string(&mut out);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let bodies: Vec<&str> = out
        .split("HTTP/1.1 200")
        .skip(1)
        .filter_map(|r| r.split("\r\n\r\n").nth(1))
        .map(|b| b.trim().split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["api", "docs", "web"], "{out}");
    // Metrics: HAProxy's Prometheus exporter, a backend per service.
    let metrics = common::http_get_path(&format!("127.0.0.1:{stats}"), "/metrics").unwrap();
    let backends: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("haproxy_backend_http_responses_total{"))
        .filter_map(|l| l.split("proxy=\"").nth(1)?.split('"').next())
        .collect();
    for b in ["servers", "pool-1", "pool-2", "pool-3"] {
        assert!(
            backends.contains(b),
            "/metrics lacks backend {b}: {backends:?}"
        );
    }
    let served: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("haproxy_backend_http_responses_total{proxy=\"pool-")
                && l.contains("code=\"2xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        served > 10,
        "2xx counted per service backend: {served}\n{metrics}"
    );
    // All of it at runtime: the HAProxy processes are those of the start.
    assert_eq!(lb.workers(), (master, workers), "HAProxy was reloaded");
    assert!(!lb.h.stderr().contains("reloading"), "{}", lb.h.stderr());
}

/// Requests at `rate` a second, each on a fresh connection, to the hosts in turn; an answer
/// from another service than its host's (`host → service`) is a failure.
fn host_load(port: u16, hosts: &[(&str, &str)], rate: u32) -> Load {
    let requests = hosts
        .iter()
        .map(|(host, service)| {
            let (host, service) = (host.to_string(), service.to_string());
            Request {
                label: host.clone(),
                send: Arc::new(move || match get(port, &host, "/") {
                    Ok(body) if body.starts_with(&format!("{service}:")) => Ok(body),
                    Ok(body) => Err(format!("answered by {body}")),
                    Err(e) => Err(e),
                }),
            }
        })
        .collect();
    Load::start_with(requests, rate)
}

#[test]
fn issue_17_new_service_and_stop_under_load_fail_no_request_and_never_reload() {
    let etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &[]);
    // Two services whose instances have the same names: confirmations must not mix them up.
    let mut a = instances(&etcd, "a", &["one", "two"], &["a.example.com"], "10");
    let _b = instances(&etcd, "b", &["one", "two"], &["b.example.com"], "10");
    expect_served(&lb, "a.example.com", "/", &["a:one", "a:two"]);
    expect_served(&lb, "b.example.com", "/", &["b:one", "b:two"]);
    let (master, workers) = lb.workers();
    let load = host_load(
        lb.port,
        &[("a.example.com", "a"), ("b.example.com", "b")],
        40,
    );
    thread::sleep(Duration::from_secs(1));

    // A new service appears: served within a bound of its key.
    let key_seen = Arc::new(Mutex::new(None::<Instant>));
    let watcher = {
        let (seen, etcd_port) = (key_seen.clone(), etcd.port);
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if common::etcd::get_on(etcd_port, "/app/c/one").is_some() {
                    *seen.lock().unwrap() = Some(Instant::now());
                    return;
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let port = lb.port;
    let poller = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if get(port, "c.example.com", "/").is_ok() {
                return Some(Instant::now());
            }
            thread::sleep(Duration::from_millis(2));
        }
        None
    });
    let _c = instance(&etcd, "c", "one", &["c.example.com"], "10");
    let served = poller.join().unwrap().expect("service c never served");
    watcher.join().unwrap();
    let key = key_seen.lock().unwrap().expect("key of c never seen");
    let ms = served.saturating_duration_since(key).as_millis();
    eprintln!("new service served {ms} ms after its key was seen");
    assert!(ms < 2_000, "new service served only {ms} ms after its key");

    // One instance of a stops: confirmed drain, its app signalled well before --drain (10 s).
    let stop_at = common::now_ms();
    a[0].signal(libc::SIGTERM);
    let line = a[0].expect_line("signal 15 at");
    let after = common::signalled_at(&line, 15).saturating_sub(stop_at);
    eprintln!("a:one signalled {after} ms after SIGTERM (drain bound 10 s)");
    assert!(
        after < 5_000,
        "a:one signalled only after {after} ms:\n{}",
        a[0].stderr()
    );
    assert_eq!(a[0].expect_exit(), 0);
    a[0].expect_stderr("(1 of 1 load balancers confirmed)");
    thread::sleep(Duration::from_secs(1));
    let (sent, failed, _) = load.finish();
    eprintln!("{sent} requests, {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}\n{}", lb.h.stderr());
    assert!(sent > 60, "{sent}");
    // b's instance of the same name never left.
    expect_served(&lb, "b.example.com", "/", &["b:one", "b:two"]);
    expect_served(&lb, "a.example.com", "/", &["a:two"]);
    assert_eq!(lb.workers(), (master, workers), "HAProxy was reloaded");
}

#[test]
fn issue_17_conflicts_and_malformed_declarations_change_nothing() {
    let etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &[]);
    let mut a = instance(&etcd, "a", "a1", &["a.example.com"], "2");
    expect_served(&lb, "a.example.com", "/", &["a:a1"]);
    let (master, workers) = lb.workers();
    // A later service claims a.example.com too: it keeps its older owner.
    let mut b = instance(&etcd, "b", "b1", &["a.example.com", "b.example.com"], "2");
    expect_served(&lb, "b.example.com", "/", &["b:b1"]);
    lb.h.expect_stderr("route a.example.com is claimed by /app/b too; it stays with /app/a");
    for _ in 0..20 {
        assert_eq!(get(lb.port, "a.example.com", "/").as_deref(), Ok("a:a1"));
    }
    // Declarations written straight into etcd: malformed ones, and a well-formed one of an
    // instance that is not registered. Each is skipped; a.example.com keeps its instance.
    let long = "a".repeat(5000);
    for (key, value) in [
        (
            "/hecd/routes/app/a/evil",
            "a.example.com\nserver x 1.2.3.4:80",
        ),
        ("/hecd/routes/app/a/evil2", "x y.example.com"),
        ("/hecd/routes/app/a/evil3", long.as_str()),
        ("/hecd/routes/app/z/bad name", "a.example.com"),
        ("/hecd/routes/a1", "a.example.com"),
        ("/hecd/routes/app/ghost/g1", "a.example.com/x"),
    ] {
        etcd.put(key, value);
    }
    lb.h.expect_stderr("skipping route declaration of /app/a/evil");
    lb.h.expect_stderr("skipping route declaration of /app/a/evil3");
    lb.h.expect_stderr("skipping route declaration: key \"/hecd/routes/app/z/bad name\"");
    for path in ["/", "/x"] {
        for _ in 0..10 {
            assert_eq!(get(lb.port, "a.example.com", path).as_deref(), Ok("a:a1"));
        }
    }
    assert_eq!(
        lb.workers(),
        (master, workers.clone()),
        "HAProxy was reloaded"
    );
    // A service's last instance stops: its host no longer answers 200.
    b.signal(libc::SIGTERM);
    assert_eq!(b.expect_exit(), 0);
    expect_not_served(&lb, "b.example.com", "/");
    assert_eq!(get(lb.port, "a.example.com", "/").as_deref(), Ok("a:a1"));
    // A newer claim waits for the older one to leave, then takes the route.
    let _b2 = instance(&etcd, "b", "b2", &["a.example.com"], "2");
    expect_served(&lb, "a.example.com", "/", &["a:a1"]);
    a.signal(libc::SIGTERM);
    assert_eq!(a.expect_exit(), 0);
    expect_served(&lb, "a.example.com", "/", &["b:b2"]);
    assert_eq!(lb.workers(), (master, workers), "HAProxy was reloaded");
}

#[test]
fn issue_17_the_pool_grows_by_a_reload_only_when_used_up() {
    let etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &[]);
    let pool = |lb: &Lb| {
        std::fs::read_to_string(lb.dir.join("haproxy.cfg"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("backend pool-"))
            .count()
    };
    assert_eq!(pool(&lb), 16);
    // 17 services, written straight into etcd (a key and its declaration each, one lease).
    for i in 0..17 {
        let port = 20_000 + i;
        etcd.put(&format!("/app/s{i}/x"), &format!("127.0.0.1:{port}"));
        etcd.put(
            &format!("/hecd/routes/app/s{i}/x"),
            &format!("s{i}.example.com"),
        );
    }
    lb.h.expect_stderr("the pool of 16 backends is used up");
    let grown = wait_until(Duration::from_secs(10), || pool(&lb) > 17);
    assert!(grown, "pool not grown:\n{}", lb.h.stderr());
    let map = wait_until(Duration::from_secs(10), || {
        let m = lb
            .admin(&format!("show map {}", lb.dir.join("routes.map").display()))
            .unwrap_or_default();
        m.lines().filter(|l| l.starts_with("0x")).count() == 17
    });
    assert!(
        map,
        "routes map:\n{:?}",
        lb.admin(&format!("show map {}", lb.dir.join("routes.map").display()))
    );
    let log = lb.h.stderr();
    assert_eq!(log.matches("reloading HAProxy").count(), 1, "{log}");
}

/// A route entry HAProxy already has (put there by hand, or by a command whose answer was
/// lost) is pointed at its service, never doubled: `add map` adds a second entry for a key
/// HAProxy has.
#[test]
fn issue_17_a_route_haproxy_already_has_is_set_not_doubled() {
    let etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &[]);
    let map = lb.dir.join("routes.map");
    let show = format!("show map {}", map.display());
    // Once hecd-haproxy has read back what HAProxy has (it announces itself after that), an
    // entry it does not know of: pool-16, an empty backend the first service does not take.
    lb.h.expect_stderr("announced as load balancer");
    lb.admin(&format!("add map {} x.example.com/ pool-16", map.display()))
        .expect("admin socket");
    let _x = instance(&etcd, "x", "x1", &["x.example.com"], "1");
    expect_served(&lb, "x.example.com", "/", &["x:x1"]);
    let entries = lb.admin(&show).unwrap_or_default();
    assert_eq!(
        entries
            .lines()
            .filter(|l| l.contains(" x.example.com/ "))
            .count(),
        1,
        "{entries}"
    );
}

/// Reloads one after another, each asked for right after a new service appears: HAProxy hands the
/// shared admin socket over to each new worker while the old one may still answer on it, so
/// hecd-haproxy talks to the generation's own socket. Every route ends up in the newest
/// worker exactly once; the one runtime socket left is the newest generation's, answered by
/// a worker of the master; the older ones are gone.
#[test]
fn issue_17_commands_after_a_reload_reach_the_new_worker_only() {
    const RELOADS: usize = 8;
    let etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &[]);
    let show = format!("show map {}", lb.dir.join("routes.map").display());
    for i in 0..RELOADS {
        etcd.put(&format!("/app/r{i}/x"), "127.0.0.1:1");
        etcd.put(
            &format!("/hecd/routes/app/r{i}/x"),
            &format!("r{i}.example.com"),
        );
        lb.h.signal(libc::SIGHUP);
        // One SIGHUP at a time: two pending at once are one signal.
        let reloaded = wait_until(Duration::from_secs(10), || {
            lb.h.stderr().matches("reloading HAProxy").count() > i
        });
        assert!(reloaded, "{}", lb.h.stderr());
    }
    let newest = format!("runtime-{RELOADS}.sock");
    let want: BTreeSet<String> = (0..RELOADS).map(|i| format!("r{i}.example.com/")).collect();
    let mut entries = Vec::new();
    let done = wait_until(Duration::from_secs(30), || {
        entries = lb
            .admin_on(&newest, &show)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect();
        entries.len() == RELOADS && entries.iter().cloned().collect::<BTreeSet<_>>() == want
    });
    let log = lb.h.stderr();
    assert!(done, "routes map {entries:?}\n{log}");
    assert_eq!(log.matches("reloading HAProxy").count(), RELOADS, "{log}");
    let mut sockets: Vec<String> = std::fs::read_dir(&lb.dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("runtime-"))
        .collect();
    sockets.sort();
    assert_eq!(sockets, std::slice::from_ref(&newest));
    let info = lb.admin_on(&newest, "show info").unwrap_or_default();
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("show info: {info}"));
    let (master, workers) = lb.workers();
    assert!(
        workers.contains(&pid),
        "{pid} is not a worker of {master}: {workers:?}"
    );
}

#[test]
fn issue_17_a_stopping_balancer_withdraws_its_announcement_first() {
    let etcd = Etcd::start();
    let mut lb = Lb::start(&etcd.url(), &["--lb-id", "edge-1"]);
    let announced = wait_until(Duration::from_secs(10), || {
        etcd.get("/hecd/lbs/edge-1").is_some()
    });
    assert!(announced, "{}", lb.h.stderr());
    let sent = Instant::now();
    lb.h.signal(libc::SIGTERM);
    let gone = wait_until(Duration::from_secs(3), || {
        etcd.get("/hecd/lbs/edge-1").is_none()
    });
    let ms = sent.elapsed().as_millis();
    assert!(
        gone && ms < 2_000,
        "announcement still there after {ms} ms (lease 5 s)"
    );
    assert!(lb.h.wait(Duration::from_secs(10)).is_some());
    let log = lb.h.stderr_final();
    assert!(log.contains("withdrew /hecd/lbs/edge-1"), "{log}");
    assert!(!log.contains("reading everything again"), "{log}");
}

#[test]
fn issue_17_names_and_addresses_balancers_cannot_serve_are_refused_at_start() {
    for (args, want) in [
        (
            vec!["--name", "odd@name+1"],
            "hecd-init: --name: '@' is not allowed",
        ),
        (
            vec!["--name", ".."],
            "hecd-init: --name: '.' and '..' are path steps",
        ),
        (vec!["--name", "_x"], "hecd-init: --name: a leading '_'"),
        (
            vec!["--advertise", "localhost"],
            "hecd-init: --advertise: expected an IP address",
        ),
        (
            vec!["--route", "a b.com"],
            "hecd-init: --route: \"a b.com\" is not HOST[/PATH]",
        ),
    ] {
        let mut all = vec!["--etcd", "http://127.0.0.1:9"];
        all.extend(args.iter().copied());
        all.extend(["--", "/bin/sh", "-c", "echo ran"]);
        let mut h = common::start(&all);
        assert_eq!(h.expect_exit(), 2, "{args:?}");
        let err = h.stderr_final();
        assert!(err.starts_with(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(h.line(Duration::from_millis(100)).is_none(), "the app ran");
    }
}

/// hecd-init's keys for an instance with routes: the server key unchanged, the declaration
/// beside it under the same lease, both gone on a stop.
#[test]
fn issue_17_the_declaration_shares_the_instance_lease() {
    let etcd = Etcd::start();
    let mut h = instance(
        &etcd,
        "api",
        "a1",
        &["api.example.com", "example.com/api"],
        "0",
    );
    assert_eq!(
        etcd.get("/app/api/a1")
            .as_deref()
            .map(|v| v.starts_with("127.0.0.1:")),
        Some(true)
    );
    assert_eq!(
        etcd.get("/hecd/routes/app/api/a1").as_deref(),
        Some("api.example.com,example.com/api")
    );
    assert_eq!(
        etcd.lease_of("/app/api/a1"),
        etcd.lease_of("/hecd/routes/app/api/a1")
    );
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 0);
    assert_eq!(etcd.get("/hecd/routes/app/api/a1"), None);
    assert_eq!(etcd.get("/app/api/a1"), None);
}

/// Declarations are hostile input too: a flood of services beyond `--max-services` is skipped
/// with a warning, the services already followed keep serving, and none is reloaded for it.
#[test]
fn issue_17_declarations_beyond_max_services_are_skipped() {
    let etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &["--max-services", "3"]);
    let _a = instance(&etcd, "a", "a1", &["a.example.com"], "2");
    let _b = instance(&etcd, "b", "b1", &["b.example.com"], "2");
    expect_served(&lb, "a.example.com", "/", &["a:a1"]);
    expect_served(&lb, "b.example.com", "/", &["b:b1"]);
    let (master, workers) = lb.workers();
    // With the default service, three are followed: a fourth is refused.
    let _c = instance(&etcd, "c", "c1", &["c.example.com"], "2");
    lb.h.expect_stderr("not following /app/c/: --max-services 3 services are followed already");
    thread::sleep(Duration::from_millis(500));
    assert!(get(lb.port, "c.example.com", "/").is_err());
    expect_served(&lb, "a.example.com", "/", &["a:a1"]);
    assert_eq!(lb.workers(), (master, workers), "HAProxy was reloaded");
}

/// hecd-haproxy restarted while etcd is down comes up with the services, backends and routes of
/// its last config and map, and serves them; when etcd answers again it follows it.
#[test]
fn issue_17_a_restart_without_etcd_keeps_services_and_routes() {
    let mut etcd = Etcd::start();
    let lb = Lb::start(&etcd.url(), &[]);
    let _a = instance(&etcd, "a", "a1", &["a.example.com"], "2");
    let _b = instance(&etcd, "b", "b1", &["b.example.com/api"], "2");
    expect_served(&lb, "a.example.com", "/", &["a:a1"]);
    expect_served(&lb, "b.example.com", "/api/x", &["b:b1"]);
    thread::sleep(Duration::from_millis(500)); // the files follow within 200 ms
    let (dir, tmp) = lb.stop_keeping_dir();
    let url = etcd.url();
    etcd.kill();
    let mut lb = Lb::start_in(&url, &dir, &[]);
    lb._tmp = tmp; // removed after HAProxy
    lb.h.expect_stderr(
        "no answer from etcd yet; starting HAProxy with the 2 servers of the last config",
    );
    expect_served(&lb, "a.example.com", "/", &["a:a1"]);
    expect_served(&lb, "b.example.com", "/api/x", &["b:b1"]);
    assert!(get(lb.port, "b.example.com", "/").is_err());
}

/// `key`'s value read as etcd's root user (for clusters with auth on), if present.
fn etcd_as_root(etcd: &Etcd, key: &str) -> Option<String> {
    let out = etcd.etcdctl(&["--user", "root:rootpw", "get", "--print-value-only", key]);
    // The value alone (an address), not a warning etcdctl printed instead.
    let value = out.trim();
    value.starts_with("127.0.0.1:").then(|| value.to_owned())
}

/// A declaration naming a service the balancer may not read (etcd refuses: no permission) is
/// skipped with a warning; every other service is followed and served as usual.
#[test]
fn issue_17_a_service_the_balancer_cannot_read_does_not_stop_the_others() {
    let etcd = Etcd::start();
    etcd.enable_auth("rootpw");
    for args in [
        &["role", "add", "lb"][..],
        &[
            "role",
            "grant-permission",
            "--prefix=true",
            "lb",
            "readwrite",
            "/hecd/",
        ],
        &[
            "role",
            "grant-permission",
            "--prefix=true",
            "lb",
            "read",
            "/app/servers/",
        ],
        &[
            "role",
            "grant-permission",
            "--prefix=true",
            "lb",
            "read",
            "/app/a/",
        ],
        &["user", "add", "lb:lbpw"],
        &["user", "grant-role", "lb", "lb"],
    ] {
        let mut all = vec!["--user", "root:rootpw"];
        all.extend_from_slice(args);
        let out = etcd.etcdctl(&all);
        assert!(!out.contains("Error"), "etcdctl {args:?}: {out}");
    }
    let lb = Lb::start_env(
        &etcd.url(),
        &["--etcd-user", "lb"],
        &[("HECD_ETCD_PASSWORD", "lbpw")],
    );
    let root = ["--etcd-user", "root:rootpw"];
    let _a1 = instance_with(&etcd, "a", "a1", &["a.example.com"], "2", &root);
    let _b1 = instance_with(&etcd, "b", "b1", &["b.example.com"], "2", &root);
    expect_served(&lb, "a.example.com", "/", &["a:a1"]);
    lb.h.expect_stderr("cannot read /app/b/");
    assert!(get(lb.port, "b.example.com", "/").is_err());
    let (master, workers) = lb.workers();
    // The watch goes on for everything else.
    let _a2 = instance_with(&etcd, "a", "a2", &["a.example.com"], "2", &root);
    expect_served(&lb, "a.example.com", "/", &["a:a1", "a:a2"]);
    assert_eq!(lb.workers(), (master, workers), "HAProxy was reloaded");
}

/// An etcd look-alike that answers reads like etcd and sends `watch` (one line per message)
/// on every watch stream; counts the watch streams opened.
struct FakeEtcd {
    port: u16,
    watches: Arc<Mutex<u32>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeEtcd {
    fn start(watch: &'static [&'static str]) -> FakeEtcd {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let watches = Arc::new(Mutex::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w, s) = (watches.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let w = w.clone();
                thread::spawn(move || {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // The head and as much body as its Content-Length says.
                    loop {
                        let Ok(n) = c.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= length {
                                break;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or("");
                    let header =
                        r#"{"cluster_id":"1","member_id":"2","revision":"5","raft_term":"2"}"#;
                    let body = match path {
                        "/version" => r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#.to_owned(),
                        "/v3/lease/grant" => format!(r#"{{"header":{header},"ID":"7","TTL":"5"}}"#),
                        "/v3/lease/keepalive" => {
                            format!(r#"{{"result":{{"header":{header},"ID":"7","TTL":"5"}}}}"#)
                        }
                        "/v3/watch" => {
                            *w.lock().unwrap() += 1;
                            let mut out = String::from(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
                            );
                            for line in watch {
                                out.push_str(line);
                                out.push('\n');
                            }
                            let _ = c.write_all(out.as_bytes());
                            return;
                        }
                        _ => format!(r#"{{"header":{header}}}"#),
                    };
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        FakeEtcd {
            port,
            watches,
            stop,
        }
    }
}

impl Drop for FakeEtcd {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A watch stream is peer input too: messages for a watch never asked for, or with a
/// `watch_id` that is not a number, end that stream with a warning; hecd-haproxy keeps
/// HAProxy serving, retries with backoff, and never panics.
#[test]
fn issue_17_a_hostile_watch_stream_is_an_error_not_a_crash() {
    for (watch, want) in [
        (
            &[
                r#"{"result":{"header":{"revision":"5"},"created":true}}"#,
                r#"{"result":{"header":{"revision":"5"},"watch_id":"1","created":true}}"#,
                r#"{"result":{"header":{"revision":"6"},"watch_id":"99","events":[]}}"#,
            ][..],
            "a message for watch 99, which was never asked for",
        ),
        (
            &[r#"{"result":{"header":{"revision":"5"},"watch_id":"x","created":true}}"#][..],
            "watch_id is not a number",
        ),
    ] {
        let fake = FakeEtcd::start(watch);
        let mut lb = Lb::start(&format!("http://127.0.0.1:{}", fake.port), &[]);
        lb.h.expect_stderr(want);
        let retried = wait_until(Duration::from_secs(10), || {
            *fake.watches.lock().unwrap() >= 2
        });
        assert!(retried, "no second watch:\n{}", lb.h.stderr());
        assert!(
            lb.h.wait(Duration::ZERO).is_none(),
            "hecd-haproxy ended:\n{}",
            lb.h.stderr()
        );
        assert!(lb.admin("show info").is_some(), "HAProxy is gone");
        assert!(!lb.h.stderr().contains("panicked"), "{}", lb.h.stderr());
    }
}
