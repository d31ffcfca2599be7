//! Reaping: collects every ended child (the app, and orphans re-parented to hecd-init as PID 1
//! or child subreaper) and maps the app's end to hecd-init's exit status. One SIGCHLD can stand
//! for many exits, so it reaps until nothing is left.

use crate::exit as status;
use crate::signal;
use crate::sys::{self, Ended};

/// Reaps every child that has ended; returns how the app ended if it was among them.
pub fn reap_all(app_pid: i32) -> Option<Ended> {
    let app = reap_watching(Some(app_pid));
    if let Some(ended) = app {
        log::info!("app (pid {app_pid}) {}", describe(ended));
    }
    app
}

/// Reaps every child that has ended (one SIGCHLD can stand for many); returns how `watched`
/// ended if it was among them. The others are logged at debug level. hecd-haproxy reaps its
/// HAProxy master through this too.
pub fn reap_watching(watched: Option<i32>) -> Option<Ended> {
    let mut found = None;
    loop {
        match sys::reap_one() {
            Ok(Some((pid, ended))) if Some(pid) == watched => found = Some(ended),
            Ok(Some((pid, ended))) => log::debug!("reaped pid {pid}, which {}", describe(ended)),
            Ok(None) => return found,
            Err(e) => {
                log::warn!("waitpid failed: {e}");
                return found;
            }
        }
    }
}

/// "exited with status 3" / "was killed by SIGKILL".
pub fn describe(ended: Ended) -> String {
    match ended {
        Ended::Exited(code) => format!("exited with status {code}"),
        Ended::Signaled(sig) => format!("was killed by SIG{}", signal::name(sig)),
    }
}

/// hecd-init's exit status for the app's end: its code, or 128+N for signal N.
pub fn exit_status(ended: Ended) -> u8 {
    match ended {
        // WEXITSTATUS is 0..=255, so the conversion cannot fail.
        Ended::Exited(code) => u8::try_from(code & 0xff).unwrap_or(u8::MAX),
        Ended::Signaled(sig) => {
            status::SIGNAL_BASE.saturating_add(u8::try_from(sig).unwrap_or(u8::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(Ended::Exited(0)), 0);
        assert_eq!(exit_status(Ended::Exited(3)), 3);
        assert_eq!(exit_status(Ended::Exited(255)), 255);
        assert_eq!(exit_status(Ended::Signaled(9)), 137);
        assert_eq!(exit_status(Ended::Signaled(15)), 143);
        assert_eq!(exit_status(Ended::Signaled(64)), 192);
    }
}
