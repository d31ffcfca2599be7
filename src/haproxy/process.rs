//! The HAProxy master as a process hecd-haproxy owns: its config checked (`haproxy -c`),
//! started in master-worker mode, reloaded, signalled, and reaped through the project's own
//! reaper ([`crate::supervisor::reap::reap_watching`], which decodes a death by any signal,
//! real-time ones included). [`Deaths`] decides, purely, whether a master that ended by itself is started
//! again or whether hecd-haproxy gives up so that its orchestrator restarts it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Runtime;
use crate::sys::Ended;

/// The variables that carry etcd credentials. HAProxy never gets them: its admin socket's
/// `show env`, a Lua script or a `${VAR}` in a config would hand them to whoever reads those.
pub const SECRET_VARIABLES: &[&str] = &[
    "HECD_ETCD_PASSWORD",
    "HECD_ETCD_USER",
    "HECD_ETCD_PASSWORD_FILE",
];

/// Deaths within [`DEATH_WINDOW`] after which hecd-haproxy gives up.
pub const MAX_DEATHS: usize = 5;
pub const DEATH_WINDOW: Duration = Duration::from_secs(60);

/// How long a started master has to open its admin socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// What to do about a master that ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again (this is death number `n` within the window).
    Restart(usize),
    /// Too many deaths within the window: exit so the orchestrator restarts everything.
    GiveUp,
}

/// The recent deaths of the master.
#[derive(Debug, Default)]
pub struct Deaths(VecDeque<Instant>);

impl Deaths {
    /// Records a death at `now` and says what to do.
    pub fn record(&mut self, now: Instant) -> Verdict {
        while self
            .0
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= DEATH_WINDOW)
        {
            self.0.pop_front();
        }
        self.0.push_back(now);
        if self.0.len() >= MAX_DEATHS {
            Verdict::GiveUp
        } else {
            Verdict::Restart(self.0.len())
        }
    }
}

/// The HAProxy binary and the files of one `--dir`.
pub struct Process {
    binary: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    /// The master's pid while it runs.
    pid: Option<i32>,
}

impl Process {
    pub fn new(binary: &Path, config: &Path, socket: &Path) -> Self {
        Self {
            binary: binary.to_owned(),
            config: config.to_owned(),
            socket: socket.to_owned(),
            pid: None,
        }
    }

    /// The master's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        for name in SECRET_VARIABLES {
            command.env_remove(name);
        }
        command.stdin(Stdio::null());
        command
    }

    /// `haproxy -c`: the config must be valid before HAProxy gets it. The error carries
    /// HAProxy's `[ALERT]` lines.
    pub fn check(&self) -> Result<(), String> {
        let out = self
            .command()
            .args(["-c", "-f"])
            .arg(&self.config)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out.stderr);
        // HAProxy's reason is in its [ALERT] lines; its [NOTICE] lines only say which HAProxy.
        let alerts: Vec<&str> = text.lines().filter(|l| l.contains("[ALERT]")).collect();
        let lines: Vec<&str> = if alerts.is_empty() {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .take(5)
                .collect()
        } else {
            alerts.into_iter().take(3).collect()
        };
        Err(format!(
            "{} -c rejects {}: {}",
            self.binary.display(),
            self.config.display(),
            lines.join(" / ")
        ))
    }

    /// Starts the master (`-W`, in the foreground, in its own process group so a terminal's
    /// Ctrl-C reaches hecd-haproxy, which passes it on; SIGTERM when hecd-haproxy dies) and
    /// waits (bounded) until its worker answers on the admin socket. Its stdout and stderr
    /// are ours.
    pub fn start(&mut self, runtime: &Runtime) -> Result<i32, String> {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(runtime.path());
        let mut command = self.command();
        command
            .arg("-W")
            .arg("-f")
            .arg(&self.config)
            .process_group(0);
        // SIGKILLed (or crashed), hecd-haproxy takes HAProxy with it: SIGTERM to the master,
        // which stops its workers; nothing is left serving a backend that no one keeps up to
        // date. (The signal follows the thread that started it: always the main thread.)
        crate::sys::die_with_parent(&mut command, nix::sys::signal::Signal::SIGTERM);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        // Reaped by `reap`, not through `Child`.
        let pid = i32::try_from(child.id()).map_err(|_| "HAProxy's pid is out of range")?;
        self.pid = Some(pid);
        let deadline = Instant::now() + SOCKET_WAIT;
        loop {
            match runtime.command("show info") {
                Ok(answer) if answer.contains("Pid:") => return Ok(pid),
                _ if Instant::now() > deadline => {
                    self.signal(libc::SIGTERM);
                    return Err(format!(
                        "HAProxy (master pid {pid}) did not open its admin socket within {} s",
                        SOCKET_WAIT.as_secs()
                    ));
                }
                _ => {
                    if let Some(ended) = self.reap() {
                        return Err(format!(
                            "HAProxy {} at start",
                            crate::supervisor::reap::describe(ended)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Reloads: the master starts new workers with the config file as it is now.
    pub fn reload(&self) {
        self.signal(libc::SIGUSR2);
    }

    /// Stops the master: `gracefully` (SIGUSR1: listeners close, open connections finish) or
    /// at once (SIGTERM).
    pub fn stop(&self, gracefully: bool) {
        self.signal(if gracefully {
            libc::SIGUSR1
        } else {
            libc::SIGTERM
        });
    }

    /// Sends `sig` to the master, if it runs.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid {
            let _ = crate::sys::send_signal(pid, sig);
        }
    }

    /// Reaps every child that ended (the master, and any worker or check re-parented to
    /// hecd-haproxy); returns how the master ended if it was among them.
    pub fn reap(&mut self) -> Option<Ended> {
        let ended = crate::supervisor::reap::reap_watching(self.pid)?;
        self.pid = None;
        Some(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_deaths_within_a_minute_give_up() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Deaths::default();
        assert_eq!(d.record(t0), Verdict::Restart(1));
        assert_eq!(d.record(t0 + s(10)), Verdict::Restart(2));
        assert_eq!(d.record(t0 + s(20)), Verdict::Restart(3));
        assert_eq!(d.record(t0 + s(30)), Verdict::Restart(4));
        assert_eq!(d.record(t0 + s(40)), Verdict::GiveUp);
    }

    #[test]
    fn deaths_older_than_a_minute_do_not_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Deaths::default();
        assert_eq!(d.record(t0), Verdict::Restart(1));
        assert_eq!(d.record(t0 + s(20)), Verdict::Restart(2));
        assert_eq!(d.record(t0 + s(40)), Verdict::Restart(3));
        // By t0 + 80, the deaths at t0 and t0 + 20 are a minute old: two in the window.
        assert_eq!(d.record(t0 + s(80)), Verdict::Restart(2));
        // One a day, forever: never more than one in the window.
        let mut d = Deaths::default();
        for day in 0..100 {
            assert_eq!(d.record(t0 + s(day * 86_400)), Verdict::Restart(1));
        }
    }
}
