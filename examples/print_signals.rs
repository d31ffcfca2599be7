//! Test app: prints `ready <pid>` once it catches signals, then the number of every signal it
//! receives, one per line (dumb-init's print_signals). With a path argument it also creates
//! that file when ready, so a parent shell can wait for it. Every signal number, 1 to 64, is
//! blocked and read from a signalfd, so none of them ends or stops it: tests stop it with
//! SIGKILL. The mask and the signalfd are set with raw system calls, because the C library's
//! `sigset_t` functions leave out 32 to 34 (its own), and tests must see those arrive too.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

/// Every signal number, as the kernel's 8-byte set.
const ALL: u64 = u64::MAX;

fn main() {
    // SAFETY: rt_sigprocmask reads 8 bytes from a valid pointer; no old set is asked for.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &ALL as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    assert_eq!(rc, 0, "block signals: {}", std::io::Error::last_os_error());
    // SAFETY: signalfd4 with fd -1 creates a descriptor; the mask is 8 valid bytes.
    let fd = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &ALL as *const u64, 8usize, 0) };
    assert!(fd >= 0, "signalfd: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor we just created and own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut file = std::fs::File::from(fd);
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", std::process::id()).expect("stdout");
    out.flush().expect("stdout");
    if let Some(path) = std::env::args().nth(1) {
        std::fs::write(path, b"ready\n").expect("ready file");
    }
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    loop {
        use std::io::Read;
        if file.read_exact(&mut info).is_ok() {
            // ssi_signo is the first field: a u32 in native byte order.
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            // Ignore a closed stdout: the test may have stopped reading.
            let _ = writeln!(out, "{signo}").and_then(|()| out.flush());
        }
    }
}
