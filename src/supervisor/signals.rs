//! What each received signal means for the supervisor (stop, job control, forward, reap, or
//! raised by hecd-init itself), and the forwarder that passes signals on. The one side effect
//! here is `Forwarder::forward`, which sends a signal to the app and never blocks.

use std::io;

use crate::signal::{Rewrites, name};
use crate::sys;

/// Whether a signal read from the signalfd was raised by hecd-init on itself: sent with the
/// sender's pid equal to ours. That is the kernel's SIGPIPE for a write to a pipe whose reader
/// has gone (`send_sig` records the writing process as the sender, `SI_USER`), and anything
/// hecd-init might send itself. Nobody else has our pid, so a signal from outside (from another
/// process, or from the kernel on the behalf of a sender outside our PID namespace, pid 0)
/// never matches.
pub fn raised_by_self(info: &libc::signalfd_siginfo, own_pid: u32) -> bool {
    const SI_USER: i32 = 0;
    const SI_TKILL: i32 = -6;
    info.ssi_pid == own_pid && matches!(info.ssi_code, SI_USER | SI_TKILL)
}

/// What a received signal asks of the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// SIGCHLD: reap.
    Reap,
    /// SIGTERM or SIGINT: run the stop sequence.
    Stop,
    /// SIGTSTP, SIGTTIN, SIGTTOU: pass on, then stop ourselves (dumb-init's job control).
    Suspend,
    /// Anything else: pass on at once.
    Forward,
}

/// Classifies a signal received by hecd-init (always by its original number, before rewrite).
pub fn meaning(sig: i32) -> Meaning {
    match sig {
        libc::SIGCHLD => Meaning::Reap,
        libc::SIGTERM | libc::SIGINT => Meaning::Stop,
        libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Meaning::Suspend,
        _ => Meaning::Forward,
    }
}

/// Sends signals to the app: to its whole process group, or only to the direct child with
/// `--single-child`, after applying `--rewrite`.
#[derive(Debug)]
pub struct Forwarder {
    pub pid: i32,
    pub single_child: bool,
    pub rewrites: Rewrites,
}

impl Forwarder {
    /// Passes `received` on (rewritten). Logs instead of failing: after the spawn, only the
    /// app's end ends hecd-init.
    pub fn forward(&self, received: i32) {
        let sig = self.rewrites.map(received);
        if sig == 0 {
            log::debug!("not passing on SIG{} (--rewrite to 0)", name(received));
            return;
        }
        let (target, what) = if self.single_child {
            (self.pid, "pid")
        } else {
            (-self.pid, "process group")
        };
        match sys::send_signal(target, sig) {
            Ok(true) => log::debug!("passed SIG{} on to {what} {}", name(sig), self.pid),
            // ESRCH: the app (or its whole group) is already gone; its exit is being reaped.
            Ok(false) => log::debug!("SIG{}: {what} {} is gone", name(sig), self.pid),
            Err(e) => log::warn!(
                "cannot pass SIG{} on to {what} {}: {e}",
                name(sig),
                self.pid
            ),
        }
    }

    /// Sends `sig` to what is left of the app's process group, without rewriting.
    pub fn signal_group(&self, sig: i32) -> io::Result<bool> {
        sys::send_signal(-self.pid, sig)
    }

    /// SIGKILLs the app: its group, or only the child with `--single-child`.
    pub fn kill_app(&self) {
        let target = if self.single_child {
            self.pid
        } else {
            -self.pid
        };
        if let Err(e) = sys::send_signal(target, libc::SIGKILL) {
            log::warn!("cannot SIGKILL {}: {e}", self.pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meanings() {
        assert_eq!(meaning(libc::SIGCHLD), Meaning::Reap);
        assert_eq!(meaning(libc::SIGTERM), Meaning::Stop);
        assert_eq!(meaning(libc::SIGINT), Meaning::Stop);
        assert_eq!(meaning(libc::SIGTSTP), Meaning::Suspend);
        assert_eq!(meaning(libc::SIGSEGV), Meaning::Forward);
        assert_eq!(meaning(sys::RTMIN), Meaning::Forward);
    }
}
