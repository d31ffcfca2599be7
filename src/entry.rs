//! What the entry points of both programs share: their own C `main` (`#![no_main]`: the Rust
//! runtime would change the signal state before the program records it, and hecd-init's app
//! must start with exactly the mask and dispositions hecd-init was started with), the one-line
//! messages before logging is set up, `--help` and `--version` on stdout, the panic hook, and
//! the guard that turns a panic into [`exit::FAILED`]. Each binary keeps only its own order of
//! set-up steps (`src/main.rs`, `src/bin/hecd-haproxy.rs`).

#[cfg(not(test))]
use std::ffi::{OsString, c_char, c_int};
use std::io::Write;
use std::ops::Range;

use crate::exit;

/// Where a password sits in argv (argument index, byte range), to be overwritten.
pub type Spans = Vec<(usize, Range<usize>)>;

/// The part of each program's C `main` after the symbol: argv as `OsString`s and a scrubber
/// of argv for `run`, whose status becomes the exit status.
///
/// # Safety
/// `argc` and `argv` must be what the C runtime passed to `main`: `argc` valid NUL-terminated
/// strings that stay put for the life of the process.
#[cfg(not(test))]
#[allow(unsafe_code)]
pub unsafe fn c_main(
    argc: c_int,
    argv: *const *const c_char,
    run: fn(&[OsString], &mut dyn FnMut(Spans)) -> u8,
) -> c_int {
    // SAFETY: the caller passes main's own argc and argv.
    let args = unsafe { crate::sys::args_from_c(argc, argv) };
    // SAFETY: argv is main's own and stays put; `run` calls this before starting any thread.
    let mut scrub = |spans: Spans| unsafe { crate::sys::scrub_args(argc, argv, spans) };
    c_int::from(run(&args, &mut scrub))
}

/// A program's name on its messages.
#[derive(Clone, Copy, Debug)]
pub struct Program(pub &'static str);

impl Program {
    /// One `NAME: MESSAGE` line on stderr, written directly (before logging is set up, and
    /// from the panic hook). A closed or broken stderr drops it: `eprintln!` would panic.
    pub fn say(self, message: &str) {
        let line = format!("{}: {message}\n", self.0);
        let _dropped = std::io::stderr().lock().write_all(line.as_bytes());
    }

    /// Every line of `errors`, then [`exit::USAGE`].
    pub fn usage<E: std::fmt::Display>(self, errors: impl IntoIterator<Item = E>) -> u8 {
        for e in errors {
            self.say(&e.to_string());
        }
        exit::USAGE
    }

    /// `--help` or `--version`: `text` on stdout, flushed (without std's runtime nothing
    /// flushes it at exit); [`exit::FAILED`] if it cannot be written.
    pub fn print(self, text: &str) -> u8 {
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => exit::OK,
            Err(_) => exit::FAILED,
        }
    }

    /// Runs the program proper: a panic is a bug, reported as one line the operator can find
    /// (the hook), and the program exits [`exit::FAILED`] instead of unwinding into the C
    /// runtime. The log is flushed (bounded) before the status is returned.
    pub fn guarded(self, body: impl FnOnce() -> u8) -> u8 {
        std::panic::set_hook(Box::new(move |info| {
            self.say(&format!("error: internal error, please report: {info}"));
        }));
        let status =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(exit::FAILED);
        crate::logging::flush(std::time::Duration::from_secs(1));
        status
    }
}
