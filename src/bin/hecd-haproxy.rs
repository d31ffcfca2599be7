//! hecd-haproxy: the consumer stage of the HECD recipe (see `hecd_init::consumer`).
//! Parse → check the files named by options → run → exit status.
//!
//! Its own C `main` (`#![no_main]`), like hecd-init's: the etcd password given on the command
//! line is overwritten where `/proc/<pid>/cmdline` shows it, which needs the C runtime's own
//! `argv` (std keeps only a copy). Linux only.
#![cfg_attr(not(test), no_main)]
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;

use hecd_init::consumer::{self, config};
use hecd_init::registrar::plan;
use hecd_init::{logging, sys};

/// The process entry point, called by the C runtime with the real argv.
#[cfg(not(test))]
#[allow(unsafe_code)] // `no_mangle` exports the symbol; see the module comment for why.
#[unsafe(no_mangle)]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // std's runtime would ignore SIGPIPE before `main`: do the same, so a write to a closed
    // pipe is an error, not the end (HAProxy's socket, stderr). HAProxy gets it back at its
    // default: std resets it in every child it spawns.
    if let Err(e) = sys::ignore_sigpipe() {
        say(&format!("cannot ignore SIGPIPE: {e}"));
        return 1;
    }
    // SAFETY: the C runtime passes `argc` valid NUL-terminated strings in `argv`.
    let args = unsafe { sys::args_from_c(argc, argv) };
    // SAFETY: argv is main's own and stays put; `run` calls this before starting any thread.
    let scrub_args = |spans| unsafe { sys::scrub_args(argc, argv, spans) };
    std::ffi::c_int::from(run(&args, scrub_args))
}

#[cfg_attr(test, allow(dead_code, reason = "called only from the C main"))]
fn run(args: &[OsString], scrub_args: impl FnOnce(Vec<(usize, std::ops::Range<usize>)>)) -> u8 {
    // Nobody without CAP_SYS_PTRACE may ptrace hecd-haproxy or read its memory, where the
    // etcd credentials will be.
    if let Err(e) = sys::make_not_dumpable() {
        say(&format!("cannot make hecd-haproxy not dumpable: {e}"));
        return consumer::status::SETUP;
    }
    let config = match config::parse(args, |name| std::env::var_os(name)) {
        Ok(config::Parsed::Run(c)) => *c,
        Ok(config::Parsed::Help) => return print_stdout(&config::help_text()),
        Ok(config::Parsed::Version) => return print_stdout(&config::version_text()),
        Err(errors) => {
            for e in errors {
                say(&e.to_string());
            }
            return consumer::status::USAGE;
        }
    };
    let mut config = config;
    let access = &config.access;
    let tls = match plan::access(
        &config.endpoints,
        access.cacert.as_deref(),
        access.cert.as_deref(),
        access.key.as_deref(),
        access.password_file.as_deref(),
    ) {
        Ok((tls, password)) => {
            if let (Some(p), Some(creds)) = (password, &mut config.access.credentials) {
                creds.password = Some(p);
            }
            tls
        }
        Err(errors) => {
            for e in errors {
                say(&e.to_string());
            }
            return consumer::status::USAGE;
        }
    };
    // Everything is read: overwrite the passwords where /proc/<pid>/environ and /cmdline show
    // them, before any thread starts.
    plan::scrub_credentials();
    scrub_args(std::mem::take(&mut config.password_spans));
    logging::init_as("hecd-haproxy", &config.log_filter);
    std::panic::set_hook(Box::new(|info| {
        say(&format!("error: internal error, please report: {info}"));
    }));
    let run = std::panic::AssertUnwindSafe(|| consumer::run(config, tls));
    let status = std::panic::catch_unwind(run).unwrap_or(consumer::status::SETUP);
    logging::flush(std::time::Duration::from_secs(1));
    status
}

/// One `hecd-haproxy: ` line on stderr; a closed stderr drops it.
fn say(message: &str) {
    let line = format!("hecd-haproxy: {message}\n");
    let _dropped = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg_attr(test, allow(dead_code, reason = "called only from the C main"))]
fn print_stdout(text: &str) -> u8 {
    let mut out = std::io::stdout().lock();
    // Without std's runtime nothing flushes stdout at exit, so flush here.
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => consumer::status::OK,
        Err(_) => consumer::status::SETUP,
    }
}
