//! Helpers for the integration tests: run the real hecd-init binary, read its app's output
//! with deadlines, inspect processes through /proc, and kill exactly what a test started.
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The hecd-init binary under test: cargo's debug build, or the one `TEST_HECD_INIT` names
/// (scripts/test runs some tests again on the static release binaries, and on the arm64 ones
/// under qemu).
pub fn hecd_init() -> PathBuf {
    std::env::var_os("TEST_HECD_INIT").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_hecd-init")),
        PathBuf::from,
    )
}

/// The hecd-haproxy binary under test: cargo's debug build, or `TEST_HECD_HAPROXY`.
pub fn hecd_haproxy() -> PathBuf {
    std::env::var_os("TEST_HECD_HAPROXY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_hecd-haproxy")),
        PathBuf::from,
    )
}

/// A test app from `examples/`, built by `cargo test` next to the test binaries.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/examples/<name>
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} not built; run the tests with `cargo test`",
        path.display()
    );
    path
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A running hecd-init (in its own process group) with its stdout lines and stderr captured.
/// Dropping it SIGKILLs hecd-init, every descendant, and every process of the sessions it
/// recorded, then reaps hecd-init, so a failing test leaves nothing running.
pub struct Hecd {
    pub child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_closed: Arc<std::sync::atomic::AtomicBool>,
    sessions: HashSet<i32>,
    status: Option<ExitStatus>,
}

/// Starts `hecd-init ARGS...` with no `HECD_*` variables from the test's environment.
pub fn start<I, S>(args: I) -> Hecd
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(hecd_init());
    cmd.args(args);
    start_command(cmd)
}

/// Starts a prepared command (whose program is hecd-init, or runs it) the same way.
pub fn start_command(mut cmd: Command) -> Hecd {
    cmd.stdin(Stdio::null());
    cmd.process_group(0);
    start_command_with_stdin(cmd)
}

/// Like [`start_command`], but keeps the command's stdin and process-group settings (for tests
/// that give hecd-init a terminal and a session of its own).
pub fn start_command_with_stdin(cmd: Command) -> Hecd {
    spawn_hecd(cmd, true)
}

/// Spawns with stdout (and stderr) piped; with `read_stderr` false, the stderr pipe's reading
/// end is closed at once.
fn spawn_hecd(mut cmd: Command, read_stderr: bool) -> Hecd {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HECD_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn hecd-init");
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&stderr);
    let stderr_closed = Arc::new(std::sync::atomic::AtomicBool::new(!read_stderr));
    let closed = Arc::clone(&stderr_closed);
    if !read_stderr {
        drop(err_pipe);
    } else {
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    Hecd {
        child,
        lines,
        stderr,
        stderr_closed,
        sessions: HashSet::new(),
        status: None,
    }
}

impl Hecd {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Next line of the app's stdout, or `None` after `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Next line, failing the test (with hecd-init's stderr) if none comes within 10 s.
    pub fn expect_line(&self, what: &str) -> String {
        match self.line(Duration::from_secs(10)) {
            Some(l) => l,
            None => panic!(
                "no line ({what}) within 10 s; hecd-init stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Reads `ready <pid>` from a print_signals app and records its session for cleanup.
    pub fn expect_ready(&mut self) -> i32 {
        let line = self.expect_line("ready");
        let pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("expected `ready <pid>`, got {line:?}"));
        self.track(pid);
        pid
    }

    /// Waits up to 10 s for `needle` on hecd-init's stderr, failing with all of it otherwise.
    pub fn expect_stderr(&self, needle: &str) {
        let seen = wait_until(Duration::from_secs(10), || self.stderr().contains(needle));
        assert!(seen, "no {needle:?} on stderr:\n{}", self.stderr());
    }

    /// Everything hecd-init wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// All of stderr, once every writer has closed it (up to 5 s after hecd-init exits).
    pub fn stderr_final(&self) -> String {
        wait_until(Duration::from_secs(5), || {
            self.stderr_closed.load(std::sync::atomic::Ordering::SeqCst)
        });
        self.stderr()
    }

    /// Records the session of `pid` so Drop kills all of it.
    /// Never the test's own session: an app that shares hecd-init's session
    /// (`--single-child`) shares the test runner's too, and killing that would kill the runner.
    pub fn track(&mut self, pid: i32) {
        // SAFETY: getsid(0) has no preconditions.
        let own = unsafe { libc::getsid(0) };
        if let Some(s) = stat(pid)
            && s.session != own
        {
            self.sessions.insert(s.session);
        }
        if pid != own {
            self.sessions.insert(pid);
        }
    }

    /// The app: hecd-init's first child (waits up to 5 s for it); its session is recorded.
    pub fn app_pid(&mut self) -> i32 {
        let mut found = None;
        let hecd = self.pid();
        wait_until(Duration::from_secs(5), || {
            found = children(hecd).into_iter().min();
            found.is_some()
        });
        let pid =
            found.unwrap_or_else(|| panic!("hecd-init has no child; stderr:\n{}", self.stderr()));
        self.track(pid);
        pid
    }

    /// Sends a signal to hecd-init itself.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(
            unsafe { libc::kill(self.pid(), sig) },
            0,
            "kill({}, {sig})",
            self.pid()
        );
    }

    /// Waits up to `timeout` for hecd-init to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
                return self.status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to 10 s for hecd-init's exit code, failing the test with its stderr otherwise.
    pub fn expect_exit(&mut self) -> i32 {
        match self.wait(Duration::from_secs(10)) {
            Some(st) => st
                .code()
                .unwrap_or_else(|| panic!("hecd-init died by a signal: {st:?}\n{}", self.stderr())),
            None => panic!(
                "hecd-init did not exit within 10 s; stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

impl Drop for Hecd {
    fn drop(&mut self) {
        let hecd = self.pid();
        let mut victims: HashSet<i32> = descendants(hecd).into_iter().collect();
        for p in all_pids() {
            if stat(p).is_some_and(|s| self.sessions.contains(&s.session) || s.pgrp == hecd) {
                victims.insert(p);
            }
        }
        victims.insert(hecd);
        for p in victims {
            if p > 1 && p != std::process::id() as i32 {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        if self.wait(Duration::from_secs(10)).is_none() {
            eprintln!("hecd-init {hecd} did not die after SIGKILL");
        }
        if thread::panicking() {
            eprintln!(
                "--- hecd-init stderr ---\n{}------------------------",
                self.stderr()
            );
        }
    }
}

/// Fields of /proc/PID/stat the tests look at.
#[derive(Debug, Clone)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i64,
    pub tpgid: i32,
    pub utime: u64,
    pub stime: u64,
}

/// Reads /proc/PID/stat; `None` when the process is gone.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        tty_nr: f.get(4)?.parse().ok()?,
        tpgid: f.get(5)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Direct children of `pid` (including zombies).
pub fn children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| stat(*p).is_some_and(|s| s.ppid == pid))
        .collect()
}

/// Zombie children of `pid`.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|p| stat(*p).is_some_and(|s| s.state == 'Z'))
        .collect()
}

/// Every descendant of `pid`.
pub fn descendants(pid: i32) -> Vec<i32> {
    let stats: Vec<(i32, i32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?.ppid)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp) in &stats {
            if *pp == parent && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// A value from /proc/PID/status, e.g. `voluntary_ctxt_switches`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("hecd-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

/// Kills the process `0` (SIGKILL) when dropped, if it is still there: for a helper process a
/// test starts itself.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub mod echo;
pub mod etcd;
pub mod hostile;
pub mod lb;
pub mod netns;
pub mod pebble;
pub mod tls;

/// Starts `hecd-init ARGS...` with its stderr on a pipe whose reader has already closed (a log
/// shipper that died). The app's stdout is read as usual.
pub fn start_with_closed_stderr(args: &[&str]) -> Hecd {
    let mut cmd = Command::new(hecd_init());
    cmd.args(args).stdin(Stdio::null()).process_group(0);
    spawn_hecd(cmd, false)
}

/// The key of a test app registered under the default prefix.
pub fn key(name: &str) -> String {
    format!("/app/servers/{name}")
}

/// Starts hecd-init registering a tiny_server app named `name` in `etcd_urls` (advertised as
/// 127.0.0.1:PORT), with `args` before `--`. Returns once the app listens, with its port.
pub fn start_registered(etcd_urls: &str, name: &str, args: &[&str]) -> (Hecd, u16) {
    start_registered_env(etcd_urls, name, args, &[])
}

/// [`start_registered`] with extra environment variables for hecd-init and the app. The app
/// binds port 0 and says which port it got (a port chosen free here could be taken before the
/// app bound it); hecd-init advertises 127.0.0.1 with the port it discovers.
pub fn start_registered_env(
    etcd_urls: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Hecd, u16) {
    let server = example("tiny_server");
    let mut all: Vec<String> = vec![
        "--etcd".into(),
        etcd_urls.into(),
        "--name".into(),
        name.into(),
        "--advertise".into(),
        "127.0.0.1".into(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend([
        "--".into(),
        server.to_string_lossy().into_owned(),
        "0".into(),
        name.into(),
    ]);
    let mut cmd = Command::new(hecd_init());
    cmd.args(&all).envs(env.iter().copied());
    let mut h = start_command(cmd);
    let port = listening_port(&h.expect_line("listening"));
    h.app_pid();
    (h, port)
}

/// The port of tiny_server's `listening PORT PID` line.
pub fn listening_port(line: &str) -> u16 {
    line.strip_prefix("listening ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected `listening PORT PID`, got {line:?}"))
}

/// Waits up to 10 s for `name`'s key to appear in etcd, failing with hecd-init's stderr.
pub fn expect_registered(etcd: &etcd::Etcd, h: &Hecd, name: &str) {
    let present = wait_until(Duration::from_secs(10), || etcd.get(&key(name)).is_some());
    assert!(
        present,
        "{} not registered; stderr:\n{}",
        key(name),
        h.stderr()
    );
}

/// Polls etcd every 5 ms from the moment it is called; returns when `key` was first seen
/// missing (ms since the epoch), or `None` within `limit`.
pub fn time_key_gone(etcd: &etcd::Etcd, key: &str, limit: Duration) -> Option<u128> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if etcd.get(key).is_none() {
            return Some(now_ms());
        }
        thread::sleep(Duration::from_millis(5));
    }
    None
}

/// `GET /` on `addr` (`host:port`) over a fresh connection, bounded: the body of a 200, or
/// why not.
pub fn http_get(addr: &str) -> Result<String, String> {
    http_get_path(addr, "/")
}

/// [`http_get`] of `path`.
pub fn http_get_path(addr: &str, path: &str) -> Result<String, String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.take(8 << 20)
        .read_to_string(&mut out)
        .map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.split_whitespace().nth(1) == Some("200") => Ok(body.to_owned()),
        _ => Err(format!("answer {:?}", out.lines().next().unwrap_or(""))),
    }
}

/// The time (ms since the epoch) in tiny_server's `signal SIG at MS` line.
pub fn signalled_at(line: &str, sig: i32) -> u128 {
    line.strip_prefix(&format!("signal {sig} at "))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected \"signal {sig} at MS\", got {line:?}"))
}

/// Milliseconds since the epoch (to compare with tiny_server's `signal N at MS` lines).
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// `urls` (comma-joined) arranged so that a program whose identity (hecd-init's `--name`,
/// hecd-haproxy's `--lb-id`) is `identity` talks to `first` first: by the documented rule it
/// tries the list in the order `hecd_init::etcd::endpoint_order(identity, count)`, so `first`
/// goes where that order starts.
pub fn endpoints_for(identity: &str, first: &str, others: &[&str]) -> String {
    let mut urls: Vec<&str> = others.iter().copied().filter(|u| *u != first).collect();
    let at = hecd_init::etcd::first_endpoint(identity, urls.len() + 1);
    urls.insert(at, first);
    urls.join(",")
}
