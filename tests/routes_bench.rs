//! Benchmark of many services behind one hecd-haproxy (issue 17), run by `scripts/bench`
//! (`cargo test --test routes_bench -- --ignored --nocapture`): 100 services × 10 instances in
//! a real etcd, then a new service → its first request served (median of
//! `HECD_BENCH_ROUNDS`, default 10), then churn of instances and services at 50 changes a second
//! for 10 s (applied, reloads), with HAProxy's and hecd-haproxy's RSS and CPU. Keys are written
//! straight into etcd (as hecd-init writes them: a server key and its declaration in one
//! transaction) so the figures are the balancer's, not 1000 hecd-init processes'.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use common::etcd::{Etcd, b64encode, call_on};
use common::lb::Lb;
use common::wait_until;

/// One HTTP answerer for every benchmark server (they all point at it).
fn server() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                        );
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    (port, stop)
}

fn b64(s: &str) -> String {
    b64encode(s.as_bytes())
}

/// Puts an instance of `/app/SERVICE` and its declaration in one transaction.
fn put_instance(port: u16, service: &str, name: &str, addr: &str) {
    let ops = json!({ "success": [
        { "request_put": { "key": b64(&format!("/app/{service}/{name}")), "value": b64(addr) } },
        { "request_put": { "key": b64(&format!("/hecd/routes/app/{service}/{name}")),
                           "value": b64(&format!("{service}.example.com")) } },
    ]});
    assert!(call_on(port, "/v3/kv/txn", Some(ops)).is_some());
}

/// Deletes an instance and its declaration in one transaction.
fn delete_instance(port: u16, service: &str, name: &str) {
    let ops = json!({ "success": [
        { "request_delete_range": { "key": b64(&format!("/app/{service}/{name}")) } },
        { "request_delete_range": { "key": b64(&format!("/hecd/routes/app/{service}/{name}")) } },
    ]});
    assert!(call_on(port, "/v3/kv/txn", Some(ops)).is_some());
}

fn served(port: u16, host: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // One write: a request in pieces meets Nagle's algorithm and the peer's delayed ACK, and
    // the benchmark would time those 40 ms instead of the balancer.
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.take(4096).read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// (RSS in KiB, CPU ticks) of a process.
fn usage(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (rss, ticks)
}

#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn bench_many_services() {
    let rounds: usize = std::env::var("HECD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let etcd = Etcd::start();
    let (app, stop_app) = server();
    let addr = format!("127.0.0.1:{app}");
    let started = Instant::now();
    for s in 0..100 {
        for i in 0..10 {
            put_instance(etcd.port, &format!("s{s}"), &format!("i{i}"), &addr);
        }
    }
    let write_ms = started.elapsed().as_millis();
    let lb = Lb::start(&etcd.url(), &["--check-inter", "5s"]);
    let ready = wait_until(Duration::from_secs(60), || {
        served(lb.port, "s99.example.com")
    });
    assert!(ready, "{}", lb.h.stderr());
    let (master, workers) = lb.workers();
    let lb_pid = lb.h.pid();
    let worker = workers[0];

    let mut latencies = Vec::new();
    for r in 0..rounds {
        let host = format!("new{r}.example.com");
        let t = Instant::now();
        put_instance(etcd.port, &format!("new{r}"), "x", &addr);
        let deadline = t + Duration::from_secs(10);
        let mut ok = false;
        while !ok && Instant::now() < deadline {
            ok = served(lb.port, &host);
            if !ok {
                thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(ok, "{host} never served\n{}", lb.h.stderr());
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let median = latencies[latencies.len() / 2];

    let before = (usage(lb_pid), usage(worker));
    let reloads_before = lb.h.stderr().matches("reloading HAProxy").count();
    // Churn: 50 changes a second for 10 s, cycling through: add an instance to a service,
    // remove one, add a new service, remove a whole (one-instance) service.
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed() < Duration::from_secs(10) {
        let k = n / 4;
        match n % 4 {
            0 => put_instance(etcd.port, &format!("s{}", k % 100), &format!("c{k}"), &addr),
            1 => delete_instance(etcd.port, &format!("s{}", k % 100), &format!("c{k}")),
            2 => put_instance(etcd.port, &format!("churn{k}"), "x", &addr),
            _ => delete_instance(etcd.port, &format!("churn{k}"), "x"),
        }
        n += 1;
        if let Some(wait) = Duration::from_millis(20 * u64::from(n)).checked_sub(t.elapsed()) {
            thread::sleep(wait);
        }
    }
    let churn_s = t.elapsed().as_secs_f64();
    // Applied: HAProxy has exactly what etcd has again: 100 × 10 + the 10 new services'
    // servers (every churned instance and service gone), and their 110 routes.
    let map = lb.dir.join("routes.map");
    let settled_at = Instant::now();
    let counts = || {
        let servers = lb
            .admin("show servers state")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 5)
            .count();
        let routes = lb
            .admin(&format!("show map {}", map.display()))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("0x"))
            .count();
        (servers, routes)
    };
    let settled = wait_until(Duration::from_secs(30), || {
        counts() == (1000 + rounds, 100 + rounds)
    });
    assert!(
        settled,
        "after the churn HAProxy has {:?}\n{}",
        counts(),
        lb.h.stderr()
    );
    let settle_ms = settled_at.elapsed().as_millis();
    assert!(served(lb.port, "s0.example.com") && served(lb.port, "new0.example.com"));
    thread::sleep(Duration::from_secs(1));
    let after = (usage(lb_pid), usage(worker));
    let reloads = lb.h.stderr().matches("reloading HAProxy").count() - reloads_before;
    let same = lb.workers() == (master, workers.clone());
    let tick = 100.0; // USER_HZ
    println!("\n### 100 services × 10 instances: a new service, then churn");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| 1000 instance keys + declarations written (100 services × 10) | {write_ms} ms |");
    println!(
        "| new service → first request served, median of {rounds} (min–max) | {median:.1} ms ({:.1}–{:.1}) |",
        latencies[0],
        latencies[latencies.len() - 1]
    );
    println!("| churn: changes written | {n} in {churn_s:.1} s |");
    println!(
        "| churn: HAProxy equal to etcd after the last change (1010 servers, 110 routes) | {settle_ms} ms |"
    );
    println!("| churn: HAProxy reloads | {reloads} (same master and worker after: {same}) |");
    println!(
        "| hecd-haproxy RSS / CPU during churn | {} KiB / {:.1} % of a core |",
        after.0.0,
        (after.0.1 - before.0.1) as f64 / tick / churn_s * 100.0
    );
    println!(
        "| HAProxy worker RSS / CPU during churn | {} KiB / {:.1} % of a core |",
        after.1.0,
        (after.1.1 - before.1.1) as f64 / tick / churn_s * 100.0
    );
    stop_app.store(true, Ordering::SeqCst);
    assert_eq!(reloads, 0, "{}", lb.h.stderr());
}

/// Issue 25 (scripts/bench section 8, second table): what a balancer costs while nothing
/// changes, at 100 and at 1000 services (one instance and one route declaration each), beside
/// etcd alone in the same run. Each window lasts `HECD_BENCH_IDLE` seconds (default 20).
#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn bench_idle_cost() {
    let window = Duration::from_secs(
        std::env::var("HECD_BENCH_IDLE")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20),
    );
    let (app, stop_app) = server();
    let addr = format!("127.0.0.1:{app}");
    let etcd = Etcd::start();
    let etcd_pid = etcd.pid().expect("etcd runs");
    let percent = |ticks: u64| ticks as f64 / 100.0 / window.as_secs_f64() * 100.0;
    thread::sleep(Duration::from_secs(2));
    let t0 = usage(etcd_pid).1;
    thread::sleep(window);
    let alone = percent(usage(etcd_pid).1 - t0);
    println!("\n### Nothing changing: what a balancer costs");
    println!(
        "| services followed, nothing changing ({} s) | etcd CPU (alone: {alone:.1} %) | hecd-haproxy CPU | HAProxy CPU (master + worker) | watch streams started / s | requests to etcd / s |",
        window.as_secs()
    );
    println!("|---|---|---|---|---|---|");
    let mut written = 0;
    // The last row checks each server once a minute instead of every 5 s: HAProxy's share is
    // its health checks (one per server and interval), not the following of etcd.
    for (services, inter) in [(100, "5s"), (1000, "5s"), (1000, "60s")] {
        while written < services {
            put_instance(etcd.port, &format!("s{written}"), "one", &addr);
            written += 1;
        }
        let lb = Lb::start(
            &etcd.url(),
            &["--check-inter", inter, "--max-services", "2000"],
        );
        let last = format!("s{}.example.com", services - 1);
        let ready = wait_until(Duration::from_secs(60), || served(lb.port, &last));
        assert!(ready, "{}", lb.h.stderr());
        thread::sleep(Duration::from_secs(3));
        let (master, workers) = lb.workers();
        let pids = [etcd_pid, lb.h.pid(), master, workers[0]];
        let before: Vec<u64> = pids.iter().map(|p| usage(*p).1).collect();
        let metrics = || common::etcd::metrics_on(etcd.port);
        let (m0, started) = (metrics(), Instant::now());
        thread::sleep(window);
        let after: Vec<u64> = pids.iter().map(|p| usage(*p).1).collect();
        let m1 = metrics();
        let secs = started.elapsed().as_secs_f64();
        let rate = |name: &str| {
            (common::etcd::metric_sum(&m1, name) - common::etcd::metric_sum(&m0, name)) / secs
        };
        let used: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| percent(a - b))
            .collect();
        println!(
            "| {services}, health checks every {inter} | {:.1} % | {:.1} % | {:.1} % | {:.2} | {:.1} |",
            used[0],
            used[1],
            used[2] + used[3],
            rate("grpc_server_started_total{grpc_method=\"Watch\""),
            rate("grpc_server_started_total{")
        );
    }
    stop_app.store(true, Ordering::SeqCst);
}
