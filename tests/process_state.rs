//! What the app inherits and what hecd-init holds: the signal mask and ignored signals
//! hecd-init was started with, the terminal as controlling terminal, the working directory;
//! and hecd-init idles without waking up.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TempDir, alive, example, start, start_command, stat, status_field, wait_until};

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// Signals a child of this test process starts with ignored (std resets SIGPIPE; the libc may
/// leave its reserved signals ignored): the baseline hecd-init inherits when started plainly.
fn inherited_ignores() -> u64 {
    let out = Command::new("grep")
        .args(["^SigIgn", "/proc/self/status"])
        .output()
        .expect("grep");
    hex_field(&String::from_utf8_lossy(&out.stdout))
}

/// A SigBlk/SigIgn mask from /proc, without the signals the libc reserves for itself
/// (32 up to SIGRTMIN), whose state depends on how the libc forked, not on hecd-init.
fn hex_field(line: &str) -> u64 {
    let mask =
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap_or(""), 16).expect("hex mask");
    let reserved: u64 = (32..libc::SIGRTMIN()).map(bit).sum();
    mask & !reserved
}

#[test]
fn app_starts_with_the_signal_state_hecd_init_was_started_with() {
    let blocked = bit(libc::SIGUSR1) | bit(libc::SIGRTMIN() + 2);
    let ignored = bit(libc::SIGPIPE) | bit(libc::SIGUSR2) | bit(libc::SIGHUP) | inherited_ignores();
    let mut cmd = Command::new(common::hecd_init());
    cmd.args(["grep", "^Sig[BI]", "/proc/self/status"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigaddset(&mut set, libc::SIGRTMIN() + 2);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in [libc::SIGPIPE, libc::SIGUSR2, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let mut h = start_command(cmd);
    let blk = h.expect_line("SigBlk");
    let ign = h.expect_line("SigIgn");
    assert_eq!(h.expect_exit(), 0);
    assert_eq!(hex_field(&blk), blocked, "{blk}");
    assert_eq!(hex_field(&ign), ignored, "{ign}");
}

#[test]
fn app_starts_with_default_signal_state_in_the_usual_case() {
    let mut h = start(["grep", "^Sig[BI]", "/proc/self/status"]);
    let blk = h.expect_line("SigBlk");
    let ign = h.expect_line("SigIgn");
    assert_eq!(hex_field(&blk), 0, "{blk}");
    assert_eq!(
        hex_field(&ign),
        inherited_ignores(),
        "SIGPIPE must not be left ignored: {ign}"
    );
    assert_eq!(h.expect_exit(), 0);
}

#[test]
fn init_moves_to_root_and_app_keeps_its_directory() {
    let dir = TempDir::new("cwd");
    let mut cmd = Command::new(common::hecd_init());
    cmd.args(["sleep", "60"]).current_dir(&dir.0);
    let mut h = start_command(cmd);
    let app = h.app_pid();
    let cwd = |pid: i32| std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    assert!(
        wait_until(Duration::from_secs(5), || cwd(h.pid()) == Some("/".into())),
        "{:?}",
        cwd(h.pid())
    );
    assert_eq!(cwd(app), Some(dir.0.clone()));
}

#[test]
fn idle_init_does_not_wake_up() {
    let mut h = start(["sleep", "60"]);
    h.app_pid();
    // Let start-up finish, then watch for 2 s: no CPU ticks, no wake-ups (no polling tick).
    std::thread::sleep(Duration::from_millis(300));
    let switches =
        |pid| status_field(pid, "voluntary_ctxt_switches").and_then(|v| v.parse::<u64>().ok());
    let ticks = |pid| stat(pid).map(|s| s.utime + s.stime);
    let (s0, t0) = (switches(h.pid()), ticks(h.pid()));
    std::thread::sleep(Duration::from_secs(2));
    let (s1, t1) = (switches(h.pid()), ticks(h.pid()));
    assert_eq!(s1, s0, "hecd-init woke up while idle");
    assert!(
        t1.unwrap() - t0.unwrap() <= 1,
        "hecd-init used CPU while idle: {t0:?} → {t1:?}"
    );
    assert!(alive(h.pid()));
}

/// Opens a pseudo-terminal; returns (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    let p = nix::pty::openpty(None, None).expect("openpty");
    (p.master, p.slave)
}

/// Runs hecd-init as a session leader whose controlling terminal is a new pty, as
/// `docker run -t` does, and returns the guard and the pty master.
fn start_on_tty(args: &[&str]) -> (common::Hecd, std::fs::File) {
    let (master, slave) = pty();
    let mut cmd = Command::new(common::hecd_init());
    cmd.args(args);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()));
    let slave_fd = slave.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            libc::dup2(slave_fd, 1);
            Ok(())
        });
    }
    // start_command pipes stdout; the pre_exec above points it at the pty instead.
    let h = start_command_keep_stdin(cmd);
    drop(slave);
    (h, std::fs::File::from(master))
}

fn start_command_keep_stdin(cmd: Command) -> common::Hecd {
    common::start_command_with_stdin(cmd)
}

fn read_until(master: &mut std::fs::File, needle: &str) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 1024];
    let done = wait_until(Duration::from_secs(10), || {
        match master.read(&mut buf) {
            Ok(n) if n > 0 => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => return true,
        }
        out.contains(needle)
    });
    assert!(
        done && out.contains(needle),
        "no {needle:?} on the terminal; got {out:?}"
    );
    out
}

#[test]
fn app_gets_the_terminal_as_controlling_terminal() {
    let (mut h, mut master) = start_on_tty(&["sh", "-c", "cat /proc/$$/stat; echo END; sleep 60"]);
    let out = read_until(&mut master, "END");
    let line = out.lines().find(|l| l.contains(") ")).expect("stat line");
    let rest: Vec<&str> = line[line.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let (pid, pgrp, session, tty_nr, tpgid): (i32, i32, i32, i64, i32) = (
        line.split_whitespace().next().unwrap().parse().unwrap(),
        rest[2].parse().unwrap(),
        rest[3].parse().unwrap(),
        rest[4].parse().unwrap(),
        rest[5].parse().unwrap(),
    );
    h.track(pid);
    assert_eq!(
        (pgrp, session),
        (pid, pid),
        "the app leads its own session and group"
    );
    assert_ne!(tty_nr, 0, "the app has a controlling terminal");
    assert_eq!(
        tpgid, pid,
        "the app's group is the terminal's foreground group"
    );
    assert_eq!(
        stat(h.pid()).unwrap().tty_nr,
        0,
        "hecd-init gave the terminal up"
    );
}

#[test]
fn terminal_hand_off_signals_are_not_passed_on() {
    // Giving up the terminal as session leader makes the kernel send SIGHUP and SIGCONT to
    // hecd-init; passing that SIGHUP on would hang the app up (dumb-init #136).
    let printer = example("print_signals");
    let (mut h, mut master) = start_on_tty(&[printer.to_str().unwrap()]);
    let out = read_until(&mut master, "ready");
    let pid: i32 = out
        .split("ready ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    h.track(pid);
    h.signal(libc::SIGUSR1);
    let out = read_until(&mut master, "10");
    let after_ready: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(after_ready, ["10"], "only USR1 may reach the app");
    // A later SIGHUP is a real one and is passed on.
    h.signal(libc::SIGHUP);
    read_until(&mut master, "1\r\n");
}
