//! Every `unsafe` block and raw syscall of hecd-init: the signal mask and dispositions, the
//! signalfd-friendly blocking, the child's pre-exec setup, TTY hand-off, raw `kill` and `waitpid`.
//! Callers get safe functions with plain types; nothing here decides policy (which signal goes
//! where, when to reap): that belongs to `supervisor`.
//!
//! nix or std serve where they have a form (the terminal test, `setsid`, the parent's pid,
//! `PR_SET_NO_NEW_PRIVS`, `PR_SET_DUMPABLE`, `PR_SET_PDEATHSIG`). Raw calls stay where they
//! have none that fits: the signal mask and dispositions and the signalfd take the kernel's
//! 8-byte set, since the C libraries hide the signals 32 to 34 from theirs; `TIOCNOTTY` and
//! `TIOCSCTTY` have no nix wrapper outside its ioctl macros; `setgroups`, `setresgid` and
//! `setresuid` run in the forked child as plain system calls (the C libraries' wrappers
//! synchronise every thread of the process, glibc's setxid broadcast and musl's `__synccall`,
//! which the forked child of a threaded process must not rely on); `waitpid` decodes deaths by
//! real-time signals, which nix's `WaitStatus` cannot hold.
#![allow(unsafe_code)] // the one module allowed to hold unsafe code (STYLE §4)

#[cfg(not(test))]
use std::ffi::OsString;
use std::ffi::c_int;
use std::ffi::{CStr, c_char};
use std::io;
#[cfg(not(test))]
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;

/// Highest signal number the kernel delivers (SIGRTMAX, 64 on Linux).
pub const MAX_SIGNAL: c_int = 64;

/// The number called `RTMIN` in signal names, as glibc, bash, Go and Docker number it (34).
/// The kernel's real-time range starts at 32; glibc keeps 32 and 33 for itself and musl 32 to
/// 34, so a libc's own `SIGRTMIN()` differs between builds. Names must not: `docker kill
/// --signal RTMIN` sends 34 whatever libc hecd-init was built with.
pub const RTMIN: c_int = 34;

/// The kernel's signal set: bit N-1 for signal N, 1 to 64 (8 bytes on x86_64 and aarch64).
/// The masks here go to the kernel through raw system calls with this type, never through the
/// C library's `sigset_t` functions: musl's `sigfillset` leaves out 32 to 34 and glibc's 32 and
/// 33, and both strip them from a mask they are given, so a mask built with them lets those
/// signal numbers kill hecd-init (issue 19).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSigSet(pub u64);

impl KernelSigSet {
    /// Every signal number, 1 to 64 (the kernel ignores SIGKILL and SIGSTOP in a mask).
    pub const ALL: KernelSigSet = KernelSigSet(u64::MAX);
}

/// Size of [`KernelSigSet`] as the kernel's `sigsetsize` argument.
const SIGSET_SIZE: usize = std::mem::size_of::<KernelSigSet>();

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the raw signal calls in sys.rs are written for x86_64 and aarch64 Linux");

/// The kernel's `struct sigaction` on x86_64 and aarch64 (both define SA_RESTORER), as
/// `rt_sigaction` reads and writes it: unlike the C libraries' wrappers, it takes 32 to 34.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: KernelSigSet,
}

/// `rt_sigprocmask(how, set, old)` on the calling thread, with the kernel's 8-byte set.
fn raw_sigprocmask(how: c_int, set: Option<&KernelSigSet>) -> io::Result<KernelSigSet> {
    let mut old = KernelSigSet::default();
    let new = set.map_or(std::ptr::null(), |s| s as *const KernelSigSet);
    // SAFETY: `new` is null or points to 8 valid bytes, `old` to 8 writable bytes; the
    // kernel reads and writes exactly SIGSET_SIZE bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            new,
            &mut old as *mut KernelSigSet,
            SIGSET_SIZE,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
}

/// `rt_sigaction(sig, act, old)` with the kernel's structure; async-signal-safe.
fn raw_sigaction(sig: c_int, act: Option<&KernelSigaction>) -> io::Result<KernelSigaction> {
    let mut old = KernelSigaction::default();
    let new = act.map_or(std::ptr::null(), |a| a as *const KernelSigaction);
    // SAFETY: `new` is null or a valid kernel sigaction, `old` is writable and of the same
    // layout; sigsetsize is the kernel's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            new,
            &mut old as *mut KernelSigaction,
            SIGSET_SIZE,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(old)
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
    mask: KernelSigSet,
    ignored: Vec<c_int>,
}

impl InheritedSignals {
    /// Reads the current mask and the set of ignored signals, 32 to 34 included (read from the
    /// kernel, not through the C library, which hides them). Must run before anything changes
    /// them (hecd-init uses its own `main`, so the Rust runtime does not ignore SIGPIPE first).
    pub fn capture() -> io::Result<Self> {
        let mask = raw_sigprocmask(libc::SIG_BLOCK, None)?;
        let mut ignored = Vec::new();
        for sig in 1..=MAX_SIGNAL {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if raw_sigaction(sig, None)?.handler == libc::SIG_IGN {
                ignored.push(sig);
            }
        }
        Ok(Self { mask, ignored })
    }

    /// The mask hecd-init was started with.
    pub fn mask(&self) -> KernelSigSet {
        self.mask
    }

    /// The signals hecd-init was started with ignored.
    pub fn ignored(&self) -> &[c_int] {
        &self.ignored
    }
}

/// Blocks every signal number, 1 to 64, in the calling thread (and in threads it starts
/// later), so they queue for the signalfd. Blocked signals are queued even when ignored and
/// even for PID 1 in a PID namespace, which the kernel otherwise shields from signals it has no
/// handler for. Blocking also keeps hecd-init from being stopped by SIGTTIN/SIGTTOU from its
/// terminal: the kernel treats a blocked SIGTTOU as ignored and lets the write through.
///
/// 32 to 34 are blocked too: the C libraries keep them for their own threads (cancellation,
/// `setuid` across threads, timers), and hecd-init uses none of that: it never cancels a
/// thread, never changes its own credentials (the app's are changed in the forked child, by
/// raw system calls) and makes no timers, so nothing in it waits for those signals.
pub fn block_all_signals() -> io::Result<()> {
    raw_sigprocmask(libc::SIG_SETMASK, Some(&KernelSigSet::ALL)).map(|_| ())
}

/// Starts a thread named `name` running `f` with every signal number blocked, in it and still
/// in the caller. musl keeps the creator's mask for a new thread, so in the release binary this
/// is an ordinary spawn. glibc unblocks 32 and 33 (its own) in every new thread, and in the
/// creating thread on its first `pthread_create`; one thread with them unblocked lets either
/// number, sent to the process, kill it. So both masks are set again, here. Under glibc the
/// numbers are unblocked for an instant, and ureq's name-lookup helper threads (host-name
/// endpoints) keep them unblocked: only the musl build is immune without exception (README,
/// "Limitations").
pub fn spawn_thread<F, T>(name: &str, f: F) -> io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            reblock_signals();
            f()
        })?;
    reblock_signals();
    Ok(handle)
}

/// [`block_all_signals`], logged instead of returned (it fails only on a kernel without
/// `rt_sigprocmask`, and the thread must run anyway).
fn reblock_signals() {
    if let Err(e) = block_all_signals() {
        log::warn!("cannot block signals: {e}");
    }
}

/// Makes the signalfd `fd` read every signal number, 1 to 64: nix's `SigSet` (the C library's
/// `sigset_t`) cannot hold 32 to 34, so the set is replaced through `signalfd4` itself.
pub fn signalfd_read_all(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: signalfd4 on an existing signalfd replaces its mask, read from 8 valid bytes;
    // the flags are the ones it was created with (ignored for an existing descriptor).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            fd.as_raw_fd(),
            &KernelSigSet::ALL as *const KernelSigSet,
            SIGSET_SIZE,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Ignores SIGPIPE, as std's runtime does before a Rust `main` (hecd-haproxy has its own C
/// `main`): a write to a closed pipe or socket is then an EPIPE error.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: installing SIG_IGN with no flags is always valid.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR {
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
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// Gives up our controlling terminal so the app's new session can take it (TIOCNOTTY).
/// Returns true when it was ours to give up. When a session leader does this the kernel sends
/// SIGHUP and SIGCONT to its foreground group, i.e. to hecd-init (dumb-init #136).
pub fn release_controlling_tty() -> bool {
    // SAFETY: TIOCNOTTY takes no argument; failure (ENOTTY: not our terminal) is reported.
    unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCNOTTY) == 0 }
}

/// Who the app runs as (`--user`), resolved before the spawn: set in the forked child, so
/// hecd-init itself keeps its own credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// The complete supplementary group list (`setgroups`), never hecd-init's own.
    pub groups: Vec<u32>,
}

/// What the child sets up between fork and exec, as plain values (the supervisor decides them).
#[derive(Clone, Debug)]
pub struct ChildSetup {
    /// `setsid`: a session and process group of its own.
    pub new_session: bool,
    /// Take the terminal on stdin as controlling terminal (only with `new_session`).
    pub take_tty: bool,
    /// The signal mask to start with (hecd-init's own at start).
    pub mask: KernelSigSet,
    /// Signals to start with ignored (those hecd-init was started with ignored).
    pub ignored: Vec<c_int>,
    /// Switch to this user before the exec.
    pub identity: Option<Identity>,
    /// Set the no-new-privileges bit: setuid binaries and file capabilities grant nothing.
    pub no_new_privileges: bool,
}

/// Arranges for the child, between fork and exec, what [`ChildSetup`] says. The std runtime
/// clears the mask and resets SIGPIPE before this runs, so both are set back here, last (a
/// mask blocking everything would otherwise hold the signals our own calls could raise).
/// Every call is a raw system call: the C libraries' `setuid` family broadcasts to threads
/// with the signals 32 to 34, which must not matter to hecd-init (see [`block_all_signals`]).
pub fn prepare_child(command: &mut Command, setup: ChildSetup) {
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: we are in the forked child, and nothing
        // allocates (the group list was built before the fork).
        // A fresh child is never a group leader, so this succeeds.
        if setup.new_session {
            nix::unistd::setsid()?;
        }
        if setup.take_tty {
            // SAFETY: TIOCSCTTY with arg 0 never steals a terminal held by another session.
            // Failure (EPERM: it still belongs to hecd-init's session) leaves the app without
            // a controlling terminal, as under dumb-init; it is not a reason to fail the exec.
            unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) };
        }
        let ignore = KernelSigaction {
            handler: libc::SIG_IGN,
            ..KernelSigaction::default()
        };
        for &sig in &setup.ignored {
            raw_sigaction(sig, Some(&ignore))?;
        }
        if setup.no_new_privileges {
            nix::sys::prctl::set_no_new_privs()?;
        }
        if let Some(id) = &setup.identity {
            switch_user(id)?;
        }
        raw_sigprocmask(libc::SIG_SETMASK, Some(&setup.mask))?;
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (setsid, ioctl, rt_sigaction,
    // prctl, setgroups, setresgid, setresuid, rt_sigprocmask) and allocates nothing.
    unsafe { command.pre_exec(hook) };
}

/// Groups first, then the group, then the user (after `setresuid` nothing else may be changed),
/// real, effective and saved ids all at once so there is no way back; each call checked.
fn switch_user(id: &Identity) -> io::Result<()> {
    // SAFETY: `groups` points to `len` valid gid_t (u32) values for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            id.groups.len(),
            id.groups.as_ptr() as *const libc::gid_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setresgid and setresuid take plain integers.
    if unsafe { libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes this process not dumpable: a process without CAP_SYS_PTRACE (the app, even as root
/// under Docker's default capabilities) can neither ptrace it nor read its memory through
/// `/proc/<pid>/mem`, and no core dump is written. The app is not affected: `execve` makes the
/// new program dumpable again.
pub fn make_not_dumpable() -> io::Result<()> {
    Ok(nix::sys::prctl::set_dumpable(false)?)
}

unsafe extern "C" {
    /// The C library's environment array (POSIX `environ`), whose strings the kernel placed in
    /// the area `/proc/<pid>/environ` shows.
    static mut environ: *const *mut c_char;
}

/// Overwrites, in the process's own environment strings, the value of every variable named
/// `name` (all of it, or from its first `:` on when `after_colon`: `USER:PASSWORD` → `USER`), with
/// NUL bytes. What `/proc/<pid>/environ` shows is those very bytes, so the secret is gone from
/// there; the C library sees the value cut short, so read it before. Returns how many bytes
/// were overwritten.
pub fn scrub_env_value(name: &str, after_colon: bool) -> usize {
    let mut scrubbed = 0;
    // SAFETY: `environ` is the C library's NULL-terminated array of NUL-terminated strings,
    // set up before main; hecd-init never calls setenv or putenv, and no other thread runs yet
    // (main calls this before starting any), so the array and strings stay put meanwhile. The
    // strings are writable (they live in the process's own stack area, like argv).
    unsafe {
        let mut entry = environ;
        if entry.is_null() {
            return 0;
        }
        while !(*entry).is_null() {
            scrubbed += scrub_c_string(*entry, name, after_colon);
            entry = entry.add(1);
        }
    }
    scrubbed
}

/// Overwrites bytes `range` of argument `index` (as given to the C `main`, 0 = program name)
/// with NUL bytes, so `/proc/<pid>/cmdline` no longer shows them. Out-of-range requests do
/// nothing. Returns how many bytes were overwritten.
///
/// # Safety
/// `argv` must be the `argv` the C runtime passed to `main` with `argc` entries, not yet freed
/// or moved, and no other thread may read those strings meanwhile.
pub unsafe fn scrub_arg(
    argc: c_int,
    argv: *const *const c_char,
    index: usize,
    range: std::ops::Range<usize>,
) -> usize {
    if index >= usize::try_from(argc).unwrap_or(0) || argv.is_null() {
        return 0;
    }
    // SAFETY: index < argc, so the entry is valid (the caller's guarantee).
    let ptr = unsafe { *argv.add(index) } as *mut c_char;
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: a valid NUL-terminated string; only bytes before its NUL are written.
    let len = unsafe { CStr::from_ptr(ptr) }.to_bytes().len();
    let end = range.end.min(len);
    let mut written = 0;
    for i in range.start..end {
        // SAFETY: i < len, inside the string; argv strings are writable (C11 5.1.2.2.1).
        unsafe { *ptr.add(i) = 0 };
        written += 1;
    }
    written
}

/// [`scrub_arg`] for each span `(word, range)` that `cli::RawArgs::password_spans` found in the
/// arguments without the program name (word i is `argv[i + 1]`).
///
/// # Safety
/// As for [`scrub_arg`].
pub unsafe fn scrub_args(
    argc: c_int,
    argv: *const *const c_char,
    spans: Vec<(usize, std::ops::Range<usize>)>,
) {
    for (word, range) in spans {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { scrub_arg(argc, argv, word + 1, range) };
    }
}

/// Scrubs one `NAME=VALUE` C string in place if its name is `name`; see [`scrub_env_value`].
///
/// # Safety
/// `s` must be a valid, writable, NUL-terminated string.
unsafe fn scrub_c_string(s: *mut c_char, name: &str, after_colon: bool) -> usize {
    // SAFETY: the caller guarantees a valid NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
    let Some(value) = bytes
        .strip_prefix(name.as_bytes())
        .and_then(|rest| rest.strip_prefix(b"="))
    else {
        return 0;
    };
    let start = bytes.len() - value.len();
    let from = if after_colon {
        // From the colon on, so what is left reads `USER`, as the app is told.
        match value.iter().position(|&b| b == b':') {
            Some(colon) => start + colon,
            None => return 0,
        }
    } else {
        start
    };
    let len = bytes.len();
    for i in from..len {
        // SAFETY: i < len, inside the string the caller says is writable.
        unsafe { *s.add(i) = 0 };
    }
    len - from
}

/// Arranges for the child to get `sig` when the thread that spawns it ends (hecd-haproxy's
/// main thread: the process), so HAProxy never outlives a SIGKILLed hecd-haproxy. If the parent
/// is already gone when the child starts, the child exits at once.
pub fn die_with_parent(command: &mut Command, sig: nix::sys::signal::Signal) {
    let parent = std::process::id();
    let hook = move || -> io::Result<()> {
        nix::sys::prctl::set_pdeathsig(sig)?;
        if std::os::unix::process::parent_id() != parent {
            // SAFETY: _exit ends the forked child without running any handler.
            unsafe { libc::_exit(1) };
        }
        Ok(())
    };
    // SAFETY: the hook only calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe { command.pre_exec(hook) };
}
