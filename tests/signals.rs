//! Signal forwarding: every catchable signal reaches the app (including the fault signals sent
//! from outside and real-time signals), to its whole process group unless --single-child,
//! rewritten by --rewrite; job-control signals suspend hecd-init as dumb-init does.

mod common;

use std::time::Duration;

use common::{alive, example, start, stat, wait_until};

const QUIET: Duration = Duration::from_millis(500);

fn printer() -> String {
    example("print_signals").to_string_lossy().into_owned()
}

#[test]
fn every_catchable_signal_reaches_the_app() {
    let mut h = start([printer()]);
    h.expect_ready();
    let rt_min = libc::SIGRTMIN();
    let rt_max = libc::SIGRTMAX();
    let mut sigs = vec![
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGUSR1,
        libc::SIGSEGV,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGSTKFLT,
        libc::SIGCONT,
        libc::SIGURG,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGWINCH,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGSYS,
        rt_min,
        rt_min + 5,
        rt_max,
    ];
    // Stop signals last: without --etcd they are passed on at once, and the app keeps running.
    sigs.extend([libc::SIGINT, libc::SIGTERM]);
    for sig in sigs {
        h.signal(sig);
        assert_eq!(
            h.expect_line(&format!("signal {sig}")),
            sig.to_string(),
            "signal {sig}"
        );
    }
    assert!(
        alive(h.pid()),
        "hecd-init must outlive signals its app survives"
    );
}

/// Issue 19: the numbers the C libraries keep for themselves (32 and 33 for glibc, 32 to 34 for
/// musl; 34 is `SIGRTMIN` to glibc, bash, Go and Docker) and the rest of the real-time range.
const RESERVED_AND_RT: [i32; 6] = [32, 33, 34, 35, 40, 64];

/// Sends each of [`RESERVED_AND_RT`] to `init` (hecd-init's pid as seen from here) and checks
/// that `h`'s app prints it and hecd-init lives on.
fn each_number_reaches_the_app(h: &mut common::Hecd, init: i32) {
    for sig in RESERVED_AND_RT {
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(init, sig) }, 0, "kill({init}, {sig})");
        let line = h.line(Duration::from_secs(5));
        assert!(
            alive(init) && stat(init).is_some_and(|s| s.state != 'Z'),
            "signal {sig} killed hecd-init; stderr:\n{}",
            h.stderr()
        );
        assert_eq!(
            line.as_deref(),
            Some(sig.to_string().as_str()),
            "signal {sig}"
        );
    }
}

#[test]
fn issue_19_no_signal_number_kills_hecd_init_and_every_one_reaches_the_app() {
    let mut h = start([printer()]);
    h.expect_ready();
    let init = h.pid();
    each_number_reaches_the_app(&mut h, init);
}

#[test]
fn issue_19_no_signal_number_kills_hecd_init_as_pid_1() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a PID namespace needs root (scripts/test runs as root in CI)");
        return;
    }
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(common::hecd_init())
        .arg(printer());
    let mut h = common::start_command(cmd);
    // `ready <pid>` names the app's pid inside the namespace: track it by its pid out here.
    let ready = h.expect_line("ready");
    assert!(ready.starts_with("ready "), "{ready}");
    // unshare's only child is hecd-init, PID 1 in there; its only child the app.
    let init = common::children(h.pid())[0];
    let app = common::children(init)[0];
    h.track(app);
    each_number_reaches_the_app(&mut h, init);
}

#[test]
fn real_time_signals_are_queued_not_merged() {
    let mut h = start([printer()]);
    h.expect_ready();
    let sig = libc::SIGRTMIN() + 1;
    for _ in 0..5 {
        h.signal(sig);
    }
    for i in 0..5 {
        assert_eq!(h.expect_line(&format!("rt #{i}")), sig.to_string());
    }
}

#[test]
fn rewrite_changes_or_drops_the_signal() {
    let mut h = start([
        "--rewrite",
        "USR1:USR2",
        "--rewrite",
        "HUP:0",
        "--rewrite",
        "TERM:QUIT",
        "--",
        &printer(),
    ]);
    h.expect_ready();
    h.signal(libc::SIGUSR1);
    assert_eq!(h.expect_line("USR1→USR2"), libc::SIGUSR2.to_string());
    h.signal(libc::SIGHUP);
    assert_eq!(h.line(QUIET), None, "HUP:0 must drop SIGHUP");
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_line("TERM→QUIT"), libc::SIGQUIT.to_string());
}

/// `sh` as the app with print_signals as its child in the same process group.
fn shell_with_grandchild(extra: &[&str]) -> (common::Hecd, i32, i32) {
    let script = format!("{} & wait", printer());
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(["--".into(), "sh".into(), "-c".into(), script]);
    let mut h = start(&args);
    let app = h.app_pid();
    let grandchild = h.expect_ready();
    // The app's own group, or with --single-child hecd-init's, which the app shares.
    assert_eq!(
        stat(grandchild).unwrap().pgrp,
        stat(app).unwrap().pgrp,
        "grandchild shares the app's group"
    );
    (h, app, grandchild)
}

#[test]
fn sigterm_reaches_a_grandchild_in_the_group() {
    let (mut h, _app, grandchild) = shell_with_grandchild(&[]);
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_line("grandchild TERM"), "15");
    // sh died of SIGTERM; hecd-init exits 143 once the leftover grandchild is cleared out.
    assert_eq!(h.expect_exit(), 143);
    assert!(
        !alive(grandchild),
        "nothing of the app's group may outlive it"
    );
}

#[test]
fn single_child_signals_only_the_direct_child() {
    let (mut h, app, grandchild) = shell_with_grandchild(&["--single-child"]);
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 143, "sh dies of SIGTERM");
    assert!(!alive(app));
    assert_eq!(h.line(QUIET), None, "the grandchild must not get SIGTERM");
    assert!(alive(grandchild), "--single-child leaves the group alone");
    // Prove the grandchild still listens, so the silence above means something.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(grandchild, libc::SIGUSR1) };
    assert_eq!(h.expect_line("grandchild USR1"), libc::SIGUSR1.to_string());
}

#[test]
fn stop_timeout_kills_an_app_that_ignores_sigterm() {
    let mut h = start([
        "--stop-timeout",
        "1",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready; exec sleep 60",
    ]);
    assert_eq!(h.expect_line("ready"), "ready");
    let started = std::time::Instant::now();
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 137, "SIGKILLed after --stop-timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "killed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "killed too late: {took:?}");
}

#[test]
fn without_stop_timeout_an_app_that_ignores_sigterm_keeps_running() {
    let mut h = start(["sh", "-c", "trap '' TERM; echo ready; exec sleep 60"]);
    assert_eq!(h.expect_line("ready"), "ready");
    let app = h.app_pid();
    h.signal(libc::SIGTERM);
    assert!(
        h.wait(Duration::from_millis(1500)).is_none(),
        "hecd-init must wait for the app"
    );
    assert!(alive(app));
}

#[test]
fn job_control_signals_suspend_app_and_init() {
    for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
        let mut h = start(["sleep", "60"]);
        let app = h.app_pid();
        h.signal(sig);
        let stopped = |p: i32| stat(p).is_some_and(|s| s.state == 'T');
        assert!(
            wait_until(Duration::from_secs(5), || stopped(app) && stopped(h.pid())),
            "signal {sig}: both should stop"
        );
        h.signal(libc::SIGCONT);
        assert!(
            wait_until(Duration::from_secs(5), || !stopped(app)
                && !stopped(h.pid())),
            "signal {sig}: SIGCONT should resume both"
        );
    }
}
