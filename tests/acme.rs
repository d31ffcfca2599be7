//! hecd-haproxy's ACME against Debian's pebble (HTTP-01 validation on, its DNS from
//! pebble-challtestsrv), a real etcd and HAProxy 2.6: a declared host gets a certificate that
//! verifies against pebble's root; two balancers share one order and one certificate, the CA
//! validating through the other one; a host outside `--acme-domains` gets none; a balancer
//! killed holding the lock hands the host over after the lease; renewal replaces the
//! certificate in every balancer with no reload and no failed request.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::etcd::{Etcd, free_port};
use common::lb::{Lb, Load, Request};
use common::pebble::Pebble;
use common::tls::{client_trusting, https_get_at};
use common::{TempDir, wait_until};

/// A free port on both 127.0.0.2 and 127.0.0.3 (each balancer listens on its own address,
/// the same port: pebble validates HTTP-01 on one port for every host).
fn shared_port() -> u16 {
    loop {
        let p = free_port();
        if ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .all(|ip| TcpListener::bind((*ip, p)).is_ok())
        {
            return p;
        }
    }
}

/// A balancer on `ip:port` with HTTPS on `ip:{free}` and ACME at `pebble` for `acme.test`.
fn acme_lb(
    etcd: &Etcd,
    pebble: &Pebble,
    ip: &str,
    port: u16,
    id: &str,
    extra: &[&str],
) -> Result<Lb, String> {
    let https = format!("{ip}:{{free}}");
    let cacert = pebble.cacert.display().to_string();
    let mut args = vec![
        "--https",
        &https,
        "--acme",
        &pebble.directory,
        "--acme-cacert",
        &cacert,
        "--acme-domains",
        "acme.test",
        "--lb-id",
        id,
    ];
    args.extend(extra);
    Lb::start_listening(&etcd.url(), ip, port, &args)
}

/// Starts pebble for HTTP-01 on a port free on the test addresses, then the balancers
/// `(ip, id)` on it; everything again on another port when one was taken meanwhile.
fn start(
    tmp: &std::path::Path,
    etcd: &Etcd,
    lbs: &[(&str, &str)],
    extra: &[&str],
) -> (Pebble, Vec<Lb>, u16) {
    for _ in 0..5 {
        let port = shared_port();
        let pebble = Pebble::start(tmp, port);
        let started: Result<Vec<Lb>, String> = lbs
            .iter()
            .map(|(ip, id)| acme_lb(etcd, &pebble, ip, port, id, extra))
            .collect();
        match started {
            Ok(lbs) => return (pebble, lbs, port),
            Err(e) if e.contains("cannot bind") => eprintln!("port {port} taken; another"),
            Err(e) => panic!("hecd-haproxy did not start:\n{e}"),
        }
    }
    panic!("no shared port in 5 tries");
}

/// Declares `host` as the route of an instance of /app/a (its server need not answer: the
/// tests look at the handshake).
fn declare(etcd: &Etcd, name: &str, host: &str) {
    etcd.put(&format!("/app/a/{name}"), "127.0.0.1:9");
    etcd.put(&format!("/hecd/routes/app/a/{name}"), host);
}

/// The leaf certificate `ip`'s HTTPS listener presents for `host`, verified against `root`
/// (chain and name), if it does.
fn presented(lb: &Lb, ip: &str, host: &str, root: &str) -> Option<Vec<u8>> {
    let client = client_trusting(root, &["http/1.1"]);
    https_get_at(ip, lb.https_port(), host, "/", &client)
        .ok()
        .map(|(_, leaf)| leaf)
}

/// Issue 24: one balancer, a declared host under `--acme-domains`: within 30 s its HTTPS
/// presents a certificate for that host that verifies against pebble's root, after a real
/// HTTP-01 validation through HAProxy; a declared host outside the domains gets no order; no
/// private key in the log.
#[test]
fn issue_24_a_declared_host_gets_a_certificate_by_http_01() {
    let tmp = TempDir::new("acme-one");
    let etcd = Etcd::start();
    let (pebble, lbs, port) = start(&tmp.0, &etcd, &[("127.0.0.2", "lb-a")], &[]);
    let lb = &lbs[0];
    pebble.point("a.acme.test", "127.0.0.2");
    let asked = Instant::now();
    declare(&etcd, "a1", "a.acme.test");
    declare(&etcd, "o1", "other.test");
    let root = pebble.root();
    let served = wait_until(Duration::from_secs(30), || {
        presented(lb, "127.0.0.2", "a.acme.test", &root).is_some()
    });
    assert!(
        served,
        "no certificate for a.acme.test after 30 s:\n{}\n{}",
        lb.h.stderr(),
        pebble.log()
    );
    eprintln!("declared → served: {:?}", asked.elapsed());
    let log = pebble.log();
    // Validated for real, over HTTP, at the balancer's port.
    assert!(
        log.contains(&format!(
            "Attempting to validate w/ HTTP: http://a.acme.test:{port}/.well-known/acme-challenge/"
        )),
        "{log}"
    );
    assert!(log.contains("set VALID by completed challenge"), "{log}");
    assert_eq!(pebble.orders(), 1, "{log}");
    // Stored for every balancer; the account too; no lock or challenge left.
    assert!(etcd.get("/hecd-certs/certs/a.acme.test").is_some());
    assert!(etcd.get("/hecd-certs/account").is_some());
    assert!(etcd.get("/hecd-certs/locks/a.acme.test").is_none());
    // other.test is not under --acme-domains: never ordered.
    thread::sleep(Duration::from_secs(2));
    assert!(!pebble.log().contains("other.test"));
    let stderr = lb.h.stderr();
    assert!(stderr.contains("route other.test/"), "{stderr}");
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("ACME") && l.contains("other.test")),
        "{stderr}"
    );
    assert!(presented(lb, "127.0.0.2", "other.test", &root).is_none());
    // No private key in the log.
    let stderr = lb.h.stderr();
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    let stored = etcd.get("/hecd-certs/certs/a.acme.test").unwrap();
    let key = &stored[stored.find("-----BEGIN PRIVATE KEY-----").unwrap()..];
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
    {
        assert!(!stderr.contains(line));
    }
}

/// Issue 24: two balancers on different addresses, the DNS pointing the host at the second:
/// one order (pebble saw one), the CA validating through the second, both serving the same
/// certificate. Then, with a renewal window longer than pebble's certificates live, the
/// certificate is ordered again and replaces the old one in both, under HTTPS load, with no
/// failed request, no reload and the same HAProxy workers.
#[test]
fn issue_24_two_balancers_share_one_order_and_renew_under_load() {
    let tmp = TempDir::new("acme-two");
    let etcd = Etcd::start();
    let (pebble, lbs, _port) = start(
        &tmp.0,
        &etcd,
        &[("127.0.0.2", "lb-a"), ("127.0.0.3", "lb-b")],
        &["--acme-renew-before", "3650d"],
    );
    pebble.point("a.acme.test", "127.0.0.3");
    let root = pebble.root();
    declare(&etcd, "a1", "a.acme.test");
    let both = || {
        let a = presented(&lbs[0], "127.0.0.2", "a.acme.test", &root)?;
        let b = presented(&lbs[1], "127.0.0.3", "a.acme.test", &root)?;
        Some((a, b))
    };
    let served = wait_until(Duration::from_secs(30), || both().is_some());
    assert!(
        served,
        "{}\n{}\n{}",
        lbs[0].h.stderr(),
        lbs[1].h.stderr(),
        pebble.log()
    );
    let (a, b) = both().unwrap();
    assert_eq!(a, b, "the two balancers serve different certificates");
    assert_eq!(pebble.orders(), 1, "{}", pebble.log());
    assert!(
        pebble
            .log()
            .contains("Attempting to validate w/ HTTP: http://a.acme.test:")
    );
    // Renewal under load on both balancers.
    let workers: Vec<_> = lbs.iter().map(Lb::workers).collect();
    let client = client_trusting(&root, &["http/1.1"]);
    let requests = [
        ("127.0.0.2", lbs[0].https_port()),
        ("127.0.0.3", lbs[1].https_port()),
    ]
    .into_iter()
    .map(|(ip, port)| {
        let c = client.clone();
        Request {
            label: format!("https {ip}"),
            send: Arc::new(move || {
                let (answer, _) = https_get_at(ip, port, "a.acme.test", "/", &c)?;
                // The app is absent: HAProxy's own 503 is an answer over HTTPS.
                answer
                    .starts_with("HTTP/1.1 503")
                    .then(|| "503".to_owned())
                    .ok_or(answer)
            }),
        }
    })
    .collect();
    let load = Load::start_with(requests, 20);
    let renewed = wait_until(Duration::from_secs(75), || {
        both().is_some_and(|(x, y)| x != a && y != a && x == y)
    });
    let (sent, failed, _) = load.finish();
    assert!(
        renewed,
        "not renewed:\n{}\n{}",
        lbs[0].h.stderr(),
        lbs[1].h.stderr()
    );
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    for (lb, w) in lbs.iter().zip(&workers) {
        assert!(!lb.h.stderr().contains("reloading"), "{}", lb.h.stderr());
        assert_eq!(&lb.workers(), w);
    }
    // The window is longer than the certificate's life: said once per order.
    let warned = lbs.iter().any(|lb| {
        lb.h.stderr()
            .contains("due for renewal as soon as it is issued")
    });
    assert!(warned);
}

/// Issue 24: a balancer killed while it holds a host's lock (its order stuck: the DNS points
/// the host at a server that never answers) frees the host within the lock's lease; another
/// balancer then orders it.
#[test]
fn issue_24_a_balancer_killed_holding_the_lock_hands_the_host_over() {
    let tmp = TempDir::new("acme-lock");
    let etcd = Etcd::start();
    let (pebble, mut lbs, port) = start(&tmp.0, &etcd, &[("127.0.0.2", "lb-a")], &[]);
    // A server that accepts and never answers, where the DNS sends the CA at first.
    let hole = TcpListener::bind(("127.0.0.4", port)).unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    thread::spawn(move || {
        for c in hole.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    pebble.point("a.acme.test", "127.0.0.4");
    declare(&etcd, "a1", "a.acme.test");
    let locked = wait_until(Duration::from_secs(20), || {
        etcd.get("/hecd-certs/locks/a.acme.test").as_deref() == Some("lb-a")
    });
    assert!(locked, "{}", lbs[0].h.stderr());
    // Killed with the lock held.
    let mut a = lbs.remove(0);
    a.h.signal(libc::SIGKILL);
    let _ = a.h.wait(Duration::from_secs(5));
    let killed = Instant::now();
    pebble.point("a.acme.test", "127.0.0.3");
    let b = acme_lb(&etcd, &pebble, "127.0.0.3", port, "lb-b", &[])
        .unwrap_or_else(|e| panic!("lb-b: {e}"));
    assert_eq!(
        etcd.get("/hecd-certs/locks/a.acme.test").as_deref(),
        Some("lb-a"),
        "the lock must still be held when lb-b starts"
    );
    let root = pebble.root();
    let served = wait_until(Duration::from_secs(60), || {
        presented(&b, "127.0.0.3", "a.acme.test", &root).is_some()
    });
    let took = killed.elapsed();
    assert!(served, "{}\n{}", b.h.stderr(), pebble.log());
    // Not before lb-a's lease ended (15 s from its last renewal, at most 3 s before the kill).
    assert!(took >= Duration::from_secs(11), "{took:?}");
    eprintln!("killed → served by lb-b: {took:?}");
}

/// The ACME benchmark (scripts/bench, section 11): a host declared → its first HTTPS answer
/// with a certificate pebble issued (`PEBBLE_VA_NOSLEEP=1`), a new host each round, median of 5.
#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn bench_acme() {
    let tmp = TempDir::new("acme-bench");
    let etcd = Etcd::start();
    let (pebble, lbs, _port) = start(&tmp.0, &etcd, &[("127.0.0.2", "lb-a")], &[]);
    let root = pebble.root();
    let mut took = Vec::new();
    for i in 0..5 {
        let host = format!("h{i}.acme.test");
        pebble.point(&host, "127.0.0.2");
        let declared = Instant::now();
        declare(&etcd, &format!("h{i}"), &host);
        let served = wait_until(Duration::from_secs(30), || {
            presented(&lbs[0], "127.0.0.2", &host, &root).is_some()
        });
        assert!(served, "{host}: {}", lbs[0].h.stderr());
        took.push(declared.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    println!("### ACME: a declared host → its first HTTPS answer with a CA-issued certificate");
    println!("| | median of 5 | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| declared → served (pebble, HTTP-01 validated, `PEBBLE_VA_NOSLEEP=1`) | {:.0} ms | {:.0} ms | {:.0} ms |",
        took[2], took[0], took[4]
    );
    assert_eq!(pebble.orders(), 5);
}
