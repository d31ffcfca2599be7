//! Least privilege (issue 16): the app runs as `--user`, cannot reach what hecd-init holds (the
//! etcd password, a root-only socket such as docker.sock, hecd-init's memory), inherits no
//! descriptor of hecd-init's, and neither it nor HAProxy finds the password in hecd-init's or
//! hecd-haproxy's `/proc` entries. Real etcd with authentication; the app is the `privileges`
//! example, which tries each thing and prints what happened.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::Duration;

use common::etcd::Etcd;
use common::lb::Lb;
use common::{Hecd, TempDir, example, hecd_init, key, start_command, wait_until};

const PASSWORD: &str = "pw-9f3c1e-secret";

/// Variables given to hecd-init.
type Env<'a> = &'a [(&'a str, &'a str)];

/// One run of a table: hecd-init's options, its variables, and what is expected.
type Case<'a> = (&'a [&'a str], Env<'a>, &'a str);

fn privileges() -> String {
    example("privileges").to_string_lossy().into_owned()
}

/// Runs `hecd-init ARGS -- privileges CHECKS` with `env`, returns its handle. hecd-init starts
/// with descriptors 0, 1 and 2 only (whatever the test runner holds is closed), plus `extra_fd`
/// open on /dev/null when given, as something hecd-init inherited and must pass on.
fn run_with_fds(
    args: &[&str],
    env: &[(&str, &str)],
    checks: &[&str],
    extra_fd: Option<i32>,
) -> Hecd {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(hecd_init());
    cmd.args(args)
        .arg("--")
        .arg(privileges())
        .args(checks)
        .envs(env.iter().copied());
    let null = std::fs::File::open("/dev/null").unwrap();
    let null_fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    // SAFETY: only async-signal-safe calls (dup, close_range, dup2, close) between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            let keep = libc::dup(null_fd);
            if keep < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = extra_fd {
                if libc::dup2(keep, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close_range(3, (fd - 1) as u32, 0);
                libc::close_range((fd + 1) as u32, u32::MAX, 0);
            } else {
                libc::close_range(3, u32::MAX, 0);
            }
            Ok(())
        });
    }
    let h = start_command(cmd);
    drop(null);
    h
}

fn run(args: &[&str], env: &[(&str, &str)], checks: &[&str]) -> Hecd {
    run_with_fds(args, env, checks, None)
}

/// The `id UID GID GROUPS HOME` line of the app run with `args` and `env`.
fn app_id(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut h = run(args, env, &["id"]);
    let line = h.expect_line("id");
    assert_eq!(h.expect_exit(), 0, "{}", h.stderr());
    line
}

#[test]
fn issue_16_user_forms_set_ids_groups_and_home() {
    // Debian's /etc/passwd: nobody 65534:65534 home /nonexistent; daemon 1:1 home /usr/sbin;
    // /etc/group: nogroup 65534. HOME is root's (/root) as under Docker, unless set.
    let root_home = [("HOME", "/root")];
    let cases: &[Case] = &[
        (
            &["--user", "nobody"],
            &root_home,
            "id 65534 65534 65534 /nonexistent",
        ),
        (
            &["--user", "65534:65534"],
            &root_home,
            "id 65534 65534 65534 /nonexistent",
        ),
        (
            &["--user=daemon:nogroup"],
            &root_home,
            "id 1 65534 65534 /usr/sbin",
        ),
        (
            &["--user", "daemon:4000"],
            &root_home,
            "id 1 4000 4000 /usr/sbin",
        ),
        // A uid with no passwd entry: its own number as group, home /.
        (&["--user", "4242"], &root_home, "id 4242 4242 4242 /"),
        (
            &[],
            &[("HECD_USER", "nobody"), ("HOME", "/root")],
            "id 65534 65534 65534 /nonexistent",
        ),
        // An explicit HOME of the operator's stays.
        (
            &["--user", "nobody"],
            &[("HOME", "/data")],
            "id 65534 65534 65534 /data",
        ),
        // Without --user nothing changes: root, root's groups as the test runs with them.
    ];
    for (args, env, want) in cases {
        assert_eq!(app_id(args, env), *want, "{args:?} {env:?}");
    }
    let plain = app_id(&[], &root_home);
    assert!(plain.starts_with("id 0 0 "), "{plain}");
}

#[test]
fn issue_16_no_new_privileges_is_set_for_the_app_only() {
    for (args, env, want) in [
        (&["--no-new-privileges"][..], &[][..], "NoNewPrivs:\t1"),
        (&[], &[("HECD_NO_NEW_PRIVILEGES", "1")], "NoNewPrivs:\t1"),
        (
            &["--user", "nobody", "--no-new-privileges"],
            &[],
            "NoNewPrivs:\t1",
        ),
        (&[], &[], "NoNewPrivs:\t0"),
    ] {
        let mut cmd = Command::new(hecd_init());
        cmd.args(args)
            .args([
                "--",
                "sh",
                "-c",
                "grep ^NoNewPrivs /proc/self/status; exec sleep 30",
            ])
            .envs(env.iter().copied());
        let mut h = start_command(cmd);
        assert_eq!(h.expect_line("NoNewPrivs"), want, "{args:?} {env:?}");
        h.app_pid();
        // hecd-init itself keeps its privileges (the bit is for the app alone).
        let own = common::status_field(h.pid(), "NoNewPrivs");
        assert_eq!(own.as_deref(), Some("0"), "hecd-init's own bit");
        h.signal(libc::SIGTERM);
        assert_eq!(h.expect_exit(), 128 + libc::SIGTERM);
    }
}

#[test]
fn issue_16_bad_user_values_exit_2_with_one_line_and_nothing_runs() {
    let tmp = TempDir::new("user-bad");
    let marker = tmp.0.join("ran");
    let marker_s = marker.to_string_lossy().into_owned();
    let cases: &[Case] = &[
        (
            &["--user", "nosuchuser"],
            &[],
            "hecd-init: --user: unknown user \"nosuchuser\" (not in /etc/passwd)",
        ),
        (
            &["--user", "nobody:nosuchgroup"],
            &[],
            "hecd-init: --user: unknown group \"nosuchgroup\" (not in /etc/group)",
        ),
        (
            &["--user", "1:2:3"],
            &[],
            "hecd-init: --user: expected USER[:GROUP], a name or a number each, such as nobody, 65534:65534 or app:staff, got \"1:2:3\"",
        ),
        (
            &[],
            &[("HECD_USER", "a b")],
            "hecd-init: HECD_USER: expected USER[:GROUP], a name or a number each, such as nobody, 65534:65534 or app:staff, got \"a b\"",
        ),
        (
            &["--user", "4294967295"],
            &[],
            "hecd-init: --user: expected USER[:GROUP], a name or a number each, such as nobody, 65534:65534 or app:staff, got \"4294967295\"",
        ),
    ];
    for (args, env, want) in cases {
        let mut cmd = Command::new(hecd_init());
        cmd.args(*args)
            .args(["--", "touch", &marker_s])
            .envs(env.iter().copied());
        let mut h = start_command(cmd);
        assert_eq!(h.expect_exit(), 2, "{args:?}");
        assert_eq!(h.stderr_final().trim_end(), *want, "{args:?} {env:?}");
        assert!(!marker.exists(), "the app ran for {args:?}");
    }
}

#[test]
fn issue_16_the_app_inherits_only_what_hecd_init_inherited() {
    let etcd = Etcd::start();
    let url = etcd.url();
    let registering = [
        "--etcd",
        url.as_str(),
        "--name",
        "fds",
        "--advertise",
        "127.0.0.1",
        "--drain",
        "0",
    ];
    for (args, extra, want) in [
        (&[][..], None, "fds 0,1,2"),
        (&[][..], Some(7), "fds 0,1,2,7"),
        // Registering: the signalfd, the logger's pipe and the password file have been
        // opened by then, and none may reach the app.
        (&registering[..], None, "fds 0,1,2"),
        (&registering[..], Some(9), "fds 0,1,2,9"),
    ] {
        let mut h = run_with_fds(args, &[], &["fds", "serve"], extra);
        let (lines, _) = check_lines(&h);
        assert_eq!(lines, [want], "{args:?} {extra:?}");
        h.app_pid();
        if !args.is_empty() {
            common::expect_registered(&etcd, &h, "fds");
        }
        h.signal(libc::SIGTERM);
        assert_eq!(h.expect_exit(), 128 + libc::SIGTERM);
    }
}

/// etcd with authentication on (user `root`, [`PASSWORD`]).
fn etcd_with_auth() -> Etcd {
    let etcd = Etcd::start();
    etcd.enable_auth(PASSWORD);
    etcd
}

/// The value of `key`, read with the credentials (the gateway refuses anonymous reads now).
fn get(etcd: &Etcd, key: &str) -> Option<String> {
    let user = format!("root:{PASSWORD}");
    let out = etcd.etcdctl(&["--user", &user, "get", "--print-value-only", key]);
    let value = out.trim();
    (!value.is_empty() && !value.contains("Error")).then(|| value.to_owned())
}

/// Reads the app's check lines up to `done`, then its `listening PORT`.
fn check_lines(h: &Hecd) -> (Vec<String>, u16) {
    let mut lines = Vec::new();
    loop {
        let line = h.expect_line("check result");
        if line == "done" {
            break;
        }
        lines.push(line);
    }
    let listening = h.expect_line("listening");
    let port = listening
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected `listening PORT`, got {listening:?}"));
    (lines, port)
}

fn assert_denied(lines: &[String], check: &str) {
    let line = lines
        .iter()
        .find(|l| l.split_whitespace().next() == Some(check))
        .unwrap_or_else(|| panic!("no result for {check}: {lines:?}"));
    assert!(line.contains(" denied: "), "{check} must be denied: {line}");
}

#[test]
fn issue_16_an_app_under_user_reaches_neither_the_password_file_nor_a_root_socket() {
    let etcd = etcd_with_auth();
    let tmp = TempDir::new("privileges");
    let pw_file = tmp.0.join("etcd-password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o400)).unwrap();
    // What docker.sock is to the app: a Unix socket only root may connect to.
    let sock = tmp.0.join("root-only.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let read = format!("read:{}", pw_file.display());
    let connect = format!("connect:{}", sock.display());
    // The same checks as root first: they must be able to pass, or the denials below prove
    // nothing.
    let mut h = run(&[], &[], &[&read, &connect, "done-root"]);
    assert_eq!(h.expect_line("read"), format!("{read} ok"));
    assert_eq!(h.expect_line("connect"), format!("{connect} ok"));
    assert_eq!(h.expect_exit(), 0);

    let url = etcd.url();
    let pw_path = pw_file.to_string_lossy().into_owned();
    let mut h = run(
        &[
            "--etcd",
            &url,
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &pw_path,
            "--name",
            "priv",
            "--advertise",
            "127.0.0.1",
            "--user",
            "nobody",
            "--drain",
            "0",
        ],
        &[],
        &[
            &read,
            &connect,
            "ptrace-parent",
            "mem-parent",
            "fds",
            "serve",
        ],
    );
    let (lines, port) = check_lines(&h);
    h.app_pid();
    assert_denied(&lines, &read);
    assert_denied(&lines, &connect);
    assert_denied(&lines, "ptrace-parent");
    assert_denied(&lines, "mem-parent");
    assert!(lines.contains(&"fds 0,1,2".to_owned()), "{lines:?}");
    // hecd-init itself still did its work with the file: registered.
    let want = format!("127.0.0.1:{port}");
    let ok = wait_until(Duration::from_secs(15), || {
        get(&etcd, &key("priv")).as_deref() == Some(want.as_str())
    });
    assert!(ok, "not registered as {want}; stderr:\n{}", h.stderr());
    h.signal(libc::SIGTERM);
    let gone = wait_until(Duration::from_secs(10), || {
        get(&etcd, &key("priv")).is_none()
    });
    assert!(gone, "not deregistered; stderr:\n{}", h.stderr());
}

/// `/proc/<pid>/environ` and `/proc/<pid>/cmdline`, as this (root) test reads them.
fn proc_text(pid: i32) -> String {
    let read = |f: &str| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default())
            .into_owned()
    };
    format!("{}\n{}", read("environ"), read("cmdline"))
}

#[test]
fn issue_16_a_root_app_without_cap_sys_ptrace_finds_no_password() {
    let etcd = etcd_with_auth();
    let url = etcd.url();
    let user_pw = format!("root:{PASSWORD}");
    // The password on the command line, in HECD_ETCD_PASSWORD, and in HECD_ETCD_USER.
    let variants: [(&str, Vec<&str>, Env); 4] = [
        ("cmdline", vec!["--etcd-user", &user_pw], &[]),
        ("cmdline-inline", vec![], &[]),
        (
            "env-password",
            vec!["--etcd-user", "root"],
            &[("HECD_ETCD_PASSWORD", PASSWORD)],
        ),
        ("env-user", vec![], &[("HECD_ETCD_USER", user_pw.as_str())]),
    ];
    let inline = format!("--etcd-user={user_pw}");
    for (name, extra, env) in variants {
        let mut cmd = Command::new("setpriv");
        // Docker's default: root without CAP_SYS_PTRACE, for hecd-init and so for the app.
        cmd.args(["--bounding-set", "-sys_ptrace", "--"])
            .arg(hecd_init())
            .args(["--etcd", &url, "--name", name, "--advertise", "127.0.0.1"])
            .args(extra.iter().copied())
            .args(if name == "cmdline-inline" {
                vec![inline.as_str()]
            } else {
                vec![]
            })
            .args(["--drain", "0", "--"])
            .arg(privileges())
            .args(["ptrace-parent", "mem-parent", "serve"])
            .envs(env.iter().copied());
        let mut h = start_command(cmd);
        let (lines, port) = check_lines(&h);
        h.app_pid();
        assert_denied(&lines, "ptrace-parent");
        assert_denied(&lines, "mem-parent");
        let want = format!("127.0.0.1:{port}");
        let ok = wait_until(Duration::from_secs(15), || {
            get(&etcd, &key(name)).as_deref() == Some(want.as_str())
        });
        assert!(ok, "{name}: not registered; stderr:\n{}", h.stderr());
        let text = proc_text(h.pid());
        assert!(
            !text.contains(PASSWORD),
            "{name}: password visible in /proc: {text:?}"
        );
        assert!(
            text.contains("root"),
            "{name}: the user name stays readable: {text:?}"
        );
        h.signal(libc::SIGTERM);
        assert_eq!(
            h.expect_exit(),
            128 + libc::SIGTERM,
            "{name}: {}",
            h.stderr()
        );
    }
}

#[test]
fn issue_16_haproxy_gets_no_credential_and_hecd_haproxy_shows_none() {
    let etcd = etcd_with_auth();
    let user_pw = format!("root:{PASSWORD}");
    let mut served = Vec::new();
    for (name, args, env) in [
        (
            "env",
            vec!["--etcd-user", "root"],
            vec![("HECD_ETCD_PASSWORD", PASSWORD)],
        ),
        (
            "env-user",
            vec![],
            vec![("HECD_ETCD_USER", user_pw.as_str())],
        ),
        ("cmdline", vec!["--etcd-user", user_pw.as_str()], vec![]),
    ] {
        let lb = Lb::start_env(&etcd.url(), &args, &env);
        let shown = lb.admin("show env").unwrap_or_default();
        assert!(
            shown.contains("PATH="),
            "{name}: `show env` must list the environment: {shown}"
        );
        assert!(
            !shown.contains("HECD_ETCD"),
            "{name}: HAProxy got a credential variable: {shown}"
        );
        assert!(
            !shown.contains(PASSWORD),
            "{name}: HAProxy got the password: {shown}"
        );
        let text = proc_text(lb.h.pid());
        assert!(
            !text.contains(PASSWORD),
            "{name}: password in hecd-haproxy's /proc: {text:?}"
        );
        // It still reads etcd with the credentials: a key put now is served.
        let out = etcd.etcdctl(&["--user", &user_pw, "put", &key(name), "127.0.0.1:9"]);
        assert!(out.contains("OK"), "{out}");
        served.push(name);
        served.sort_unstable();
        lb.expect_servers(&served, Duration::from_secs(10));
    }
}

/// The `etcdctl` lines of docs/SECURITY.md ("etcd roles"), as the docs give them.
fn documented_roles() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SECURITY.md"))
        .expect("docs/SECURITY.md");
    let after = doc
        .split_once("<!-- etcd-roles")
        .map(|(_, rest)| rest)
        .expect("the etcd-roles block in docs/SECURITY.md");
    let block = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("a sh block after the marker");
    block.to_owned()
}

#[test]
fn issue_16_the_documented_etcd_roles_are_enough_and_no_more() {
    let etcd = Etcd::start();
    let out = Command::new("sh")
        .args(["-euc", &documented_roles()])
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", etcd.url())
        .env("ROOT_PASSWORD", PASSWORD)
        .env("APP_PASSWORD", "app-pass")
        .env("LB_PASSWORD", "lb-pass")
        .output()
        .expect("sh");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the documented lines failed: {text}");

    let lb_pw = TempDir::new("lb-pw");
    std::fs::write(lb_pw.0.join("pw"), "lb-pass\n").unwrap();
    let lb_file = lb_pw.0.join("pw").to_string_lossy().into_owned();
    let lb = Lb::start(
        &etcd.url(),
        &[
            "--etcd-user",
            "hecd-lb",
            "--etcd-password-file",
            &lb_file,
            "--lb-id",
            "lb-roles",
        ],
    );
    let url = etcd.url();
    let mut h = run(
        &[
            "--etcd",
            &url,
            "--etcd-user",
            "hecd-app",
            "--name",
            "roles",
            "--advertise",
            "127.0.0.1",
            "--route",
            "roles.example.com",
            "--drain",
            "10",
        ],
        &[("HECD_ETCD_PASSWORD", "app-pass")],
        &["serve"],
    );
    let (_, port) = check_lines(&h);
    h.app_pid();
    let want = format!("127.0.0.1:{port}");
    let ok = wait_until(Duration::from_secs(15), || {
        get(&etcd, &key("roles")).as_deref() == Some(want.as_str())
    });
    assert!(ok, "hecd-app could not register; stderr:\n{}", h.stderr());
    lb.expect_servers(&["roles"], Duration::from_secs(10));
    assert_eq!(
        get(&etcd, "/hecd/routes/app/servers/roles").as_deref(),
        Some("roles.example.com"),
        "the route declaration was not written with the documented roles"
    );
    // Confirmed drain with these roles: hecd-init reads the balancer's announcement and its
    // confirmation, so the 10 s drain ends as soon as hecd-lb confirms.
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 128 + libc::SIGTERM);
    let stderr = h.stderr_final();
    assert!(
        stderr.contains("load balancers confirmed"),
        "no confirmed drain with the documented roles:\n{stderr}\n--- lb ---\n{}",
        lb.h.stderr()
    );
    // ... and no more than that.
    for (user, key) in [
        ("hecd-app:app-pass", "/other/x"),
        ("hecd-app:app-pass", "/hecd/lbs/forged"),
        ("hecd-app:app-pass", "/hecd/routes/app/other/forged"),
        ("hecd-lb:lb-pass", "/app/servers/forged"),
        ("hecd-app:app-pass", "/hecd-certs/certs/roles.example.com"),
    ] {
        let out = etcd.etcdctl(&["--user", user, "put", key, "1.2.3.4:5"]);
        assert!(
            out.contains("permission denied"),
            "{user} may write {key}: {out}"
        );
    }
    // The certificate store: hecd-lb reads and writes it; hecd-app cannot read a private key.
    let out = etcd.etcdctl(&[
        "--user",
        "hecd-lb:lb-pass",
        "put",
        "/hecd-certs/certs/roles.example.com",
        "a PRIVATE KEY",
    ]);
    assert!(out.contains("OK"), "hecd-lb cannot write the store: {out}");
    for key in ["/hecd-certs/certs/roles.example.com", "/hecd-certs/account"] {
        let out = etcd.etcdctl(&["--user", "hecd-app:app-pass", "get", key]);
        assert!(
            out.contains("permission denied") && !out.contains("PRIVATE KEY"),
            "hecd-app may read {key}: {out}"
        );
    }
    let out = etcd.etcdctl(&[
        "--user",
        "hecd-app:app-pass",
        "get",
        "--prefix",
        "/hecd-certs/",
    ]);
    assert!(out.contains("permission denied"), "{out}");
}

#[test]
fn issue_16_compose_and_stack_set_up_the_documented_roles() {
    for file in ["docker/docker-compose.yml", "docker/stack.yml"] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(&path).expect(file);
        for line in documented_roles().lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Compose escapes `$` as `$$`.
            let escaped = line.replace('$', "$$");
            assert!(yaml.contains(&escaped), "{file} lacks `{escaped}`");
        }
        for needed in [
            "HECD_USER: \"65534:65534\"",
            "HECD_ETCD_PASSWORD_FILE: /run/secrets/",
        ] {
            assert!(yaml.contains(needed), "{file} lacks {needed}");
        }
        assert!(
            !yaml.contains("docker.sock:ro"),
            "{file}: `:ro` does not protect a socket"
        );
    }
}
