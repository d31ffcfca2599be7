//! hecd-init: parse → check the files options name → run → exit status; besides that only
//! the process-wide set-up that must come first, in this order: the signal state recorded,
//! every signal blocked, not dumpable, the credentials scrubbed from its environment and
//! command line. Its own C `main` (`#![no_main]`, see [`hecd_init::entry`]): std's start-up
//! would ignore SIGPIPE and install SIGSEGV/SIGBUS handlers before hecd-init could record the
//! signal state the app must inherit. Linux only.
#![cfg_attr(not(test), no_main)] // unit tests keep the test harness's own main
#![deny(unsafe_code)]

use hecd_init::entry::{Program, Spans};
use hecd_init::{cli, config, exit, logging, registrar, supervisor, sys, user};
use std::ffi::OsString;

const ME: Program = Program("hecd-init");

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
    // First, before anything can change it: the signal state the app must inherit.
    let inherited = match sys::InheritedSignals::capture() {
        Ok(i) => i,
        Err(e) => {
            ME.say(&format!("cannot read the signal mask: {e}"));
            return exit::FAILED;
        }
    };
    // Block every signal at once (the supervisor reads them from a signalfd later): a usage
    // error written to a closed stderr then raises a SIGPIPE that waits, instead of killing
    // hecd-init before it can exit with status 2.
    if let Err(e) = sys::block_all_signals() {
        ME.say(&format!("cannot block signals: {e}"));
        return exit::FAILED;
    }
    // Nobody without CAP_SYS_PTRACE (the app included, even as root) may ptrace hecd-init or
    // read its memory, where the etcd credentials will be.
    if let Err(e) = sys::make_not_dumpable() {
        ME.say(&format!("cannot make hecd-init not dumpable: {e}"));
        return exit::FAILED;
    }
    let raw = match config::parse(args, |name| std::env::var_os(name)) {
        Ok(cli::Request::Run(raw)) => raw,
        Ok(cli::Request::Help) => return ME.print(&config::help_text()),
        Ok(cli::Request::Version) => return ME.print(&config::version_text()),
        Err(e) => return ME.usage([e]),
    };
    let password_spans = raw.password_spans();
    let extra = config::Extra {
        password: std::env::var("HECD_ETCD_PASSWORD").ok(),
        log: std::env::var("HECD_LOG").ok(),
    };
    let mut config = match config::build(raw, extra) {
        Ok(c) => c,
        Err(errors) => return ME.usage(errors),
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
        return ME.usage(problems);
    }
    // Everything is read: overwrite the passwords where /proc/<pid>/environ and /cmdline show
    // them, before any thread starts. The app's environment is built from what is left.
    hecd_init::access::scrub_credentials();
    scrub_args(password_spans);
    logging::init(&config.log_filter);
    // On the registrar threads a panic ends only that thread (they catch it); the supervisor
    // has no code that can panic, and should it ever, hecd-init exits with status 1.
    ME.guarded(|| supervisor::run(config, &inherited, plan, identity))
}
