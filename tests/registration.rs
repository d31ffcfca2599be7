//! Registration against a real etcd: the key and its lease, keepalive, recovery after etcd
//! restarts and lease loss, endpoint failover, the v2 API, a 3-member cluster.

mod common;

use std::time::{Duration, Instant};

use common::etcd::{Etcd, free_port};
use std::process::Command;

use common::{
    TempDir, example, hecd_init, key, listening_port, start_command, start_registered, wait_until,
};

const TTL: i64 = 3;
const TTL_ARGS: &[&str] = &["--ttl", "3", "--check-interval", "200ms"];

fn registered(etcd: &Etcd, name: &str, value: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        etcd.get(&key(name)).as_deref() == Some(value)
    })
}

#[test]
fn key_appears_with_a_lease_of_ttl_and_survives_three_ttls() {
    let etcd = Etcd::start();
    let (h, port) = start_registered(&etcd.url(), "web-1", TTL_ARGS);
    let value = format!("127.0.0.1:{port}");
    assert!(
        registered(&etcd, "web-1", &value),
        "not registered; stderr:\n{}",
        h.stderr()
    );
    let lease = etcd.lease_of(&key("web-1")).expect("key has a lease");
    assert_eq!(etcd.lease_ttl(lease).map(|(granted, _)| granted), Some(TTL));
    // Kept alive: still there, on the same lease, after three TTLs.
    std::thread::sleep(Duration::from_secs(3 * TTL as u64));
    assert_eq!(etcd.get(&key("web-1")), Some(value));
    assert_eq!(etcd.lease_of(&key("web-1")), Some(lease));
    let (_, left) = etcd.lease_ttl(lease).unwrap();
    assert!(left >= 1, "keepalive lags: {left}s left");
    assert!(
        h.stderr()
            .contains(&format!("registered /app/servers/web-1 = 127.0.0.1:{port}")),
        "{}",
        h.stderr()
    );
}

#[test]
fn etcd_restarted_with_its_data_keeps_or_restores_the_key() {
    let mut etcd = Etcd::start();
    let (h, port) = start_registered(&etcd.url(), "web-r", TTL_ARGS);
    let value = format!("127.0.0.1:{port}");
    assert!(registered(&etcd, "web-r", &value));
    etcd.restart(false);
    assert!(
        registered(&etcd, "web-r", &value),
        "key not back; stderr:\n{}",
        h.stderr()
    );
    // And it stays: the lease is kept alive after the restart.
    std::thread::sleep(Duration::from_secs(TTL as u64 + 1));
    assert_eq!(etcd.get(&key("web-r")), Some(value));
}

#[test]
fn etcd_restarted_empty_gets_the_key_back_within_one_ttl() {
    let mut etcd = Etcd::start();
    let (h, port) = start_registered(&etcd.url(), "web-e", TTL_ARGS);
    let value = format!("127.0.0.1:{port}");
    assert!(registered(&etcd, "web-e", &value));
    let old_lease = etcd.lease_of(&key("web-e"));
    assert!(old_lease.is_some());
    etcd.restart(true);
    let back = Instant::now();
    // The data dir was wiped: the key comes back under a new lease (hecd-init may already
    // have put it back by the time etcd answers here, so its absence is not asserted).
    // One TTL, plus a margin for the backoff that ran while etcd was down.
    let ok = wait_until(Duration::from_secs(TTL as u64 + 3), || {
        etcd.get(&key("web-e")).as_deref() == Some(&value)
            && etcd
                .lease_of(&key("web-e"))
                .is_some_and(|l| Some(l) != old_lease)
    });
    assert!(ok, "key not back within TTL; stderr:\n{}", h.stderr());
    eprintln!("key back {:?} after etcd answered again", back.elapsed());
    // Logged before the key went back, through the logger's queue: wait for the line.
    h.expect_stderr("is gone");
}

#[test]
fn lease_revoked_from_outside_is_replaced() {
    let etcd = Etcd::start();
    let (h, port) = start_registered(&etcd.url(), "web-v", TTL_ARGS);
    let value = format!("127.0.0.1:{port}");
    assert!(registered(&etcd, "web-v", &value));
    let lease = etcd.lease_of(&key("web-v")).unwrap();
    etcd.revoke(lease);
    assert_eq!(etcd.get(&key("web-v")), None);
    assert!(
        registered(&etcd, "web-v", &value),
        "not re-registered; stderr:\n{}",
        h.stderr()
    );
    assert_ne!(etcd.lease_of(&key("web-v")), Some(lease), "a new lease");
}

#[test]
fn first_endpoint_dead_registers_via_the_second() {
    let etcd = Etcd::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (h, port) = start_registered(&format!("{dead},{}", etcd.url()), "web-f", TTL_ARGS);
    assert!(
        registered(&etcd, "web-f", &format!("127.0.0.1:{port}")),
        "stderr:\n{}",
        h.stderr()
    );
}

#[test]
fn v2_api_registers_refreshes_and_deletes() {
    let etcd = Etcd::start_with(&["--enable-v2=true"]);
    let (mut h, port) = start_registered(
        &etcd.url(),
        "web-2",
        &["--etcd-api", "v2", "--ttl", "3", "--drain", "0"],
    );
    let value = format!("127.0.0.1:{port}");
    let v2_get = || {
        etcd.call("/v2/keys/app/servers/web-2", None).and_then(|v| {
            Some((
                v["node"]["value"].as_str()?.to_owned(),
                v["node"]["ttl"].as_i64()?,
            ))
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || v2_get()
            .is_some_and(|(v, _)| v == value)),
        "stderr:\n{}",
        h.stderr()
    );
    // Refreshed: still there after two TTLs.
    std::thread::sleep(Duration::from_secs(6));
    let (v, ttl) = v2_get().expect("v2 key kept alive");
    assert_eq!((v.as_str(), ttl > 0), (value.as_str(), true));
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 0);
    assert_eq!(v2_get(), None, "deleted on stop");
}

#[test]
fn leader_killed_in_a_three_member_cluster_keeps_the_key() {
    let mut members = Etcd::cluster3();
    let urls = members.iter().map(Etcd::url).collect::<Vec<_>>().join(",");
    let (h, port) = start_registered(&urls, "web-c", TTL_ARGS);
    let value = format!("127.0.0.1:{port}");
    assert!(registered(&members[0], "web-c", &value));
    let leader = members.iter().position(Etcd::is_leader).expect("a leader");
    members[leader].kill();
    let survivor = &members[(leader + 1) % 3];
    // Through the election and three TTLs after, the key never goes missing for long.
    let started = Instant::now();
    let mut missing_since: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(3 * TTL as u64) {
        match survivor.get(&key("web-c")) {
            Some(v) => {
                assert_eq!(v, value);
                missing_since = None;
            }
            None => {
                let since = *missing_since.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(TTL as u64),
                    "key gone after the leader died:\n{}",
                    h.stderr()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(survivor.get(&key("web-c")), Some(value));
}

/// `/proc` is input like any other: with hecd-init's own mountinfo a FIFO nobody writes and
/// its cgroup file `/dev/zero` (bind mounts in a mount namespace of its own), the Docker
/// lookup that reads them finds no container id and goes on, and hecd-init registers and
/// stops as usual. Read whole and blocking, the FIFO held the registrar for ever (no key) and
/// `/dev/zero` filled memory.
#[test]
fn a_proc_that_is_not_the_kernels_is_read_bounded() {
    let etcd = Etcd::start();
    let tmp = TempDir::new("proc");
    let fifo = tmp.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // `$$` is the shell, which then becomes hecd-init (exec): its /proc/self.
    let script = format!(
        "mount --bind {} /proc/$$/mountinfo && mount --bind /dev/zero /proc/$$/cgroup && exec \"$0\" \"$@\"",
        fifo.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(hecd_init())
        .args([
            "--etcd",
            &etcd.url(),
            "--name",
            "proc-1",
            "--advertise",
            "127.0.0.1",
        ])
        .args(["--docker", "tcp://127.0.0.1:1", "--ttl", "3", "--"])
        .arg(example("tiny_server"))
        .args(["0", "proc-1"]);
    let mut h = start_command(cmd);
    let port = listening_port(&h.expect_line("listening"));
    assert!(
        registered(&etcd, "proc-1", &format!("127.0.0.1:{port}")),
        "not registered; stderr:\n{}",
        h.stderr()
    );
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 0, "{}", h.stderr());
    assert_eq!(etcd.get(&key("proc-1")), None);
}
