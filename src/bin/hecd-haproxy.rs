//! hecd-haproxy: the consumer stage of the HECD recipe (see `hecd_init::consumer`).
//! Parse → check the files named by options → run → exit status.
//!
//! Its own C `main` (`#![no_main]`, see [`hecd_init::entry`]), like hecd-init's: the etcd
//! password given on the command line is overwritten where `/proc/<pid>/cmdline` shows it,
//! which needs the C runtime's own `argv` (std keeps only a copy). Linux only.
#![cfg_attr(not(test), no_main)]
#![deny(unsafe_code)]

use std::ffi::OsString;

use hecd_init::access;
use hecd_init::consumer::{self, config};
use hecd_init::entry::{Program, Spans};
use hecd_init::{exit, logging, sys};

const ME: Program = Program("hecd-haproxy");

/// The process entry point, called by the C runtime with the real argv.
#[cfg(not(test))]
#[allow(unsafe_code)] // `no_mangle` exports the symbol; see the module comment for why.
#[unsafe(no_mangle)]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // SAFETY: the C runtime's own argc and argv.
    unsafe { hecd_init::entry::c_main(argc, argv, run) }
}

#[cfg_attr(test, allow(dead_code, reason = "called only from the C main"))]
fn run(args: &[OsString], scrub_args: &mut dyn FnMut(Spans)) -> u8 {
    // std's runtime would ignore SIGPIPE before `main`: do the same, so a write to a closed
    // pipe is an error, not the end (HAProxy's socket, stderr). HAProxy gets it back at its
    // default: std resets it in every child it spawns.
    if let Err(e) = sys::ignore_sigpipe() {
        ME.say(&format!("cannot ignore SIGPIPE: {e}"));
        return exit::FAILED;
    }
    // Nobody without CAP_SYS_PTRACE may ptrace hecd-haproxy or read its memory, where the
    // etcd credentials will be.
    if let Err(e) = sys::make_not_dumpable() {
        ME.say(&format!("cannot make hecd-haproxy not dumpable: {e}"));
        return exit::FAILED;
    }
    let config = match config::parse(args, |name| std::env::var_os(name)) {
        Ok(config::Parsed::Run(c)) => *c,
        Ok(config::Parsed::Help) => return ME.print(&config::help_text()),
        Ok(config::Parsed::Version) => return ME.print(&config::version_text()),
        Err(errors) => return ME.usage(errors),
    };
    let mut config = config;
    let tls = match access::load(&config.endpoints, &mut config.access) {
        Ok(tls) => tls,
        Err(errors) => return ME.usage(errors),
    };
    // Everything is read: overwrite the passwords where /proc/<pid>/environ and /cmdline show
    // them, before any thread starts.
    access::scrub_credentials();
    scrub_args(std::mem::take(&mut config.password_spans));
    logging::init_as("hecd-haproxy", &config.log_filter);
    ME.guarded(|| consumer::run(config, tls))
}
