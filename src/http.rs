//! The one HTTP plumbing of both programs, for etcd, the Docker API and the `http:` check: a
//! configured ureq agent (rustls with ring, TLS 1.2 and 1.3, our own CA and client certificate)
//! and a small unix-socket connector for the Docker API. Every request is bounded by one
//! deadline that covers the name lookup, connecting, sending and reading the whole answer, and
//! what it reads is bounded too (head and body sizes); a streamed answer (the etcd watch) can
//! be ended from another thread ([`Http::shutdown`]). It speaks no etcd or Docker protocol (only
//! its TLS set-up names the `--etcd-*` options whose files it checks); it never retries, and
//! never logs bodies (they may hold passwords and tokens).
//!
//! Every byte of an answer is hostile: framing (chunked sizes, Content-Length, the status line,
//! the headers) is ureq's, which turns any breakage into an error; this module only maps those
//! errors to the four kinds its callers act on ([`HttpError`]).

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ureq::Agent;
use ureq::http::{Request, Uri};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

/// Percent-encoding: RFC 3986's unreserved characters stay as they are; every other byte is
/// encoded (a path segment, or the start of a set that keeps a few more).
pub const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest response head (status line and headers) and body read. etcd's answers are a few
/// hundred bytes and Docker's inspect a few KiB; anything bigger is not what we asked for.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: u64 = 1 << 20;
/// ureq's read and write buffers per connection (its default is 128 KiB each).
const BUFFER: usize = 32 * 1024;

/// TLS settings, built before the app starts (a bad file is a usage error).
#[derive(Clone)]
pub struct Tls(TlsConfig);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tls")
    }
}

/// A PEM file's path (for messages) and contents.
pub struct PemFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

impl Tls {
    /// Builds a client configuration from a PEM CA bundle and an optional PEM certificate
    /// chain and key. Errors name the file. TLS 1.2 and 1.3, server certificates always
    /// verified against the given CA only. An error names the option of the file at fault
    /// (`--etcd-cacert`, `--etcd-cert`, `--etcd-key`) and says what is wrong.
    pub fn from_pem(
        ca: PemFile<'_>,
        client: Option<(PemFile<'_>, PemFile<'_>)>,
    ) -> Result<Self, (&'static str, String)> {
        let cacert = |e: String| ("--etcd-cacert", e);
        let roots = certificates(ca.path, ca.data).map_err(cacert)?;
        // ureq skips certificates it cannot use; check them here so a bad CA file is named.
        let mut store = rustls::RootCertStore::empty();
        for cert in &roots {
            store
                .add(CertificateDer::from(cert.der()))
                .map_err(|e| cacert(format!("{}: unusable CA certificate ({e})", ca.path)))?;
        }
        let client = match client {
            None => None,
            Some((cert, key)) => Some(client_cert(&cert, &key, store)?),
        };
        let config = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&roots))
            .client_cert(client)
            .unversioned_rustls_crypto_provider(provider())
            .build();
        Ok(Self(config))
    }
}

/// Checks a client certificate chain and key the way [`Tls::from_pem`] does (each parses, and
/// they fit each other), for `--etcd-cert`/`--etcd-key` given with `http://` endpoints only:
/// a bad file is a usage error now, not when the endpoints move to `https://`.
pub fn check_client_cert(
    cert: &PemFile<'_>,
    key: &PemFile<'_>,
) -> Result<(), (&'static str, String)> {
    client_cert(cert, key, rustls::RootCertStore::empty()).map(drop)
}

/// The client certificate of `cert` (a PEM chain) and `key`, checked to fit each other by
/// building a rustls configuration with them (and `roots`).
fn client_cert(
    cert: &PemFile<'_>,
    key: &PemFile<'_>,
    roots: rustls::RootCertStore,
) -> Result<ClientCert, (&'static str, String)> {
    let chain = certificates(cert.path, cert.data).map_err(|e| ("--etcd-cert", e))?;
    let bad_key = |e: String| {
        (
            "--etcd-key",
            format!("{}: no usable private key ({e})", key.path),
        )
    };
    let private = PrivateKey::from_pem(key.data).map_err(|e| bad_key(e.to_string()))?;
    // The pair must fit: let rustls say so now rather than at the first handshake.
    let der = PrivateKeyDer::from_pem_slice(key.data).map_err(|e| bad_key(e.to_string()))?;
    let ders = chain
        .iter()
        .map(|c| CertificateDer::from(c.der()).into_owned());
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("--etcd-cacert", format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(ders.collect(), der)
        .map_err(|e| {
            (
                "--etcd-cert",
                format!("{}: does not fit the key ({e})", cert.path),
            )
        })?;
    Ok(ClientCert::new_with_certs(&chain, private))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &str, pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let certs: Vec<Certificate<'static>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// HTTP methods hecd-init uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A response: any status, with its body read in full.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// The answer's headers (within the 16 KiB head limit), names in lower case.
    pub headers: Vec<(String, String)>,
}

/// Why a request got no usable response. Every variant means "try another endpoint or later".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No answer within the time given (resolve, connect, send or receive).
    Timeout,
    /// Could not connect (refused, unreachable, name not found, TLS handshake).
    Connect(String),
    /// The connection broke or the answer was not HTTP (or not UTF-8).
    Broken(String),
    /// The body (or one line of a stream) was longer than the limit, in bytes.
    TooBig(u64),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Connect(e) => write!(f, "cannot connect: {e}"),
            HttpError::Broken(e) => write!(f, "{e}"),
            HttpError::TooBig(n) => write!(f, "answer over {n} bytes"),
        }
    }
}

impl From<ureq::Error> for HttpError {
    fn from(e: ureq::Error) -> Self {
        use ureq::Error as E;
        if let E::Io(io) = &e
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return HttpError::Connect(format!("TLS: {tls}"));
        }
        match e {
            E::Timeout(_) => HttpError::Timeout,
            E::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                HttpError::Timeout
            }
            E::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::NotFound
                        | io::ErrorKind::PermissionDenied
                        | io::ErrorKind::AddrNotAvailable
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                ) =>
            {
                HttpError::Connect(io.to_string())
            }
            E::HostNotFound => HttpError::Connect("host not found".into()),
            E::ConnectionFailed => HttpError::Connect("connection failed".into()),
            E::Tls(why) => HttpError::Connect(format!("TLS: {why}")),
            E::Rustls(why) => HttpError::Connect(format!("TLS: {why}")),
            E::BodyExceedsLimit(n) => HttpError::TooBig(n),
            E::LargeResponseHeader(..) => {
                HttpError::Broken(format!("answer head over {MAX_HEAD} bytes"))
            }
            E::Protocol(p) => HttpError::Broken(format!("not an HTTP answer: {p}")),
            other => HttpError::Broken(other.to_string()),
        }
    }
}

/// The HTTP client: cheap to clone (the agent is shared).
#[derive(Clone, Debug)]
pub struct Http {
    agent: Agent,
}

impl Http {
    /// A client for `http://` and `https://` URLs; `tls` is needed only for `https://`.
    pub fn new(tls: Option<&Tls>) -> Self {
        let mut config = base_config();
        if let Some(tls) = tls {
            config = config.tls_config(tls.0.clone());
        }
        Self {
            agent: config.build().new_agent(),
        }
    }

    /// A client whose every request goes to the unix socket at `path`, whatever the URL's
    /// host (use `http://localhost/...`). For the Docker Engine API.
    pub fn unix(path: &str) -> Self {
        let config = base_config().build();
        Self {
            agent: Agent::with_parts(config, UnixConnector(path.to_owned()), NoResolver),
        }
    }

    /// Sends one request and reads the whole answer, all within `timeout`. `body` is
    /// (content type, text). Header values with CR or LF are refused (the request is not sent).
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<Reply, HttpError> {
        let mut builder = Request::builder().method(method.as_str()).uri(url);
        for (name, value) in headers {
            if value.contains(['\r', '\n']) || name.contains(['\r', '\n']) {
                return Err(HttpError::Broken(format!(
                    "header {name} holds a line break; not sent"
                )));
            }
            builder = builder.header(*name, *value);
        }
        let bad = |e: ureq::http::Error| HttpError::Broken(format!("bad request {url:?}: {e}"));
        let mut response = match body {
            Some((content_type, text)) => {
                let request = builder
                    .header("content-type", content_type)
                    .body(text.to_owned())
                    .map_err(bad)?;
                self.run(request, timeout)?
            }
            None => self.run(builder.body(()).map_err(bad)?, timeout)?,
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()?;
        let body = String::from_utf8(body)
            .map_err(|_| HttpError::Broken("answer body is not UTF-8".into()))?;
        Ok(Reply {
            status,
            body,
            headers,
        })
    }
}

/// A streamed answer read line by line (the etcd watch), each line bounded.
pub struct Stream {
    pub status: u16,
    reader: io::BufReader<ureq::BodyReader<'static>>,
}

impl Stream {
    /// The next line without its newline; `None` at the end of the stream. A line longer than
    /// `max` bytes is [`HttpError::TooBig`] (the stream is then unusable), and so is one that is
    /// not UTF-8 ([`HttpError::Broken`]). Blank lines are skipped.
    pub fn next_line(&mut self, max: usize) -> Result<Option<String>, HttpError> {
        use io::BufRead;
        let mut line = Vec::new();
        loop {
            let chunk = self.reader.fill_buf().map_err(io_error)?;
            if chunk.is_empty() {
                return if line.is_empty() {
                    Ok(None)
                } else {
                    Err(HttpError::Broken("stream ended inside a line".into()))
                };
            }
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if line.len() + take > max + 1 {
                return Err(HttpError::TooBig(max as u64));
            }
            line.extend_from_slice(&chunk[..take]);
            self.reader.consume(take);
            if done {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                return String::from_utf8(line)
                    .map(Some)
                    .map_err(|_| HttpError::Broken("stream line is not UTF-8".into()));
            }
        }
    }
}

/// An I/O error from a body reader: ureq wraps its own errors (timeouts, framing) in it.
fn io_error(e: io::Error) -> HttpError {
    if e.get_ref().is_some_and(|i| i.is::<ureq::Error>()) {
        match e
            .into_inner()
            .and_then(|i| i.downcast::<ureq::Error>().ok())
        {
            Some(u) => HttpError::from(*u),
            None => HttpError::Broken("broken stream".into()),
        }
    } else if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        HttpError::Timeout
    } else {
        HttpError::Broken(e.to_string())
    }
}

impl Http {
    /// A client with the same settings and an agent (and connection pool) of its own, so
    /// that [`Http::shutdown`] ends only what runs on it. Not for [`Http::unix`] clients.
    pub fn detached(&self) -> Http {
        Self {
            agent: self.agent.config().new_agent(),
        }
    }

    /// Closes every connection of this client and its clones, interrupting a read in
    /// progress on another thread (it fails at once); later requests fail.
    pub fn shutdown(&self) {
        self.agent.clone().shutdown();
    }

    /// Sends a POST whose answer is a stream: the head must arrive within `timeout`, the
    /// stream then lasts at most `life` (a read blocks no longer than that; `None`: as long as
    /// the server keeps it open), after which reads fail with [`HttpError::Timeout`].
    pub fn stream(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
        timeout: Duration,
        life: Option<Duration>,
    ) -> Result<Stream, HttpError> {
        let mut builder = Request::builder().method("POST").uri(url);
        for (name, value) in headers {
            if value.contains(['\r', '\n']) || name.contains(['\r', '\n']) {
                return Err(HttpError::Broken(format!(
                    "header {name} holds a line break; not sent"
                )));
            }
            builder = builder.header(*name, *value);
        }
        // `Connection: close`: a Go HTTP/1 server (etcd's JSON gateway) that starts to answer
        // before it has read the whole request body discards the rest of it, unless the
        // connection closes after the answer. A watch body of many create requests would
        // then create only the first few dozen watches (seen with etcd 3.4: 37 of 1000).
        let request = builder
            .header("content-type", "application/json")
            .header("connection", "close")
            .body(body.to_owned())
            .map_err(|e| HttpError::Broken(format!("bad request {url:?}: {e}")))?;
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(None)
            .timeout_per_call(None)
            .timeout_resolve(Some(timeout))
            .timeout_connect(Some(timeout))
            .timeout_send_request(Some(timeout))
            .timeout_send_body(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(life)
            .build();
        let response = self.agent.run(request)?;
        let status = response.status().as_u16();
        let reader = response.into_body().into_reader();
        Ok(Stream {
            status,
            reader: io::BufReader::with_capacity(BUFFER, reader),
        })
    }

    fn run<B: ureq::AsSendBody>(
        &self,
        request: Request<B>,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(Some(timeout))
            .build();
        self.agent.run(request)
    }
}

/// What every agent shares: statuses are answers, not errors; no redirects, no proxy from the
/// environment (`HTTP_PROXY` and friends are the app's; etcd and Docker are reached directly),
/// bounded heads and buffers.
fn base_config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("hecd-init/", env!("CARGO_PKG_VERSION")))
        .max_response_header_size(MAX_HEAD)
        .input_buffer_size(BUFFER)
        .output_buffer_size(BUFFER)
        .max_idle_connections(4)
        .max_idle_connections_per_host(2)
}

/// Connects every request to one unix socket (ureq's transport interface; ureq has no unix
/// sockets of its own).
#[derive(Debug)]
struct UnixConnector(String);

impl<In: Transport> Connector<In> for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let stream = UnixStream::connect(&self.0)
            .map_err(|e| ureq::Error::Io(io::Error::new(e.kind(), format!("{}: {e}", self.0))))?;
        let config = details.config;
        Ok(Some(UnixTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
        }))
    }
}

#[derive(Debug)]
struct UnixTransport {
    stream: UnixStream,
    buffers: LazyBuffers,
}

impl UnixTransport {
    fn arm(&self, timeout: NextTimeout, write: bool) -> Result<(), ureq::Error> {
        // A zero timeout means "already due": report it instead of blocking forever.
        let Some(left) = timeout.not_zero() else {
            return Err(ureq::Error::Timeout(timeout.reason));
        };
        let left = Some(*left);
        if write {
            self.stream.set_write_timeout(left)?;
        } else {
            self.stream.set_read_timeout(left)?;
        }
        Ok(())
    }
}

fn timed_out(e: io::Error, timeout: &NextTimeout) -> ureq::Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        ureq::Error::Timeout(timeout.reason)
    } else {
        ureq::Error::Io(e)
    }
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        use std::io::Write;
        self.arm(timeout, true)?;
        let output = self
            .buffers
            .output()
            .get(..amount)
            .ok_or_else(|| ureq::Error::Io(io::Error::other("output beyond the buffer")))?;
        (&self.stream)
            .write_all(output)
            .map_err(|e| timed_out(e, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        use std::io::Read;
        self.arm(timeout, false)?;
        let input = self.buffers.input_append_buf();
        let n = loop {
            match (&self.stream).read(input) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(timed_out(e, &timeout)),
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        // One request per connection: never reuse a unix connection.
        false
    }
}

/// The unix connector needs no address: a placeholder instead of a DNS lookup of the URL host.
#[derive(Debug)]
struct NoResolver;

impl Resolver for NoResolver {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    /// Serves `answer` to one connection after reading the request head.
    fn serve_once(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        url
    }

    fn get(url: &str) -> Result<Reply, HttpError> {
        Http::new(None).request(Method::Get, url, &[], None, Duration::from_secs(3))
    }

    #[test]
    fn reads_content_length_and_chunked_bodies() {
        let url = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(get(&url).unwrap().body, "hello");
        let url = serve_once(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        );
        let reply = get(&url).unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (404, "{\"a\":1}"));
        assert!(
            reply
                .headers
                .contains(&("transfer-encoding".to_owned(), "chunked".to_owned()))
        );
    }

    #[test]
    fn hostile_answers_are_errors() {
        for answer in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nfffffffffffffffd\r\nxx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
        ] {
            let url = serve_once(answer);
            assert!(get(&url).is_err(), "{:?}", String::from_utf8_lossy(answer));
        }
    }

    #[test]
    fn header_values_with_line_breaks_are_not_sent() {
        let err = Http::new(None)
            .request(
                Method::Get,
                "http://127.0.0.1:9/",
                &[("authorization", "x\r\nHost: evil")],
                None,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert!(matches!(err, HttpError::Broken(_)), "{err:?}");
    }

    #[test]
    fn deadline_bounds_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let started = Instant::now();
        let err = Http::new(None)
            .request(Method::Get, &url, &[], None, Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(err, HttpError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[test]
    fn unix_socket_requests() {
        let dir = std::env::temp_dir().join(format!("hecd-http-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            }
        });
        let reply = Http::unix(path.to_str().unwrap())
            .request(
                Method::Get,
                "http://localhost/containers/x/json",
                &[],
                None,
                Duration::from_secs(3),
            )
            .unwrap();
        assert_eq!(reply.body, "{}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
