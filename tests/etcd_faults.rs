//! etcd that misbehaves or is locked down: an endpoint that accepts connections and never
//! answers, answers that are not JSON, TLS with client certificates, and authentication.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::etcd::{Etcd, free_port, make_certs};
use common::{TempDir, key, start_registered, wait_until};

#[test]
fn hung_endpoint_never_delays_signals_or_the_stop() {
    // Accepts connections (the kernel's backlog does) and never answers.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    let (mut h, _) = start_registered(
        &url,
        "web-hung",
        &["--drain", "1", "--check-interval", "200ms"],
    );
    std::thread::sleep(Duration::from_millis(800)); // the registrar is now stuck in a request
    let sent = Instant::now();
    h.signal(libc::SIGUSR2);
    assert!(h.expect_line("USR2").starts_with("signal 12 at "));
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "forwarding waited for etcd: {:?}",
        sent.elapsed()
    );
    let stop = Instant::now();
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 0);
    // Deregistration is bounded by about 2 s; nothing was registered, so no drain.
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        stop.elapsed()
    );
    drop(hung);
}

/// A peer that answers every request with HTTP 200 and a body that is not JSON.
struct Garbage {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Garbage {
    fn start() -> Garbage {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf);
                        let body = ["{not json", "[1,2", "{\"ID\": {}}", "\u{1}\u{2}"][served % 4];
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            served
        });
        Garbage {
            url,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Garbage {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn malformed_answers_are_logged_and_retried_never_a_panic() {
    for api in ["auto", "v3", "v2"] {
        let mut garbage = Garbage::start();
        let (mut h, _) = start_registered(
            &garbage.url,
            "web-g",
            &["--etcd-api", api, "--check-interval", "100ms"],
        );
        let retried = wait_until(Duration::from_secs(10), || {
            h.stderr().matches("retrying in").count() >= 3
        });
        assert!(retried, "{api}: no retries logged:\n{}", h.stderr());
        h.signal(libc::SIGUSR2);
        assert!(h.expect_line("USR2").starts_with("signal 12"));
        h.signal(libc::SIGTERM);
        assert_eq!(h.expect_exit(), 0, "{api}");
        let err = h.stderr_final();
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{api}:\n{err}"
        );
        assert!(
            err.contains(&garbage.url),
            "{api}: the endpoint is named:\n{err}"
        );
        assert!(garbage.stop() >= 3);
    }
}

#[test]
fn tls_with_client_certificates() {
    let dir = TempDir::new("tls");
    make_certs(&dir.0);
    let p = |f: &str| dir.0.join(f).to_string_lossy().into_owned();
    let (etcd, https) = Etcd::start_tls(
        &dir.0,
        &["--client-cert-auth", "--trusted-ca-file", &p("ca.pem")],
    );
    let tls = [
        "--etcd-cacert",
        &p("ca.pem"),
        "--etcd-cert",
        &p("client.pem"),
        "--etcd-key",
        &p("client.key"),
    ];
    let (h, port) = start_registered(&https, "web-tls", &tls);
    let ok = wait_until(Duration::from_secs(10), || {
        etcd.get(&key("web-tls")) == Some(format!("127.0.0.1:{port}"))
    });
    assert!(ok, "not registered over TLS:\n{}", h.stderr());
    drop(h);

    // The server certificate is verified: another CA's bundle gets nowhere.
    let other = TempDir::new("tls-other");
    make_certs(&other.0);
    let wrong = other.0.join("ca.pem").to_string_lossy().into_owned();
    let (h, _) = start_registered(
        &https,
        "web-bad",
        &[
            "--etcd-cacert",
            &wrong,
            "--etcd-cert",
            &p("client.pem"),
            "--etcd-key",
            &p("client.key"),
        ],
    );
    h.expect_stderr("retrying in");
    assert!(h.stderr().contains("TLS"), "{}", h.stderr());
    assert_eq!(etcd.get(&key("web-bad")), None);
}

#[test]
fn tls_setup_errors_are_usage_errors() {
    let dir = TempDir::new("tls-bad");
    let not_pem = dir.0.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (args, want) in [
        (
            vec!["--etcd-cacert", "/no/such/ca.pem"],
            "hecd-init: --etcd-cacert: cannot read /no/such/ca.pem: No such file or directory (os error 2)",
        ),
        (
            vec!["--etcd-cacert", not_pem.to_str().unwrap()],
            &*format!(
                "hecd-init: --etcd-cacert: {}: no PEM certificate in it",
                not_pem.display()
            ),
        ),
    ] {
        assert_eq!(
            usage_error("https://127.0.0.1:2379", &args).trim_end(),
            want
        );
    }
}

/// hecd-init registering at `endpoint` with `args`, running `true`: it must exit 2 before the
/// app runs; what it said.
fn usage_error(endpoint: &str, args: &[&str]) -> String {
    let mut all = vec!["--etcd", endpoint, "--advertise", "127.0.0.1:80"];
    all.extend(args);
    all.push("true");
    let mut h = common::start(&all);
    assert_eq!(h.expect_exit(), 2);
    h.stderr_final()
}

/// `--etcd-cert` and `--etcd-key` are checked even when every endpoint is `http://` (no TLS
/// is used yet): junk, or a pair whose key does not fit, is exit 2 with one line naming the
/// option, for both programs; a good pair is accepted.
#[test]
fn client_files_are_checked_even_with_http_endpoints() {
    let dir = TempDir::new("tls-http");
    common::etcd::make_certs(&dir.0);
    let file = |f: &str| dir.0.join(f).to_string_lossy().into_owned();
    let junk = dir.0.join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let junk = junk.to_string_lossy().into_owned();
    let (cert, key, other_key) = (file("client.pem"), file("client.key"), file("server.key"));
    for (c, k, want) in [
        (&junk, &key, "--etcd-cert: "),
        (&cert, &junk, "--etcd-key: "),
        (&cert, &other_key, "--etcd-cert: "),
    ] {
        let args = ["--etcd-cert", c.as_str(), "--etcd-key", k.as_str()];
        let err = usage_error("http://127.0.0.1:1", &args);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("hecd-init: {want}")), "{err}");
        let out = Command::new(common::hecd_haproxy())
            .args([
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                ":1",
                "--dir",
                "/nonexistent",
            ])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with(&format!("hecd-haproxy: {want}")), "{err}");
    }
    // A good pair with http:// endpoints: accepted (the app runs, its status is hecd-init's).
    let mut all = vec![
        "--etcd",
        "http://127.0.0.1:1",
        "--advertise",
        "127.0.0.1:80",
    ];
    all.extend([
        "--etcd-cert",
        cert.as_str(),
        "--etcd-key",
        key.as_str(),
        "--drain",
        "0",
    ]);
    all.push("true");
    let mut h = common::start(&all);
    assert_eq!(h.expect_exit(), 0, "{}", h.stderr_final());
}

#[test]
fn authentication_with_password_from_the_environment_and_token_renewal() {
    let etcd = Etcd::start_with(&["--auth-token-ttl", "1"]);
    etcd.enable_auth("s3cret-pass");
    let get = || {
        etcd.etcdctl(&[
            "--user",
            "root:s3cret-pass",
            "get",
            "--print-value-only",
            &key("web-a"),
        ])
        .trim()
        .to_owned()
    };
    let server = common::example("tiny_server");
    let mut cmd = Command::new(common::hecd_init());
    cmd.args([
        "-vv",
        "--etcd",
        &etcd.url(),
        "--name",
        "web-a",
        "--advertise",
        "127.0.0.1",
    ])
    .args([
        "--etcd-user",
        "root",
        "--ttl",
        "3",
        "--check-interval",
        "200ms",
        "--",
    ])
    .arg(&server)
    .args(["0", "web-a"])
    .env("HECD_ETCD_PASSWORD", "s3cret-pass");
    let mut h = common::start_command(cmd);
    let port = common::listening_port(&h.expect_line("listening"));
    h.app_pid();
    let value = format!("127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(10), || get() == value),
        "not registered with auth:\n{}",
        h.stderr()
    );
    // Let the token expire, then make hecd-init register again: it must authenticate anew.
    std::thread::sleep(Duration::from_secs(2));
    let lease = etcd.etcdctl(&["--user", "root:s3cret-pass", "lease", "list"]);
    let id = lease.lines().nth(1).expect("one lease").trim().to_owned();
    etcd.etcdctl(&["--user", "root:s3cret-pass", "lease", "revoke", &id]);
    assert!(
        wait_until(Duration::from_secs(10), || get() == value),
        "not re-registered:\n{}",
        h.stderr()
    );
    assert!(
        h.stderr()
            .contains("auth token rejected; authenticating again"),
        "{}",
        h.stderr()
    );
    h.signal(libc::SIGTERM);
    assert_eq!(h.expect_exit(), 0);
    let err = h.stderr_final();
    assert!(
        !err.contains("s3cret-pass"),
        "the password was logged:\n{err}"
    );
    assert_eq!(get(), "", "deregistered with auth");
}

/// Kills and reaps a helper process when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn issue_8_tls_1_2_only_endpoints_are_reached() {
    // etcd 2.x/3.3 and many TLS-terminating proxies speak only TLS 1.2. openssl s_server
    // restricted to 1.2 answers every request with a status page: the handshake succeeds and
    // the answer is an error about the body, not about TLS.
    let dir = TempDir::new("tls12");
    make_certs(&dir.0);
    // A port chosen free may be taken before s_server binds it: s_server then exits (and the
    // port answers, but not for us), and another port is tried.
    let mut started = None;
    for _ in 0..5 {
        let port = free_port();
        let server = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &port.to_string(),
                "-cert",
                "server.pem",
                "-key",
                "server.key",
                "-tls1_2",
                "-www",
                "-quiet",
            ])
            .current_dir(&dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let mut server = Reaped(server);
        let mut exited = false;
        assert!(wait_until(Duration::from_secs(10), || {
            exited = server.0.try_wait().is_ok_and(|s| s.is_some());
            exited || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        if !exited && server.0.try_wait().is_ok_and(|s| s.is_none()) {
            started = Some((server, port));
            break;
        }
    }
    let (_server, port) = started.expect("openssl s_server could not bind a free port");
    let ca = dir.0.join("ca.pem").to_string_lossy().into_owned();
    let url = format!("https://127.0.0.1:{port}");
    let (h, _) = start_registered(&url, "web-tls12", &["--etcd-cacert", &ca]);
    h.expect_stderr("retrying in");
    let err = h.stderr();
    assert!(err.contains("/version"), "{err}");
    assert!(!err.contains("TLS"), "the TLS 1.2 handshake failed: {err}");
}
