//! Issue 9: behaviours checked the way dumb-init's own tests check them (a signal printer,
//! process states from /proc/PID/stat, a real pseudo-terminal): `--single-child` is dumb-init's
//! `-c` (no new session, job-control signals passed on as themselves, then hecd-init stops
//! itself), and a pure init is silent at the default log level.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{example, start, stat, wait_until};

fn printer() -> String {
    example("print_signals").to_string_lossy().into_owned()
}

fn stopped(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state == 'T')
}

#[test]
fn issue_9_single_child_keeps_the_app_in_the_init_session_and_group() {
    let mut h = start(["--single-child", "--", &printer()]);
    let app = h.expect_ready();
    let (init, child) = (stat(h.pid()).unwrap(), stat(app).unwrap());
    assert_eq!(child.session, init.session, "no new session");
    assert_eq!(child.pgrp, init.pgrp, "no new process group");
    drop(h);
    // The default mode starts a session of its own, led by the app.
    let mut h = start(["--", &printer()]);
    let app = h.expect_ready();
    let child = stat(app).unwrap();
    assert_eq!((child.session, child.pgrp), (app, app));
}

#[test]
fn issue_9_single_child_passes_job_control_signals_as_themselves() {
    for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
        let mut h = start(["--single-child", "--", &printer()]);
        let app = h.expect_ready();
        h.signal(sig);
        assert_eq!(h.expect_line("the job-control signal"), sig.to_string());
        assert!(
            wait_until(Duration::from_secs(5), || stopped(h.pid())),
            "signal {sig}: hecd-init should stop itself"
        );
        assert!(
            !stopped(app),
            "signal {sig}: the app handles it, nothing stops it"
        );
        h.signal(libc::SIGCONT);
        assert!(
            wait_until(Duration::from_secs(5), || !stopped(h.pid())),
            "signal {sig}: SIGCONT resumes hecd-init"
        );
        assert_eq!(h.expect_line("SIGCONT"), libc::SIGCONT.to_string());
    }
}

#[test]
fn issue_9_default_mode_turns_job_control_signals_into_sigstop() {
    // The contrast: in its own session the app's group is orphaned, so SIGTSTP goes on as
    // SIGSTOP (the printer never sees it, and is stopped).
    let mut h = start(["--", &printer()]);
    let app = h.expect_ready();
    h.signal(libc::SIGTSTP);
    assert!(
        wait_until(Duration::from_secs(5), || stopped(app) && stopped(h.pid())),
        "both stop"
    );
    h.signal(libc::SIGCONT);
    assert!(wait_until(Duration::from_secs(5), || !stopped(app)));
    assert_eq!(h.expect_line("SIGCONT"), libc::SIGCONT.to_string());
}

/// Runs `hecd-init ARGS` with stdout and stderr on a new pseudo-terminal (as `docker run -t`
/// without stdin) and returns everything the terminal showed until hecd-init exited.
fn terminal_output(args: &[&str]) -> String {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave = pty.slave.as_raw_fd();
    let mut cmd = Command::new(common::hecd_init());
    cmd.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(slave, 1);
            libc::dup2(slave, 2);
            Ok(())
        });
    }
    let mut h = common::start_command(cmd);
    assert_eq!(h.expect_exit(), 0);
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    // After the last writer closes, reading the master ends with EIO.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    out
}

#[test]
fn issue_9_pure_init_prints_nothing_of_its_own() {
    let app = ["--", "sh", "-c", "printf '3\\n2\\n1\\n'"];
    assert_eq!(terminal_output(&app), "3\r\n2\r\n1\r\n");
    // -v brings the start and exit lines back.
    let mut verbose = vec!["-v"];
    verbose.extend(app);
    let out = terminal_output(&verbose);
    assert!(out.contains("hecd-init: started"), "{out:?}");
    assert!(out.contains("exited with status 0"), "{out:?}");
}

/// README's comparison table, the signal rows, checked against Debian's tini and dumb-init:
/// a real-time signal sent to the init reaches the app with all three; a fault signal
/// (SIGSEGV) sent from outside reaches the app with hecd-init and dumb-init, while tini dies of
/// it and leaves the app running.
#[test]
fn the_comparison_tables_signal_rows_hold() {
    let hecd = common::hecd_init().to_string_lossy().into_owned();
    let inits: [(&str, Vec<&str>); 3] = [
        ("hecd-init", vec![hecd.as_str(), "--"]),
        ("tini", vec!["tini", "-s", "--"]),
        ("dumb-init", vec!["dumb-init"]),
    ];
    for (name, command) in &inits {
        for (sig, reaches_app) in [(40, true), (libc::SIGSEGV, *name != "tini")] {
            let mut child = Command::new(command[0])
                .args(&command[1..])
                .args(["sleep", "30"])
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("{name} (apt-get install tini dumb-init): {e}"));
            let init = child.id() as i32;
            assert!(wait_until(Duration::from_secs(5), || !common::children(
                init
            )
            .is_empty()));
            let app = common::children(init)[0];
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(init, sig) };
            let gone = wait_until(Duration::from_secs(3), || !common::alive(app));
            // Whatever happened, nothing is left running.
            // SAFETY: as above.
            unsafe {
                libc::kill(app, libc::SIGKILL);
                libc::kill(-init, libc::SIGKILL);
            }
            let _ = child.wait();
            assert_eq!(
                gone, reaches_app,
                "{name}: signal {sig} reached the app: {gone}"
            );
        }
    }
}
