//! hecd-init: parse → check the files options name → run → exit status; besides that only
//! the process-wide set-up that must come first (its own C `main`, not dumpable, the
//! credentials scrubbed from its environment and command line, the panic hook).
//!
//! hecd-init provides its own C `main` (`#![no_main]`) so that the Rust runtime does not change
//! the signal state before hecd-init records it: std's start-up would ignore SIGPIPE and install
//! SIGSEGV/SIGBUS handlers, and the app must start with exactly the mask and dispositions
//! hecd-init was started with. Linux only.
#![cfg_attr(not(test), no_main)] // unit tests keep the test harness's own main
#![deny(unsafe_code)]

use hecd_init::{cli, config, error, logging, registrar, supervisor, sys, user};
use std::ffi::OsString;
use std::io::Write;

use error::status;

/// The process entry point, called by the C runtime with the real argv.
#[cfg(not(test))]
#[allow(unsafe_code)] // `no_mangle` exports the symbol; see the module comment for why.
#[unsafe(no_mangle)]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // SAFETY: the C runtime passes `argc` valid NUL-terminated strings in `argv`.
    let args = unsafe { sys::args_from_c(argc, argv) };
    // SAFETY: argv is main's own and stays put; `run` calls this before starting any thread.
    let scrub_args = |spans| unsafe { sys::scrub_args(argc, argv, spans) };
    std::ffi::c_int::from(run(&args, scrub_args))
}

#[cfg_attr(test, allow(dead_code, reason = "called only from the C main"))]
fn run(args: &[OsString], scrub_args: impl FnOnce(Vec<(usize, std::ops::Range<usize>)>)) -> u8 {
    // First, before anything can change it: the signal state the app must inherit.
    let inherited = match sys::InheritedSignals::capture() {
        Ok(i) => i,
        Err(e) => {
            say(&format!("cannot read the signal mask: {e}"));
            return status::INTERNAL;
        }
    };
    // Block every signal at once (the supervisor reads them from a signalfd later): a usage
    // error written to a closed stderr then raises a SIGPIPE that waits, instead of killing
    // hecd-init before it can exit with status 2.
    if let Err(e) = sys::block_all_signals() {
        say(&format!("cannot block signals: {e}"));
        return status::INTERNAL;
    }
    // Nobody without CAP_SYS_PTRACE (the app included, even as root) may ptrace hecd-init or
    // read its memory, where the etcd credentials will be.
    if let Err(e) = sys::make_not_dumpable() {
        say(&format!("cannot make hecd-init not dumpable: {e}"));
        return status::INTERNAL;
    }
    let raw = match config::parse(args, |name| std::env::var_os(name)) {
        Ok(cli::Request::Run(raw)) => raw,
        Ok(cli::Request::Help) => return print_stdout(&config::help_text()),
        Ok(cli::Request::Version) => return print_stdout(&config::version_text()),
        Err(e) => {
            say(&e.to_string());
            return status::USAGE;
        }
    };
    let password_spans = raw.password_spans();
    let extra = config::Extra {
        password: std::env::var("HECD_ETCD_PASSWORD").ok(),
        log: std::env::var("HECD_LOG").ok(),
    };
    let mut config = match config::build(raw, extra) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                say(&e.to_string());
            }
            return status::USAGE;
        }
    };
    // Every file the options name is read now, and every problem reported before exiting.
    let mut problems = Vec::new();
    let plan = config
        .registration
        .clone()
        .map(registrar::plan)
        .transpose()
        .map_err(|e| problems.extend(e))
        .ok()
        .flatten();
    let identity = match &config.user {
        None => None,
        Some((spec, source)) => match user::resolve(spec, source) {
            Ok(resolved) => {
                let home = std::env::var("HOME").ok();
                if let Some(home) = user::app_home(home.as_deref(), &resolved) {
                    config.app_env.push(("HOME".to_owned(), Some(home)));
                }
                Some(resolved.identity)
            }
            Err(e) => {
                problems.push(e);
                None
            }
        },
    };
    if !problems.is_empty() {
        for e in problems {
            say(&e.to_string());
        }
        return status::USAGE;
    }
    // Everything is read: overwrite the passwords where /proc/<pid>/environ and /cmdline show
    // them, before any thread starts. The app's environment is built from what is left.
    registrar::plan::scrub_credentials();
    scrub_args(password_spans);
    logging::init(&config.log_filter);
    // A panic is a bug: one line the operator can find. On the registrar threads it ends only
    // that thread (they catch it); the supervisor has no code that can panic, and should it
    // ever, hecd-init exits with status 1 instead of unwinding into the C runtime.
    std::panic::set_hook(Box::new(|info| {
        say(&format!("error: internal error, please report: {info}"));
    }));
    let supervise =
        std::panic::AssertUnwindSafe(|| supervisor::run(config, &inherited, plan, identity));
    let status = std::panic::catch_unwind(supervise).unwrap_or(status::INTERNAL);
    logging::flush(std::time::Duration::from_secs(1));
    status
}

/// One `hecd-init: ` line on stderr, written directly (before logging is set up, and from the
/// panic hook). A closed or broken stderr drops it: `eprintln!` would panic instead.
fn say(message: &str) {
    let line = format!("hecd-init: {message}\n");
    let _dropped = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg_attr(test, allow(dead_code, reason = "called only from the C main"))]
fn print_stdout(text: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    // Without std's runtime nothing flushes stdout at exit, so flush here.
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => status::INTERNAL,
    }
}
