//! Exit statuses: the app's code, 128+N for signal deaths, 126/127 for exec failures, 2 for
//! usage errors (with the option named), and never a panic.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{TempDir, start};

fn exit_of(args: &[&str]) -> (i32, String) {
    let mut h = start(args);
    let code = h.expect_exit();
    let err = h.stderr_final();
    assert!(!err.contains("panicked"), "hecd-init panicked:\n{err}");
    (code, err)
}

#[test]
fn passes_the_app_exit_code_through() {
    for code in [0, 1, 3, 42, 255] {
        let script = format!("exit {code}");
        assert_eq!(exit_of(&["--", "sh", "-c", &script]).0, code, "exit {code}");
    }
}

#[test]
fn signal_deaths_become_128_plus_n() {
    assert_eq!(exit_of(&["sh", "-c", "kill -TERM $$"]).0, 143);
    assert_eq!(exit_of(&["sh", "-c", "kill -KILL $$"]).0, 137);
    assert_eq!(exit_of(&["sh", "-c", "kill -SEGV $$"]).0, 139);
    // A real-time signal (SIGRTMAX = 64) decodes too.
    assert_eq!(exit_of(&["sh", "-c", "kill -64 $$"]).0, 128 + 64);
}

#[test]
fn command_not_found_is_127() {
    let (code, err) = exit_of(&["--", "/no/such/program"]);
    assert_eq!(code, 127);
    assert!(
        err.contains(r#"cannot run "/no/such/program": No such file or directory"#),
        "{err}"
    );
    assert_eq!(exit_of(&["no-such-program-in-path"]).0, 127);
}

#[test]
fn command_not_executable_is_126() {
    let dir = TempDir::new("exec");
    let file = dir.0.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = exit_of(&[file.to_str().unwrap()]);
    assert_eq!(code, 126);
    assert!(err.contains("Permission denied"), "{err}");
    // A directory cannot be executed either.
    assert_eq!(exit_of(&[dir.0.to_str().unwrap()]).0, 126);
}

/// An executable file that is not a program (no ELF header, no `#!`): 126 with the static musl
/// build users run (scripts/test runs this file again on it, `TEST_HECD_INIT`); the glibc
/// build of `cargo test` hands such a file to /bin/sh, as glibc's execvp does, so it gets the
/// shell's 127 ("not found"). README's exit-status table says so.
#[test]
fn an_executable_that_is_not_a_program_is_126_with_the_static_build() {
    let dir = TempDir::new("exec");
    let file = dir.0.join("not-a-program");
    std::fs::write(&file, "no-such-command-here\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = exit_of(&[file.to_str().unwrap()]);
    let static_build = std::env::var_os("TEST_HECD_INIT").is_some();
    assert_eq!(code, if static_build { 126 } else { 127 }, "{err}");
}

#[test]
fn usage_errors_exit_2_naming_the_option() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--ttl", "ten", "true"],
            r#"hecd-init: --ttl: expected whole seconds of at least 1, such as 10s, got "ten""#,
        ),
        (
            &["--bogus", "true"],
            "hecd-init: --bogus: unknown option (see --help)",
        ),
        (
            &["--rewrite", "TERM", "true"],
            r#"hecd-init: --rewrite: expected FROM:TO signals such as TERM:QUIT or 15:3, got "TERM""#,
        ),
        (
            &["--stop-timeout"],
            "hecd-init: --stop-timeout: expected DURATION",
        ),
        (
            &[],
            "hecd-init: COMMAND: missing; usage: hecd-init [OPTIONS] [--] COMMAND [ARGS...] (see --help)",
        ),
        (
            &["--"],
            "hecd-init: COMMAND: missing; usage: hecd-init [OPTIONS] [--] COMMAND [ARGS...] (see --help)",
        ),
    ];
    for (args, want) in cases {
        let (code, err) = exit_of(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end(), *want, "{args:?}");
    }
}

/// A file an option names that never ends (`/dev/zero`), never opens (a FIFO with no writer)
/// or is no file (a directory): exit 2 at once, naming the option, with bounded memory; the
/// app never started.
#[test]
fn endless_or_blocking_files_are_usage_errors_at_once() {
    let dir = TempDir::new("files");
    let fifo = dir.0.join("password");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (fifo, dir) = (fifo.to_str().unwrap(), dir.0.to_str().unwrap());
    let marker = format!("{dir}/app-ran");
    let app = format!("touch {marker}");
    let cases: &[(&[&str], String)] = &[
        (
            &[
                "--etcd",
                "https://127.0.0.1:1",
                "--etcd-cacert",
                "/dev/zero",
            ],
            "hecd-init: --etcd-cacert: cannot read /dev/zero: not a regular file".into(),
        ),
        (
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--etcd-user",
                "u",
                "--etcd-password-file",
                fifo,
            ],
            format!("hecd-init: --etcd-password-file: cannot read {fifo}: not a regular file"),
        ),
        (
            &[
                "--etcd",
                "http://127.0.0.1:1",
                "--etcd-cert",
                dir,
                "--etcd-key",
                "/dev/zero",
            ],
            format!(
                "hecd-init: --etcd-cert: cannot read {dir}: not a regular file\n\
                 hecd-init: --etcd-key: cannot read /dev/zero: not a regular file"
            ),
        ),
    ];
    for (args, want) in cases {
        let mut all = args.to_vec();
        all.extend(["sh", "-c", &app]);
        let (code, err) = exit_of(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end(), want, "{args:?}");
        assert!(
            !std::path::Path::new(&marker).exists(),
            "the app ran: {args:?}"
        );
    }
}

#[test]
fn bad_variable_exits_2_naming_the_variable() {
    let mut cmd = std::process::Command::new(common::hecd_init());
    cmd.args(["true"]);
    let mut h = common::start_command({
        let mut c = cmd;
        c.env("HECD_DRAIN", "soon");
        c
    });
    assert_eq!(h.expect_exit(), 2);
    assert_eq!(
        h.stderr_final().trim_end(),
        r#"hecd-init: HECD_DRAIN: expected a duration such as 2s, 500ms or 0 (at most 24h), got "soon""#
    );
}

#[test]
fn several_bad_values_are_all_reported() {
    let (code, err) = exit_of(&["--ttl", "x", "--mode", "y", "true"]);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.contains("--ttl:") && err.contains("--mode:"), "{err}");
}

#[test]
fn help_and_version() {
    let out = std::process::Command::new(common::hecd_init())
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "--etcd",
        "HECD_ETCD",
        "--stop-timeout",
        "--rewrite",
        "--single-child",
        "Exit status",
        "ENTRYPOINT",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    let out = std::process::Command::new(common::hecd_init())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("hecd-init ")
    );
}
