//! hecd-haproxy's HTTPS edge against a real HAProxy 2.6 and etcd, with certificates made by
//! `openssl` and checked with `openssl s_client`, `curl --http2` and a rustls client: a
//! certificate per host by SNI and none for an unknown host, HTTP/2, the redirect and HSTS,
//! what the app learns over HTTPS, and certificate files added, rotated under load, broken and
//! removed without a reload.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::echo::{EchoApp, exchange, header_values};
use common::etcd::Etcd;
use common::lb::{Lb, Load, Request};
use common::tls::{Ca, https_get, leaf_der, replace_file};
use common::{TempDir, wait_until};

/// `openssl s_client` to the balancer's HTTPS port with `host` as SNI, verifying against the
/// test's CA and the host name: its whole output.
fn s_client(port: u16, host: &str, ca: &Path) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", host, "-verify_hostname", host, "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-brief"])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The balancer's HTTPS `--https` and `--certs` arguments.
fn https_args(certs: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--https".to_owned(),
        "127.0.0.1:{free}".to_owned(),
        "--certs".to_owned(),
        certs.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

fn start_lb(etcd: &Etcd, args: &[String]) -> Lb {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Lb::start(&etcd.url(), &args)
}

/// Issue 23, the HTTPS listener: two hosts each served with its own certificate by SNI (as
/// `openssl s_client` verifies it), a third refused at the handshake, HTTP/2 negotiated by
/// curl, routing as over HTTP, the app told `https` and the port; plain HTTP for a host with a
/// certificate redirected (308, path and query kept), for one without served; HSTS only with
/// `--hsts`; `--no-redirect` serves plain HTTP for every host.
#[test]
fn issue_23_each_host_gets_its_own_certificate_and_http_is_redirected() {
    let tmp = TempDir::new("https-sni");
    let ca = Ca::new(&tmp.0);
    let certs = tmp.0.join("certs");
    std::fs::create_dir(&certs).unwrap();
    let a = ca.issue(&["a.test"], 30);
    let b = ca.issue(&["b.test", "*.b.test"], 30);
    std::fs::write(certs.join("a.pem"), &a).unwrap();
    std::fs::write(certs.join("b.pem"), &b).unwrap();
    let etcd = Etcd::start();
    let (app_a, app_d) = (EchoApp::named("a1"), EchoApp::named("d1"));
    etcd.put("/app/a/a1", &format!("127.0.0.1:{}", app_a.port));
    etcd.put("/hecd/routes/app/a/a1", "a.test");
    etcd.put("/app/servers/d1", &format!("127.0.0.1:{}", app_d.port));
    let lb = start_lb(&etcd, &https_args(&certs, &["--hsts", "1h"]));
    let plain = start_lb(&etcd, &https_args(&certs, &["--no-redirect"]));
    let port = lb.https_port();
    let client = ca.client(&["http/1.1"]);
    for l in [&lb, &plain] {
        let routed = wait_until(Duration::from_secs(10), || {
            https_get(l.https_port(), "a.test", "/", &client)
                .is_ok_and(|(answer, _)| header_values(&answer, "server-name") == ["a1"])
        });
        assert!(
            routed,
            "a.test not routed over HTTPS: {:?}\n{}",
            https_get(l.https_port(), "a.test", "/", &client),
            l.h.stderr()
        );
    }

    // SNI: each host its own certificate, verified against the test's CA; a wildcard covers
    // one label; a host no certificate covers gets no handshake (and no other's certificate).
    for (host, cn) in [("a.test", "a.test"), ("x.b.test", "b.test")] {
        let out = s_client(port, host, &ca.cert_path());
        assert!(
            out.contains("Verification: OK") && out.contains(&format!("CN = {cn}")),
            "{host}: {out}"
        );
    }
    // TLS 1.3 by default, TLS 1.2 for a client that offers only that.
    let out = s_client(port, "a.test", &ca.cert_path());
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-tls1_2", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-servername",
            "a.test",
            "-verify_return_error",
            "-brief",
            "-CAfile",
        ])
        .arg(ca.cert_path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.contains("Protocol version: TLSv1.2") && out.contains("Verification: OK"),
        "{out}"
    );
    for host in ["c.test", "y.x.b.test"] {
        let out = s_client(port, host, &ca.cert_path());
        assert!(
            out.contains("unrecognized name") && !out.contains("Verification: OK"),
            "{host}: {out}"
        );
        assert!(https_get(port, host, "/", &client).is_err());
    }
    let (_, leaf) = https_get(port, "a.test", "/", &client).unwrap();
    assert_eq!(leaf, leaf_der(&a));

    // HTTP/2 with curl, routed by Host; the app learns the scheme, the port and the client.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2", "-D", "-", "--cacert"])
        .arg(ca.cert_path())
        .arg("--resolve")
        .arg(format!("a.test:{port}:127.0.0.1"))
        .args(["-w", "\nversion=%{http_version}"])
        .arg(format!("https://a.test:{port}/p?q=1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.ends_with("version=2"), "{text}");
    assert_eq!(header_values(&text, "server-name"), ["a1"], "{text}");
    assert_eq!(
        header_values(&text, "strict-transport-security"),
        ["max-age=3600"],
        "{text}"
    );
    assert_eq!(header_values(&text, "X-Forwarded-Proto"), ["https"]);
    assert_eq!(header_values(&text, "X-Forwarded-Port"), [port.to_string()]);
    assert_eq!(header_values(&text, "X-Forwarded-For"), ["127.0.0.1"]);
    assert_eq!(
        header_values(&text, "X-Forwarded-Host"),
        [format!("a.test:{port}")]
    );

    // Plain HTTP: a host with a certificate (exact or by wildcard) is sent to HTTPS with its
    // path and query; a host without one, and an ACME challenge, are served; no HSTS on HTTP.
    let get = |l: &Lb, host: &str, path: &str| {
        exchange(
            l.port,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    for (host, location) in [
        ("a.test", format!("https://a.test:{port}/p?q=1&r=%2F")),
        (
            "X.B.test:8080",
            format!("https://x.b.test:{port}/p?q=1&r=%2F"),
        ),
    ] {
        let answer = get(&lb, host, "/p?q=1&r=%2F");
        assert!(answer.starts_with("HTTP/1.1 308"), "{host}: {answer}");
        assert_eq!(header_values(&answer, "location"), [location], "{answer}");
    }
    let answer = get(&lb, "c.test", "/p");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(header_values(&answer, "server-name"), ["d1"], "{answer}");
    assert!(header_values(&answer, "strict-transport-security").is_empty());
    let answer = get(&lb, "a.test", "/.well-known/acme-challenge/token");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // --no-redirect, no --hsts: plain HTTP served for every host; no HSTS over HTTPS.
    let answer = get(&plain, "a.test", "/p");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(header_values(&answer, "server-name"), ["a1"], "{answer}");
    let (answer, _) = https_get(plain.https_port(), "a.test", "/", &client).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        header_values(&answer, "strict-transport-security").is_empty(),
        "{answer}"
    );
}

/// Issue 23, certificates applied at runtime: a balancer started with an empty `--certs`
/// serves a file added later within 2 s; the file replaced by a new certificate under ≥ 20
/// HTTPS requests a second (each a new handshake): new handshakes present the new one within
/// 2 s, no request fails, no reload, the same HAProxy worker. A file that turns bad (garbage,
/// a key that does not match, an expired certificate, dates out of order) changes nothing and logs one warning
/// each; a reload (SIGHUP) serves the same certificates from the files hecd-haproxy keeps; a
/// removed file stops serving its host within 2 s.
#[test]
fn issue_23_certificates_change_at_runtime_without_a_failed_request() {
    let tmp = TempDir::new("https-rotate");
    let ca = Ca::new(&tmp.0);
    let certs = tmp.0.join("certs");
    std::fs::create_dir(&certs).unwrap();
    let etcd = Etcd::start();
    let app = EchoApp::named("a1");
    etcd.put("/app/servers/a1", &format!("127.0.0.1:{}", app.port));
    let lb = start_lb(&etcd, &https_args(&certs, &[]));
    lb.expect_servers(&["a1"], Duration::from_secs(10));
    let port = lb.https_port();
    let client = ca.client(&["http/1.1"]);
    assert!(https_get(port, "a.test", "/", &client).is_err());
    // A FIFO named like a certificate: refused, and it holds nothing up.
    let fifo = Command::new("mkfifo")
        .arg(certs.join("fifo.pem"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let refused = wait_until(Duration::from_secs(5), || {
        lb.h.stderr().contains("fifo.pem: not a regular file")
    });
    assert!(refused, "{}", lb.h.stderr());

    // Added to an empty directory.
    let v1 = ca.issue(&["a.test"], 30);
    let file = certs.join("a.pem");
    replace_file(&file, &v1);
    let added = Instant::now();
    let served = wait_until(Duration::from_secs(5), || {
        https_get(port, "a.test", "/", &client).is_ok_and(|(_, leaf)| leaf == leaf_der(&v1))
    });
    let took = added.elapsed();
    assert!(
        served && took < Duration::from_secs(2),
        "served {served} after {took:?}:\n{}",
        lb.h.stderr()
    );
    lb.h.expect_stderr("certificate a.pem: serving a.test");
    // HAProxy's copy is the owner's alone.
    let dir_mode = std::fs::metadata(lb.dir.join("certs"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&dir_mode) & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(lb.dir.join("certs")).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let mode = entry.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Rotated under load.
    let workers = lb.workers();
    let c = client.clone();
    let load = Load::start_with(
        vec![Request {
            label: "https a.test".into(),
            send: Arc::new(move || {
                let (answer, _) = https_get(port, "a.test", "/", &c)?;
                match answer.split_whitespace().nth(1) {
                    Some("200") => Ok("a1".into()),
                    _ => Err(answer.lines().next().unwrap_or("").to_owned()),
                }
            }),
        }],
        25,
    );
    let started = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let v2 = ca.issue(&["a.test"], 30);
    replace_file(&file, &v2);
    let replaced = Instant::now();
    let rotated = wait_until(Duration::from_secs(5), || {
        https_get(port, "a.test", "/", &client).is_ok_and(|(_, leaf)| leaf == leaf_der(&v2))
    });
    let took = replaced.elapsed();
    assert!(
        rotated && took < Duration::from_secs(2),
        "rotated {rotated} after {took:?}: {:?}\n{}",
        https_get(port, "a.test", "/", &client).map(|(a, _)| a),
        lb.h.stderr()
    );
    thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let (sent, failed, _) = load.finish();
    assert!(sent >= 200, "only {sent} requests");
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    let stderr = lb.h.stderr();
    assert!(!stderr.contains("reloading"), "{stderr}");
    assert_eq!(lb.workers(), workers, "HAProxy's worker changed");

    // Bad versions of the file: each warned about once, v2 still served.
    let chain = &v2[..v2.find("-----BEGIN PRIVATE KEY").unwrap()];
    let bad = [
        ("no PEM certificate", "garbage\n".to_owned()),
        ("does not match", format!("{chain}{}", ca.stray_key())),
        ("expired", ca.issue_expired(&["a.test"])),
        // Not after before not before.
        ("not usable", ca.issue(&["a.test"], -1)),
    ];
    for (i, (why, text)) in bad.iter().enumerate() {
        replace_file(&file, text);
        let warnings = || {
            lb.h.stderr()
                .lines()
                .filter(|l| l.contains("a.pem: ") && l.contains("not served"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let warned = wait_until(Duration::from_secs(5), || warnings().len() == i + 1);
        assert!(warned, "{why}: {}", lb.h.stderr());
        assert!(warnings()[i].contains(why), "{why}: {:?}", warnings());
        thread::sleep(Duration::from_millis(500));
        let (_, leaf) = https_get(port, "a.test", "/", &client).unwrap();
        assert_eq!(
            leaf,
            leaf_der(&v2),
            "{why}: the last good one is not served"
        );
    }
    let warnings =
        lb.h.stderr()
            .lines()
            .filter(|l| l.contains("a.pem: ") && l.contains("not served"))
            .count();
    assert_eq!(warnings, bad.len(), "{}", lb.h.stderr());

    // A reload starts the worker from the files kept in --dir: the same certificate.
    lb.h.signal(libc::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(10), || {
        lb.workers().1 != workers.1
            && https_get(port, "a.test", "/", &client).is_ok_and(|(_, leaf)| leaf == leaf_der(&v2))
    });
    assert!(reloaded, "{}", lb.h.stderr());

    // No part of any private key in the log (docs/SECURITY.md).
    let log = lb.h.stderr();
    for text in [&v1, &v2].into_iter().chain(bad.iter().map(|(_, t)| t)) {
        if let Some(at) = text.find("-----BEGIN PRIVATE KEY-----\n") {
            let key = &text[at + 28..];
            for line in key
                .lines()
                .filter(|l| l.len() > 20 && !l.starts_with("-----"))
            {
                assert!(!log.contains(line), "a key's line is in the log: {line}");
            }
        }
    }
    assert!(!log.contains("PRIVATE KEY"), "{log}");

    // Removed: its host is no longer served.
    std::fs::remove_file(&file).unwrap();
    let removed = Instant::now();
    let gone = wait_until(Duration::from_secs(5), || {
        https_get(port, "a.test", "/", &client).is_err()
    });
    assert!(gone && removed.elapsed() < Duration::from_secs(2));
    let cleaned = wait_until(Duration::from_secs(2), || {
        std::fs::read_dir(lb.dir.join("certs")).unwrap().count() == 0
    });
    assert!(cleaned, "HAProxy's copy of the removed certificate is left");
}

/// Runs `one` from `threads` threads for `secs` seconds; completed calls a second (a failed
/// call ends the benchmark with its error).
fn rate(threads: usize, secs: u64, one: impl Fn() -> Result<(), String> + Sync) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let done = std::sync::atomic::AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < stop {
                    one().unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    done.into_inner() as f64 / secs as f64
}

/// Requests answered 200 over one keep-alive connection `s`, for `secs` seconds; a second.
fn keep_alive_rate<S: std::io::Read + std::io::Write>(s: &mut S, secs: u64) -> f64 {
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < stop {
        s.write_all(request).unwrap();
        // One answer: its head, then Content-Length bytes.
        let mut got = Vec::new();
        let (head_end, length) = loop {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "closed");
            got.extend_from_slice(&buf[..k]);
            if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..at]).to_string();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let length: usize = header_values(&head, "content-length")[0].parse().unwrap();
                break (at + 4, length);
            }
        };
        while got.len() < head_end + length {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "closed");
            got.extend_from_slice(&buf[..k]);
        }
        n += 1;
    }
    n as f64 / secs as f64
}

/// The HTTPS benchmark (scripts/bench, section 10): through one HAProxy, plain HTTP against
/// HTTPS (TLS 1.3, ECDSA P-256, full handshakes, no resumption) for new connections a second
/// (each with one request) and requests a second over one keep-alive connection; then a
/// certificate file written → its host served (new host each time, median of 10).
#[test]
#[ignore = "a benchmark: scripts/bench runs it"]
fn bench_https() {
    let tmp = TempDir::new("https-bench");
    let ca = Ca::new(&tmp.0);
    let certs = tmp.0.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("a.pem"), ca.issue(&["a.test"], 30)).unwrap();
    let etcd = Etcd::start();
    let app = EchoApp::named("a1");
    etcd.put("/app/servers/a1", &format!("127.0.0.1:{}", app.port));
    let lb = start_lb(&etcd, &https_args(&certs, &["--no-redirect"]));
    lb.expect_servers(&["a1"], Duration::from_secs(10));
    let (http, https) = (lb.port, lb.https_port());
    let client = ca.client(&["http/1.1"]);
    let secs = 5;
    let threads = 2;
    let http_conns = rate(threads, secs, || {
        let answer = exchange(
            http,
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        );
        answer
            .starts_with("HTTP/1.1 200")
            .then_some(())
            .ok_or(answer)
    });
    let https_conns = rate(threads, secs, || {
        let (answer, _) = https_get(https, "a.test", "/", &client)?;
        answer
            .starts_with("HTTP/1.1 200")
            .then_some(())
            .ok_or(answer)
    });
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    let http_keep = keep_alive_rate(&mut plain, secs);
    let mut tls = common::tls::connect(https, "a.test", &client).unwrap();
    let https_keep = keep_alive_rate(&mut tls, secs);
    // Certificate file → served: a new host each round.
    let mut took = Vec::new();
    for i in 0..10 {
        let host = format!("n{i}.test");
        let text = ca.issue(&[&host], 30);
        replace_file(&certs.join(format!("{host}.pem")), &text);
        let written = Instant::now();
        let served = wait_until(Duration::from_secs(5), || {
            https_get(https, &host, "/", &client).is_ok()
        });
        assert!(served, "{host} not served:\n{}", lb.h.stderr());
        took.push(written.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    let median = (took[4] + took[5]) / 2.0;
    println!("### HTTPS through one HAProxy (hecd-haproxy --https), client on the same machine");
    println!("| | plain HTTP | HTTPS |");
    println!("|---|---|---|");
    println!(
        "| new connections a second, one request each ({threads} client threads, {secs} s; HTTPS: a full TLS 1.3 handshake, ECDSA P-256) | {http_conns:.0} | {https_conns:.0} |"
    );
    println!(
        "| requests a second over one keep-alive connection ({secs} s) | {http_keep:.0} | {https_keep:.0} |"
    );
    println!(
        "| certificate file written → its host served (median of 10, min {:.0} ms, max {:.0} ms) | | {median:.0} ms |",
        took[0], took[9]
    );
    assert!(!lb.h.stderr().contains("reloading"));
}
