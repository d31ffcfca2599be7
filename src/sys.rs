//! Every `unsafe` block and raw syscall of hecd-init: the signal mask and dispositions, the
//! signalfd-friendly blocking, the child's pre-exec setup, TTY hand-off, raw `kill` and `waitpid`.
//! Callers get safe functions with plain types; nothing here decides policy (which signal goes
//! where, when to reap): that belongs to `supervisor`.
#![allow(unsafe_code)] // the one module allowed to hold unsafe code (STYLE §4)

use std::ffi::c_int;
#[cfg(not(test))]
use std::ffi::{CStr, OsString, c_char};
use std::io;
#[cfg(not(test))]
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow};

/// Highest signal number the kernel delivers (SIGRTMAX, 64 on Linux).
pub fn max_signal() -> c_int {
    libc::SIGRTMAX()
}

/// Lowest real-time signal number usable by applications under this libc.
pub fn rt_min() -> c_int {
    libc::SIGRTMIN()
}

/// Converts the C `main` arguments into owned strings, skipping `argv[0]`.
#[cfg(not(test))]
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings, as the C runtime guarantees for
/// the arguments of `main`.
pub unsafe fn args_from_c(argc: c_int, argv: *const *const c_char) -> Vec<OsString> {
    let count = usize::try_from(argc).unwrap_or(0);
    (1..count)
        .filter_map(|i| {
            // SAFETY: i < argc, and the caller guarantees argv has argc valid entries.
            let ptr = unsafe { *argv.add(i) };
            if ptr.is_null() {
                return None;
            }
            // SAFETY: each non-null entry is a NUL-terminated string owned by the C runtime.
            let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes().to_vec();
            Some(OsString::from_vec(bytes))
        })
        .collect()
}

/// The signal state hecd-init was started with, which the app must start with too.
#[derive(Clone, Debug)]
pub struct InheritedSignals {
    mask: SigSet,
    ignored: Vec<c_int>,
}

impl InheritedSignals {
    /// Reads the current mask and the set of ignored signals. Must run before anything changes
    /// them (hecd-init uses its own `main`, so the Rust runtime does not ignore SIGPIPE first).
    pub fn capture() -> io::Result<Self> {
        let mut mask = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, None, Some(&mut mask))?;
        let mut ignored = Vec::new();
        for sig in 1..=max_signal() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: a zeroed sigaction is a valid out-parameter; a null `act` only queries.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: querying the disposition of a valid signal number with a valid pointer.
            let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
            // EINVAL: a signal reserved by the libc (e.g. musl's 32-34); nothing to restore.
            if rc == 0 && old.sa_sigaction == libc::SIG_IGN {
                ignored.push(sig);
            }
        }
        Ok(Self { mask, ignored })
    }
}

/// Blocks every catchable signal in the calling thread (and in threads it starts later), so
/// they queue for the signalfd. Blocked signals are queued even when ignored and even for PID 1
/// in a PID namespace, which the kernel otherwise shields from signals it has no handler for.
/// Blocking also keeps hecd-init from being stopped by SIGTTIN/SIGTTOU from its terminal: the
/// kernel treats a blocked SIGTTOU as ignored and lets the write through.
pub fn block_all_signals() -> io::Result<SigSet> {
    let all = SigSet::all();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None)?;
    Ok(all)
}

/// Sets SIGCHLD to its default action. Started with SIGCHLD ignored (or SA_NOCLDWAIT), the
/// kernel would reap our children itself and the app's exit status would be lost; the app
/// still gets the inherited disposition back (see [`prepare_child`]).
pub fn make_sigchld_default() -> io::Result<()> {
    // SAFETY: installing SIG_DFL with no flags is always valid.
    let old = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    if old == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `sig` to `pid` (a negative pid names a process group). `Ok(false)` when no such
/// process or group exists any more (ESRCH), which is normal while things exit.
pub fn send_signal(pid: i32, sig: c_int) -> io::Result<bool> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::ESRCH => Ok(false),
        e => Err(e.into()),
    }
}

/// Stops hecd-init itself (job control): SIGSTOP cannot be blocked. The kernel drops it for
/// PID 1 of a PID namespace, where stopping the init makes no sense anyway.
pub fn stop_self() -> io::Result<()> {
    // SAFETY: kill on our own pid has no memory-safety preconditions.
    if unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How a reaped process ended, decoded from the raw `waitpid` status. Kept raw (not nix's
/// `WaitStatus`) so deaths by real-time signals decode too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Reaps one terminated child without blocking. `None` when no child has ended (or none is left).
pub fn reap_one() -> io::Result<Option<(i32, Ended)>> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: status is a valid out-pointer; WNOHANG makes this non-blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            let ended = if libc::WIFEXITED(status) {
                Ended::Exited(libc::WEXITSTATUS(status))
            } else {
                Ended::Signaled(libc::WTERMSIG(status))
            };
            return Ok(Some((pid, ended)));
        }
        if pid == 0 {
            return Ok(None);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            // ECHILD: no children at all, so nothing to reap.
            Errno::ECHILD => return Ok(None),
            e => return Err(e.into()),
        }
    }
}

/// Whether a process group still has members (zombies count until reaped).
pub fn group_exists(pgid: i32) -> io::Result<bool> {
    send_signal(-pgid, 0)
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Gives up our controlling terminal so the app's new session can take it (TIOCNOTTY).
/// Returns true when it was ours to give up. When a session leader does this the kernel sends
/// SIGHUP and SIGCONT to its foreground group, i.e. to hecd-init (dumb-init #136).
pub fn release_controlling_tty() -> bool {
    // SAFETY: TIOCNOTTY takes no argument; failure (ENOTTY: not our terminal) is reported.
    unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCNOTTY) == 0 }
}

/// Arranges for the child, between fork and exec: a new session (and so its own process
/// group) unless `Session::Shared`, the terminal on stdin as controlling terminal when `take_tty`, and the signal mask
/// and ignored signals hecd-init was started with (the std runtime clears the mask and resets
/// SIGPIPE before this runs, so both are set back here).
pub fn prepare_child(
    command: &mut Command,
    inherited: &InheritedSignals,
    session: crate::supervisor::spawn::Session,
) {
    use crate::supervisor::spawn::Session;
    let mask = inherited.mask;
    let ignored = inherited.ignored.clone();
    let (new_session, take_tty) = match session {
        Session::New { take_tty } => (true, take_tty),
        Session::Shared => (false, false),
    };
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: we are in the forked child.
        // SAFETY: setsid has no preconditions; a fresh child is never a group leader.
        if new_session && unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        if take_tty {
            // SAFETY: TIOCSCTTY with arg 0 never steals a terminal held by another session.
            // Failure (EPERM: it still belongs to hecd-init's session) leaves the app without
            // a controlling terminal, as under dumb-init; it is not a reason to fail the exec.
            unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) };
        }
        for &sig in &ignored {
            // SAFETY: setting SIG_IGN for a signal that was ignored at start.
            unsafe { libc::signal(sig, libc::SIG_IGN) };
        }
        // SAFETY: mask.as_ref() points to a valid sigset_t for the duration of the call.
        let rc = unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, mask.as_ref(), std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    };
    // SAFETY: the hook only calls async-signal-safe functions (setsid, ioctl, signal,
    // pthread_sigmask) and allocates nothing.
    unsafe { command.pre_exec(hook) };
}

/// Arranges for the child to get `sig` when the thread that spawns it ends (hecd-haproxy's
/// main thread: the process), so HAProxy never outlives a SIGKILLed hecd-haproxy. If the parent
/// is already gone when the child starts, the child exits at once.
pub fn die_with_parent(command: &mut Command, sig: c_int) {
    let parent = std::process::id() as libc::pid_t;
    let hook = move || -> io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number; async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            // SAFETY: _exit ends the forked child without running any handler.
            unsafe { libc::_exit(1) };
        }
        Ok(())
    };
    // SAFETY: the hook only calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe { command.pre_exec(hook) };
}
