//! Test app: prints `ready <pid>` once it catches signals, then the number of every signal it
//! receives, one per line (dumb-init's print_signals). With a path argument it also creates
//! that file when ready, so a parent shell can wait for it. Every catchable signal is blocked
//! and read from a signalfd, so none of them ends or stops it: tests stop it with SIGKILL.

use std::io::Write;

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::signalfd::SignalFd;

fn main() {
    let all = SigSet::all();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None).expect("block signals");
    let fd = SignalFd::new(&all).expect("signalfd");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", std::process::id()).expect("stdout");
    out.flush().expect("stdout");
    if let Some(path) = std::env::args().nth(1) {
        std::fs::write(path, b"ready\n").expect("ready file");
    }
    loop {
        if let Ok(Some(info)) = fd.read_signal() {
            // Ignore a closed stdout: the test may have stopped reading.
            let _ = writeln!(out, "{}", info.ssi_signo).and_then(|()| out.flush());
        }
    }
}
