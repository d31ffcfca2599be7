//! Confirmed drain: hecd-init ends its drain when every hecd-haproxy announced at the delete
//! has confirmed that the backend is out of rotation and idle, with real etcd, two real
//! HAProxy instances under hecd-haproxy, and apps that answer after 300 ms and exit at once on
//! SIGTERM (so a request still in flight at the signal would fail).

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::etcd::Etcd;
use common::lb::{Lb, Load};
use common::{Hecd, key, now_ms, wait_until};

/// An app answering each request after 300 ms, under hecd-init with `--drain DRAIN`.
fn slow_app(etcd: &Etcd, name: &str, drain: &str) -> Hecd {
    let (h, _) = common::start_registered_env(
        &etcd.url(),
        name,
        &["--ttl", "3", "--check-interval", "200ms", "--drain", drain],
        &[("TINY_DELAY_MS", "300")],
    );
    let up = wait_until(Duration::from_secs(10), || etcd.get(&key(name)).is_some());
    assert!(up, "{name} not registered:\n{}", h.stderr());
    h
}

fn lb(etcd: &Etcd, id: &str) -> Lb {
    Lb::start(&etcd.url(), &["--lb-id", id])
}

/// Stops `app` with SIGTERM; returns ms from the signal to the app's SIGTERM, and
/// hecd-init's stderr.
fn stop(app: &mut Hecd) -> (u128, String) {
    let sent = now_ms();
    app.signal(libc::SIGTERM);
    let mut signalled = None;
    while let Some(line) = app.line(Duration::from_secs(10)) {
        if let Some(ms) = line.strip_prefix("signal 15 at ") {
            signalled = ms.parse::<u128>().ok();
            break;
        }
    }
    assert!(
        app.wait(Duration::from_secs(10)).is_some(),
        "the app did not stop"
    );
    let err = app.stderr_final();
    let at = signalled.unwrap_or_else(|| panic!("the app never got SIGTERM:\n{err}"));
    (at - sent, err)
}

#[test]
fn issue_12_confirmations_end_the_drain_with_no_failed_request() {
    let etcd = Etcd::start();
    let (lb_a, lb_b) = (lb(&etcd, "lb-a"), lb(&etcd, "lb-b"));
    let mut apps: Vec<Hecd> = ["a", "b", "c"]
        .iter()
        .map(|n| slow_app(&etcd, n, "5"))
        .collect();
    lb_a.expect_servers(&["a", "b", "c"], Duration::from_secs(5));
    lb_b.expect_servers(&["a", "b", "c"], Duration::from_secs(5));
    let load = Load::start(&[lb_a.port, lb_b.port], 50);
    thread::sleep(Duration::from_secs(2));

    let (took, err) = stop(&mut apps[0]);
    assert!(
        err.contains("(2 of 2 load balancers confirmed)"),
        "no confirmation logged:\n{err}"
    );
    // About one request (300 ms) plus the balancers' reaction; far below the 5 s drain.
    assert!(
        took < 2000,
        "the app was signalled {took} ms after SIGTERM:\n{err}"
    );
    thread::sleep(Duration::from_secs(1));
    let (sent, failed, answered) = load.finish();
    assert!(failed.is_empty(), "failed requests: {failed:#?}");
    assert!(
        sent > 100 && answered.contains_key("a"),
        "{sent} sent, {answered:?}"
    );
    for lb in [&lb_a, &lb_b] {
        lb.expect_servers(&["b", "c"], Duration::from_secs(2));
    }
    assert!(
        etcd.etcdctl(&["get", "--prefix", "/app/servers/"])
            .contains("/app/servers/b")
    );
    // The balancers' own keys stay outside the server prefix.
    let lbs = etcd.etcdctl(&["get", "--prefix", "--keys-only", "/hecd/lbs/"]);
    assert!(
        lbs.contains("/hecd/lbs/lb-a") && lbs.contains("/hecd/lbs/lb-b"),
        "{lbs}"
    );
}

#[test]
fn issue_12_a_dead_balancer_drops_out_at_its_lease_or_the_bound() {
    let etcd = Etcd::start();
    let (lb_a, lb_b) = (lb(&etcd, "lb-a"), lb(&etcd, "lb-b"));
    let mut app = slow_app(&etcd, "a", "5");
    let _other = slow_app(&etcd, "b", "5");
    lb_a.expect_servers(&["a", "b"], Duration::from_secs(5));
    lb_b.expect_servers(&["a", "b"], Duration::from_secs(5));
    drop(lb_b); // SIGKILL: hecd-haproxy and its HAProxy; its announcement lives on its lease
    let load = Load::start(&[lb_a.port], 50);
    thread::sleep(Duration::from_secs(1));
    let (took, err) = stop(&mut app);
    assert!(
        err.contains("gone: lb-b") || err.contains("lb-b silent"),
        "lb-b's absence not logged:\n{err}"
    );
    assert!(
        (2000..=5800).contains(&took),
        "signalled {took} ms after SIGTERM: neither lb-b's lease (5 s TTL) nor the 5 s bound"
    );
    let (_, failed, _) = load.finish();
    assert!(
        failed.is_empty(),
        "failed through the live balancer: {failed:#?}"
    );
}

#[test]
fn issue_12_no_balancer_means_the_fixed_drain() {
    let etcd = Etcd::start();
    let mut app = slow_app(&etcd, "a", "2");
    let (took, err) = stop(&mut app);
    assert!(
        (1800..=3500).contains(&took),
        "signalled {took} ms after SIGTERM, want the 2 s drain:\n{err}"
    );
    assert!(!err.contains("drained in"), "{err}");
}

/// README, "Confirmed drain": a balancer that does not confirm (confd) announced with the
/// documented etcdctl lines keeps `--drain` as a floor: the instance waits its whole drain even
/// though hecd-haproxy confirms within milliseconds; once that announcement goes, the drain is
/// confirmed again.
#[test]
fn issue_17_the_documented_floor_keeps_the_full_drain_beside_a_non_confirming_balancer() {
    let etcd = Etcd::start();
    let doc = include_str!("../README.md");
    let block = doc
        .split_once("<!-- drain-floor")
        .and_then(|(_, rest)| rest.split_once("```sh\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the drain-floor block in the README");
    let floor = Group(
        Command::new("sh")
            .args(["-euc", block])
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", etcd.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("sh"),
    );
    let announced = wait_until(Duration::from_secs(10), || {
        etcd.call(
            "/v3/kv/range",
            Some(serde_json::json!({
                "key": common::etcd::b64encode(b"/hecd/lbs/confd-"),
                "range_end": common::etcd::b64encode(b"/hecd/lbs/confd."),
            })),
        )
        .and_then(|v| v.get("count").cloned())
        .is_some()
    });
    assert!(announced, "the documented lines announced nothing");
    let balancer = lb(&etcd, "lb-a");
    let mut app = slow_app(&etcd, "a", "2");
    // Both balancers announced, the server in HAProxy: then the stop.
    balancer.expect_servers(&["a"], Duration::from_secs(5));
    let up = wait_until(Duration::from_secs(10), || {
        etcd.get("/hecd/lbs/lb-a").is_some()
    });
    assert!(up, "lb-a never announced:\n{}", balancer.h.stderr());
    let (took, err) = stop(&mut app);
    assert!(
        (1900..=3500).contains(&took),
        "signalled {took} ms after SIGTERM, want the whole 2 s drain:\n{err}"
    );
    assert!(err.contains("1 of 2 confirmed"), "{err}");
    // The announcement withdrawn (its keep-alive stopped, the lease revoked): confirmed again.
    drop(floor);
    let mut other = slow_app(&etcd, "b", "2");
    balancer.expect_servers(&["b"], Duration::from_secs(5));
    etcd.call(
        "/v3/kv/deleterange",
        Some(serde_json::json!({
            "key": common::etcd::b64encode(b"/hecd/lbs/confd-"),
            "range_end": common::etcd::b64encode(b"/hecd/lbs/confd."),
        })),
    );
    let (took, err) = stop(&mut other);
    assert!(took < 1500, "signalled {took} ms after SIGTERM:\n{err}");
    assert!(err.contains("1 of 1 load balancers confirmed"), "{err}");
}

/// A process group this test started (the documented shell lines and their `etcdctl lease
/// keep-alive`), SIGKILLed and reaped when dropped, also when an assertion fails.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}
