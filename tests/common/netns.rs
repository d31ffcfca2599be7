//! Hosts for partition tests: network namespaces on one bridge, each with an address of its
//! own (`10.213.N.H/24`; the test process reaches them through the bridge, `10.213.N.254`).
//! Links are cut with `iptables -j DROP` inside a host's namespace (silent: no RST, no ICMP),
//! and healed by deleting those rules. Docker sets the FORWARD policy to DROP and bridged
//! traffic goes through it (`bridge-nf-call-iptables`), so the bridge gets an ACCEPT rule of its
//! own while the test runs.
//!
//! [`Net::new`] returns `None`, after printing why, where namespaces cannot be made (not root,
//! no `ip`/`iptables`). Drop stops every process started on a host (its process group), then
//! removes the namespaces, the bridge and the FORWARD rule, also when the test fails.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::{TempDir, wait_until};

/// A bridge and the hosts on it.
pub struct Net {
    /// N in `10.213.N.0/24`; also in every name, so tests running side by side do not meet.
    id: u8,
    hosts: Vec<String>,
    bridge: String,
    forward_rule: bool,
    children: Vec<Child>,
}

/// Runs a command to set the network up; `Err` with what it printed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Makes `hosts` (short names) on a fresh bridge, or says why it cannot and returns `None`.
    pub fn new(hosts: &[&str]) -> Option<Net> {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces need root (scripts/test runs as root)");
            return None;
        }
        let id = (std::process::id() % 40) as u8 * 6 + NEXT.fetch_add(1, Ordering::SeqCst) % 6 + 1;
        let mut net = Net {
            id,
            hosts: Vec::new(),
            bridge: format!("hecdbr{id}"),
            forward_rule: false,
            children: Vec::new(),
        };
        match net.build(hosts) {
            Ok(()) => Some(net),
            Err(e) => {
                eprintln!("skipped: cannot make test hosts as network namespaces here: {e}");
                None
            }
        }
    }

    fn build(&mut self, hosts: &[&str]) -> Result<(), String> {
        let bridge = self.bridge.clone();
        // Left over from a run that was killed before its Drop: start clean.
        let _ = run("ip", &["link", "del", &bridge]);
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.213.{}.254/24", self.id),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        let accept = ["-i", bridge.as_str(), "-o", bridge.as_str(), "-j", "ACCEPT"];
        run("iptables", &[&["-I", "FORWARD"][..], &accept].concat())?;
        self.forward_rule = true;
        for (i, host) in hosts.iter().enumerate() {
            let ns = self.ns(host);
            let _ = run("ip", &["netns", "del", &ns]);
            run("ip", &["netns", "add", &ns])?;
            self.hosts.push((*host).to_owned());
            let outside = format!("hecdv{}x{i}", self.id);
            run(
                "ip",
                &[
                    "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &outside, "master", &bridge, "up"])?;
            let addr = format!("10.213.{}.{}/24", self.id, i + 1);
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn ns(&self, host: &str) -> String {
        format!("hecd{}-{host}", self.id)
    }

    /// The address of `host`.
    pub fn ip(&self, host: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        format!("10.213.{}.{}", self.id, i + 1)
    }

    /// `program` to be run on `host` (`ip netns exec`, which execs it: the child's pid is the
    /// program's), in a process group of its own.
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)]).arg(program);
        cmd.process_group(0);
        cmd
    }

    /// Starts `cmd` (from [`Net::command`]) with its output thrown away; stopped on drop.
    pub fn spawn_quiet(&mut self, mut cmd: Command) {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn on a test host");
        self.children.push(child);
    }

    /// Drops every packet between `a` and `b`, both ways (rules in `a`'s namespace).
    pub fn cut(&self, a: &str, b: &str) {
        self.rules("-I", a, b);
    }

    /// Takes the rules of [`Net::cut`] away again.
    pub fn heal(&self, a: &str, b: &str) {
        self.rules("-D", a, b);
    }

    fn rules(&self, op: &str, a: &str, b: &str) {
        let ns = self.ns(a);
        let peer = self.ip(b);
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let args = [
                "netns", "exec", &ns, "iptables", op, chain, dir, &peer, "-j", "DROP",
            ];
            run("ip", &args).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: kill has no memory-safety preconditions; the group is the child's own.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        for host in &self.hosts {
            let _ = run("ip", &["netns", "del", &self.ns(host)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
        if self.forward_rule {
            let bridge = self.bridge.as_str();
            let _ = run(
                "iptables",
                &["-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"],
            );
        }
    }
}

/// A three-member etcd cluster on three hosts of `net` (its client URL on each host's own
/// address, port 2379; peers on 2380: each host has its own ports, so nothing can take them).
pub struct Cluster {
    pub hosts: Vec<String>,
    pub urls: Vec<String>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    pub fn start(net: &mut Net, hosts: [&str; 3]) -> Cluster {
        let peers: Vec<String> = hosts
            .iter()
            .map(|h| format!("{h}=http://{}:2380", net.ip(h)))
            .collect();
        let mut dirs = Vec::new();
        let mut urls = Vec::new();
        for host in hosts {
            let ip = net.ip(host);
            let dir = TempDir::new(&format!("netns-etcd-{host}"));
            let mut cmd = net.command(host, "etcd");
            cmd.args(["--name", host, "--data-dir"])
                .arg(dir.0.join("data"))
                .arg(format!("--listen-client-urls=http://{ip}:2379"))
                .arg(format!("--advertise-client-urls=http://{ip}:2379"))
                .arg(format!("--listen-peer-urls=http://{ip}:2380"))
                .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
                .arg(format!("--initial-cluster={}", peers.join(",")))
                .args(["--initial-cluster-state", "new", "--initial-cluster-token"])
                .arg(format!("hecd-netns-{}", net.id));
            net.spawn_quiet(cmd);
            urls.push(format!("http://{ip}:2379"));
            dirs.push(dir);
        }
        let cluster = Cluster {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            urls,
            _dirs: dirs,
        };
        let healthy = wait_until(Duration::from_secs(30), || {
            cluster
                .etcdctl(&["endpoint", "health"])
                .matches("is healthy")
                .count()
                == 3
        });
        assert!(
            healthy,
            "etcd cluster not healthy: {}",
            cluster.etcdctl(&["endpoint", "health"])
        );
        cluster
    }

    /// The client URL of the member on `host`.
    pub fn url(&self, host: &str) -> &str {
        let i = self.hosts.iter().position(|h| h == host).expect("member");
        &self.urls[i]
    }

    /// All client URLs, comma-separated, so that the program named `identity` (`--name`,
    /// `--lb-id`) starts with the member on `first`.
    pub fn endpoints_for(&self, identity: &str, first: &str) -> String {
        let others: Vec<&str> = self.urls.iter().map(String::as_str).collect();
        super::endpoints_for(identity, self.url(first), &others)
    }

    /// Client URLs of every member but `cut`.
    pub fn endpoints_without(&self, cut: &str) -> String {
        self.hosts
            .iter()
            .zip(&self.urls)
            .filter(|(h, _)| *h != cut)
            .map(|(_, u)| u.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// etcdctl (v3) against every member, from the test's own namespace, bounded.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        self.etcdctl_at(&self.urls.join(","), args)
    }

    /// etcdctl (v3) against `endpoints` (comma-separated URLs), bounded.
    pub fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> String {
        super::etcd::etcdctl(endpoints, args)
    }

    /// The value of `key`, read (linearizably) through every member.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_at(&self.urls.join(","), key)
    }

    /// The value of `key`, read (linearizably) through `endpoints` (members with a leader).
    pub fn get_at(&self, endpoints: &str, key: &str) -> Option<String> {
        let out = self.etcdctl_at(endpoints, &["get", "--print-value-only", key]);
        let value = out.lines().next().unwrap_or("").trim();
        (!value.is_empty() && !out.contains("Error")).then(|| value.to_owned())
    }
}
