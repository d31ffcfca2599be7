//! An app for the edge tests (answers with the request it saw, or echoes an upgraded
//! connection) and the raw HTTP exchanges the tests make through a balancer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

/// An app for the edge tests, on a thread: answers each request with its own request head as
/// the body, or, asked for `Upgrade: websocket`, switches protocols and echoes every byte.
/// Stops accepting when dropped.
pub struct EchoApp {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EchoApp {
    pub fn start() -> EchoApp {
        EchoApp::named("echo")
    }

    /// [`EchoApp::start`] answering with `Server-Name: NAME`.
    pub fn named(name: &str) -> EchoApp {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let me = name.to_owned();
        // A blocking accept (a connection is served at once); the drop wakes it with a
        // connection of its own after setting `stop`.
        thread::spawn(move || {
            for c in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = c {
                    let me = me.clone();
                    thread::spawn(move || EchoApp::serve(c, &me));
                }
            }
        });
        EchoApp { port, stop }
    }

    fn serve(mut c: TcpStream, name: &str) {
        let _ = c.set_nonblocking(false);
        let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
            match c.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        if text.to_ascii_lowercase().contains("upgrade: websocket") {
            // HAProxy checks Sec-WebSocket-Accept (and makes up a key itself for a WebSocket
            // that came over HTTP/2): answered as RFC 6455 says.
            let key = header_values(&text, "Sec-WebSocket-Key")
                .pop()
                .unwrap_or_default();
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    websocket_accept(&key)
                )
                .as_bytes(),
            );
            let mut buf = [0u8; 1024];
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 || c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            return;
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nServer-Name: {name}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = c.write_all(reply.as_bytes());
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Sends `request` (whole) to the balancer on `port`; the answer, whole.
pub fn exchange(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// RFC 6455's `Sec-WebSocket-Accept` for `key`.
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The values of header `name` (any case) in an HTTP head.
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}
