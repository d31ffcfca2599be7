//! Certificates made by the tests with `openssl` (a CA of their own, server certificates it
//! signs, expired ones), and a TLS client (rustls, verifying against that CA) that reports
//! which certificate the server presented.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A certificate authority in a directory of the test.
pub struct Ca {
    dir: PathBuf,
    serial: std::sync::atomic::AtomicU32,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let d = dir.display();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{d}/ca.key"),
            "-out",
            &format!("{d}/ca.pem"),
            "-days",
            "30",
            "-subj",
            "/CN=hecd test CA",
        ]);
        Ca {
            dir: dir.to_owned(),
            serial: 1.into(),
        }
    }

    /// The CA certificate's file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A fresh key and a CSR for `names` (the first is the CN), and the extension file with
    /// their subjectAltNames: the paths of key, CSR, certificate-to-be, extensions, and the
    /// number that names them (the certificate's serial).
    fn request(&self, names: &[&str]) -> (String, String, String, String, u32) {
        let n = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = self.dir.display();
        let (key, csr, crt, ext) = (
            format!("{d}/{n}.key"),
            format!("{d}/{n}.csr"),
            format!("{d}/{n}.crt"),
            format!("{d}/{n}.ext"),
        );
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={}", names[0]),
        ]);
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(&ext, format!("subjectAltName={}\n", sans.join(","))).unwrap();
        (key, csr, crt, ext, n)
    }

    /// The certificate at `crt`, then the key at `key`: one file's text.
    fn chain_and_key(crt: &str, key: &str) -> String {
        let mut text = std::fs::read_to_string(crt).unwrap();
        text.push_str(&std::fs::read_to_string(key).unwrap());
        text
    }

    /// A certificate for `names` (DNS subjectAltNames; the first is the CN) valid for
    /// `days`, with its key: the PEM chain and key as one file's text.
    pub fn issue(&self, names: &[&str], days: i32) -> String {
        let (key, csr, crt, ext, n) = self.request(names);
        let d = self.dir.display();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{d}/ca.pem"),
            "-CAkey",
            &format!("{d}/ca.key"),
            "-set_serial",
            &n.to_string(),
            "-out",
            &crt,
            "-days",
            &days.to_string(),
            "-extfile",
            &ext,
        ]);
        Self::chain_and_key(&crt, &key)
    }

    /// A certificate for `names` that expired in 2020 (valid for January 2020 only), with its
    /// key, as [`Ca::issue`] gives it.
    pub fn issue_expired(&self, names: &[&str]) -> String {
        let (key, csr, crt, ext, n) = self.request(names);
        let d = self.dir.display();
        let cnf = format!("{d}/{n}.cnf");
        // `openssl x509 -req` (3.0) cannot set dates in the past; `openssl ca` can.
        std::fs::write(format!("{d}/{n}.index"), "").unwrap();
        std::fs::write(
            &cnf,
            format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {d}/{n}.index\nnew_certs_dir = {d}\n\
                 serial = {d}/{n}.serial\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n"
            ),
        )
        .unwrap();
        std::fs::write(format!("{d}/{n}.serial"), format!("{n:02X}\n")).unwrap();
        openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &cnf,
            "-cert",
            &format!("{d}/ca.pem"),
            "-keyfile",
            &format!("{d}/ca.key"),
            "-in",
            &csr,
            "-out",
            &crt,
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-extfile",
            &ext,
        ]);
        Self::chain_and_key(&crt, &key)
    }

    /// Just the private key of a fresh certificate (to pair with another one's chain).
    pub fn stray_key(&self) -> String {
        let text = self.issue(&["stray.test"], 1);
        text[text.find("-----BEGIN PRIVATE KEY").unwrap()..].to_owned()
    }

    /// A rustls client configuration trusting only this CA, offering `alpn`, without session
    /// resumption.
    pub fn client(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        client_trusting(&std::fs::read_to_string(self.cert_path()).unwrap(), alpn)
    }
}

/// A rustls client configuration trusting only the certificates of `pem`, offering `alpn`,
/// without session resumption.
pub fn client_trusting(pem: &str, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    // Every connection a full handshake: a resumed session presents no certificate (rustls
    // would report the first session's), and the tests look at the one presented now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Writes `text` to `path` as a secret update does: a new file renamed over the old one.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The DER of a PEM chain's first certificate.
pub fn leaf_der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A TLS connection to `127.0.0.1:port` for `host` (SNI), verified against the CA of
/// `config`.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn connect(port: u16, host: &str, config: &Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    connect_at("127.0.0.1", port, host, config)
}

/// [`connect`] to `ip:port`.
pub fn connect_at(
    ip: &str,
    port: u16,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Tls, String> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect((ip, port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(tls)
}

/// The leaf certificate the server presented on `tls`.
pub fn presented(tls: &Tls) -> Vec<u8> {
    tls.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

/// `GET path` for `host` over a fresh TLS connection (HTTP/1.1, closed after): the whole
/// answer and the leaf certificate presented.
pub fn https_get(
    port: u16,
    host: &str,
    path: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(String, Vec<u8>), String> {
    https_get_at("127.0.0.1", port, host, path, config)
}

/// [`https_get`] from `ip:port`.
pub fn https_get_at(
    ip: &str,
    port: u16,
    host: &str,
    path: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(String, Vec<u8>), String> {
    let mut tls = connect_at(ip, port, host, config)?;
    let leaf = presented(&tls);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // HAProxy closes without close_notify after `Connection: close` at times.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), leaf))
}
