//! Zombie reaping, as child subreaper (not PID 1) and as PID 1 of a PID namespace, and the
//! clean-up of the app's process group when the app exits.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    TempDir, alive, children, example, start, start_command, stat, wait_until, zombie_children,
};

const ORPHANS: usize = 50;

/// A shell that leaves ORPHANS background sleepers behind (each subshell exits at once, so its
/// `sleep` is orphaned and re-parented to the nearest subreaper), says `done`, and waits.
fn orphan_maker(sleep: &str) -> String {
    format!("for i in $(seq {ORPHANS}); do (sleep {sleep} &); done; echo done; exec sleep 60")
}

/// Checks that `init` (hecd-init's pid as seen from here) adopted the orphans and reaped them.
fn assert_adopts_and_reaps(init: i32, app: i32) {
    // Sleepers of 2 s: long enough to be seen as hecd-init's children.
    assert!(
        wait_until(Duration::from_secs(5), || children(init).len() > ORPHANS),
        "orphans were not re-parented to hecd-init: children {:?}",
        children(init)
    );
    // Once they exit, none may stay a zombie.
    let reaped = wait_until(Duration::from_secs(10), || children(init) == vec![app]);
    assert!(
        reaped,
        "left over: {} children, {} zombies",
        children(init).len(),
        zombie_children(init).len()
    );
}

#[test]
fn reaps_orphans_as_subreaper() {
    let mut h = start(["sh", "-c", &orphan_maker("2")]);
    let app = h.app_pid();
    assert_eq!(h.expect_line("done"), "done");
    assert_adopts_and_reaps(h.pid(), app);
}

#[test]
fn reaps_orphans_as_pid_1_in_a_pid_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a PID namespace needs root (scripts/test runs as root in CI)");
        return;
    }
    // unshare forks hecd-init as PID 1 of a new PID namespace (root is needed, as in CI).
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--"]);
    cmd.arg(common::hecd_init());
    // The app checks its own view: hecd-init must be PID 1 in there, and a signal the app sends
    // to PID 1 must come back through it (the kernel shields PID 1 from unhandled signals).
    let script = format!(
        "trap 'echo got-usr1' USR1; [ \"$(cut -d' ' -f1 /proc/1/stat)\" = 1 ] && echo pid1-ok; \
         kill -USR1 1; sleep 1 & wait; {}",
        orphan_maker("2")
    );
    cmd.args(["sh", "-c", &script]);
    let mut h = start_command(cmd);
    assert_eq!(h.expect_line("pid1"), "pid1-ok");
    assert_eq!(
        h.expect_line("usr1"),
        "got-usr1",
        "a signal to PID 1 from inside must be passed on"
    );
    assert_eq!(h.expect_line("done"), "done");
    // unshare's only child is hecd-init; its only child the app.
    let init = children(h.pid())[0];
    let app = children(init)
        .into_iter()
        .find(|p| stat(*p).is_some_and(|s| s.session == *p))
        .expect("app");
    h.track(app);
    assert_adopts_and_reaps(init, app);
}

#[test]
fn app_exit_terminates_its_leftover_group() {
    let dir = TempDir::new("group");
    let ready = dir.0.join("ready");
    let script = format!(
        "{} {} & while [ ! -e {} ]; do sleep 0.02; done; exit 7",
        example("print_signals").display(),
        ready.display(),
        ready.display()
    );
    let started = Instant::now();
    let mut h = start(["sh", "-c", &script]);
    let leftover = h.expect_ready();
    // The app exited 7; the leftover print_signals gets SIGTERM, survives it (it prints
    // signals instead of dying), and is SIGKILLed after the grace period.
    assert_eq!(h.expect_line("TERM to leftover"), "15");
    assert_eq!(
        h.expect_exit(),
        7,
        "exit status is the app's, not the leftover's"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(
        !alive(leftover),
        "the leftover must be gone when hecd-init exits"
    );
}

#[test]
fn app_exit_with_single_child_leaves_the_group_alone() {
    let dir = TempDir::new("group1");
    let ready = dir.0.join("ready");
    let script = format!(
        "{} {} & while [ ! -e {} ]; do sleep 0.02; done; exit 7",
        example("print_signals").display(),
        ready.display(),
        ready.display()
    );
    let mut h = start(["--single-child", "--", "sh", "-c", &script]);
    let leftover = h.expect_ready();
    assert_eq!(h.expect_exit(), 7);
    assert_eq!(
        h.line(Duration::from_millis(300)),
        None,
        "no SIGTERM with --single-child"
    );
    assert!(alive(leftover));
}
