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
    let dir_mode = std::fs::metadata(lb.dir.join("certs")).unwrap().permissions();
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
            for line in key.lines().filter(|l| l.len() > 20 && !l.starts_with("-----")) {
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
