//! The one HTTP plumbing of hecd-init (etcd now, the Docker API next): HTTP/1.1 requests over
//! TCP, TLS (rustls with ring, our own CA and client certificate) or a unix socket, each bounded
//! by a deadline that covers resolving, connecting, sending and reading. One request per
//! connection (`Connection: close`): registration sends a request every few seconds, so a pool
//! would buy nothing. It knows nothing about etcd or Docker; it never retries, and never logs
//! bodies (they may hold passwords and tokens; callers log what is safe).
//!
//! Why not ureq: it forces rustls' TLS 1.2 and logging code in, and with its `http` types it
//! took the static binary past the 1.5 MiB budget (2.07 MB against 1.4 MB without it); and
//! the Docker API needs unix sockets, which ureq only offers through an unstable interface.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Largest response head (status line and headers) and body read.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1 << 20;

/// TLS settings, built before the app starts (a bad file is a usage error).
#[derive(Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

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
    /// chain and key. Errors name the file.
    pub fn from_pem(
        ca: PemFile<'_>,
        client: Option<(PemFile<'_>, PemFile<'_>)>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca.path, ca.data)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate ({e})", ca.path))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certificates(cert.path, cert.data)?;
                let private = PrivateKeyDer::from_pem_slice(key.data)
                    .map_err(|e| format!("{}: no usable private key ({e})", key.path))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| format!("{}: does not fit the key ({e})", cert.path))?
            }
        };
        Ok(Self(Arc::new(config)))
    }
}

fn certificates(path: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
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
}

/// Why a request got no usable response. Every variant means "try another endpoint or later".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No answer within the time given (resolve, connect, send or receive).
    Timeout,
    /// Could not connect (refused, unreachable, name not found, TLS handshake).
    Connect(String),
    /// The connection broke or the answer was not HTTP.
    Broken(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Connect(e) => write!(f, "cannot connect: {e}"),
            HttpError::Broken(e) => write!(f, "{e}"),
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Tcp { host: String, port: u16, tls: bool },
    Unix(String),
}

/// Splits `http://host:port/path`, `https://[v6]:port/path` or `unix:///socket:/path` (the
/// socket path, then the request path after the last `:/`).
fn parse_url(url: &str) -> Result<(Target, String), HttpError> {
    let bad = || HttpError::Broken(format!("bad URL {url:?}"));
    if let Some(rest) = url.strip_prefix("unix://") {
        let (socket, path) = rest.rsplit_once(":/").ok_or_else(bad)?;
        return Ok((Target::Unix(socket.to_owned()), format!("/{path}")));
    }
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(bad)?;
        (h, p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((
        Target::Tcp {
            host: host.to_owned(),
            port,
            tls,
        },
        path.to_owned(),
    ))
}

/// The HTTP client.
#[derive(Clone, Debug, Default)]
pub struct Http {
    tls: Option<Tls>,
}

impl Http {
    /// A client; `tls` is needed only for `https://` URLs.
    pub fn new(tls: Option<&Tls>) -> Self {
        Self { tls: tls.cloned() }
    }

    /// Sends one request and reads the whole answer, all within `timeout`. `body` is
    /// (content type, text).
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Result<Reply, HttpError> {
        let deadline = Instant::now() + timeout;
        let (target, path) = parse_url(url)?;
        let host_header = match &target {
            Target::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Target::Tcp { host, port, .. } => format!("{host}:{port}"),
            Target::Unix(_) => "localhost".to_owned(),
        };
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: hecd-init/{}\r\nConnection: close\r\n",
            method.as_str(),
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let text = body.map_or("", |(_, t)| t);
        if let Some((content_type, _)) = body {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        if body.is_some() || matches!(method, Method::Post | Method::Put) {
            head.push_str(&format!("Content-Length: {}\r\n", text.len()));
        }
        head.push_str("\r\n");
        head.push_str(text);

        let reply = match &target {
            Target::Unix(socket) => {
                let stream = UnixStream::connect(socket)
                    .map_err(|e| HttpError::Connect(format!("{socket}: {e}")))?;
                exchange(Deadlined::new(stream, deadline)?, &head)
            }
            Target::Tcp { host, port, tls } => {
                let stream = connect(host, *port, deadline)?;
                let stream = Deadlined::new(stream, deadline)?;
                if *tls {
                    let config = self.tls.as_ref().ok_or_else(|| {
                        HttpError::Connect("https:// without TLS settings".into())
                    })?;
                    let name = ServerName::try_from(host.clone()).map_err(|e| {
                        HttpError::Connect(format!("bad TLS server name {host:?}: {e}"))
                    })?;
                    let conn = rustls::ClientConnection::new(Arc::clone(&config.0), name)
                        .map_err(|e| HttpError::Connect(format!("TLS: {e}")))?;
                    exchange(rustls::StreamOwned::new(conn, stream), &head)
                } else {
                    exchange(stream, &head)
                }
            }
        }?;
        Ok(reply)
    }
}

/// Resolves and connects, trying each address in turn until the deadline.
fn connect(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| HttpError::Connect(format!("{host}: {e}")))?
        .collect();
    let mut last = HttpError::Connect(format!("{host}: no address"));
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout);
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                // Requests are small and sent whole: no reason to wait for Nagle.
                let _nodelay = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => last = HttpError::Timeout,
            Err(e) => last = HttpError::Connect(format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// Writes the request and reads the response.
fn exchange<S: Read + Write>(mut stream: S, request: &str) -> Result<Reply, HttpError> {
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    stream.flush().map_err(io_error)?;
    read_response(&mut BufReader::new(stream))
}

fn io_error(e: io::Error) -> HttpError {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return HttpError::Connect(format!("TLS: {tls}"));
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => HttpError::Timeout,
        io::ErrorKind::ConnectionRefused => HttpError::Connect(e.to_string()),
        _ => HttpError::Broken(e.to_string()),
    }
}

/// A socket whose every read and write is bounded by one deadline.
struct Deadlined<S> {
    inner: S,
    deadline: Instant,
}

trait Timeouts {
    fn set_timeouts(&self, t: Duration) -> io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Timeouts for UnixStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl<S: Timeouts> Deadlined<S> {
    fn new(inner: S, deadline: Instant) -> Result<Self, HttpError> {
        let s = Self { inner, deadline };
        s.arm().map_err(io_error)?;
        Ok(s)
    }

    /// Sets the socket timeouts to the time left; an error once it is used up.
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.inner.set_timeouts(left)
    }
}

impl<S: Timeouts + Read> Read for Deadlined<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.inner.read(buf)
    }
}

impl<S: Timeouts + Write> Write for Deadlined<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a status line, headers and a body (by Content-Length, chunked, or up to EOF).
fn read_response<R: BufRead>(r: &mut R) -> Result<Reply, HttpError> {
    let broken = |what: &str| HttpError::Broken(format!("not an HTTP answer: {what}"));
    let mut head_len = 0;
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<(), HttpError> {
        line.clear();
        let n = r
            .by_ref()
            .take((MAX_HEAD + 1) as u64)
            .read_line(line)
            .map_err(io_error)?;
        head_len += n;
        if n == 0 {
            return Err(broken("connection closed"));
        }
        if head_len > MAX_HEAD {
            return Err(broken("head too large"));
        }
        Ok(())
    };
    read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(broken("no HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| broken("bad status"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(broken("bad header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| broken("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        read_chunked(r)?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(broken("body too large"));
        }
        let mut body = vec![0; n];
        r.read_exact(&mut body).map_err(io_error)?;
        body
    } else {
        let mut body = Vec::new();
        r.take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(io_error)?;
        if body.len() > MAX_BODY {
            return Err(broken("body too large"));
        }
        body
    };
    let body = String::from_utf8(body).map_err(|_| broken("body is not UTF-8"))?;
    Ok(Reply { status, body })
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, HttpError> {
    let broken = |what: &str| HttpError::Broken(format!("bad chunked body: {what}"));
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.by_ref()
            .take(1024)
            .read_line(&mut line)
            .map_err(io_error)?;
        let size_text = line.trim_end().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| broken("chunk size"))?;
        if size == 0 {
            // Trailers until the empty line; a closed connection here is fine too.
            loop {
                line.clear();
                let n = r
                    .by_ref()
                    .take(1024)
                    .read_line(&mut line)
                    .map_err(io_error)?;
                if n == 0 || line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(broken("too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(io_error)?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(io_error)?;
        if &crlf != b"\r\n" {
            return Err(broken("missing CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Reply, HttpError> {
        read_response(&mut io::Cursor::new(raw.as_bytes().to_vec()))
    }

    #[test]
    fn reads_content_length_chunked_and_eof_bodies() {
        let reply = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(
            reply,
            Reply {
                status: 200,
                body: "hello".into()
            }
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap().body, "{\"a\":1}");
        assert_eq!(
            parse("HTTP/1.0 404 Not Found\r\n\r\ngone").unwrap(),
            Reply {
                status: 404,
                body: "gone".into()
            }
        );
    }

    #[test]
    fn bad_answers_are_errors() {
        for raw in [
            "",
            "SSH-2.0-OpenSSH\r\n",
            "HTTP/1.1 abc\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        ] {
            assert!(parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn urls() {
        let tcp = |h: &str, p, tls| Target::Tcp {
            host: h.into(),
            port: p,
            tls,
        };
        assert_eq!(
            parse_url("http://127.0.0.1:2379/v3/kv/put").unwrap(),
            (tcp("127.0.0.1", 2379, false), "/v3/kv/put".into())
        );
        assert_eq!(
            parse_url("https://[fd00::1]:2379/version").unwrap(),
            (tcp("fd00::1", 2379, true), "/version".into())
        );
        assert_eq!(
            parse_url("http://etcd").unwrap(),
            (tcp("etcd", 80, false), "/".into())
        );
        assert_eq!(
            parse_url("unix:///var/run/docker.sock:/v1.41/containers/json").unwrap(),
            (
                Target::Unix("/var/run/docker.sock".into()),
                "/v1.41/containers/json".into()
            )
        );
        for bad in ["ftp://x", "http://:80/", "http://h:port/", "unix:///sock"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deadline_bounds_a_silent_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let started = Instant::now();
        let err = Http::new(None)
            .request(Method::Get, &url, &[], None, Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(err, HttpError::Timeout);
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
}
