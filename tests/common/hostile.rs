//! Hostile peers for the tests: an HTTP server that answers every connection with the next of a
//! list of malformed replies (as etcd, the Docker API or the app's health endpoint), and a TCP
//! proxy in front of a real etcd that holds back the requests whose bytes contain a marker (a
//! slowed keepalive). Both run on loopback, every connection on its own thread, each bounded in
//! bytes and time, and stop when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Most bytes one flooding reply sends (the "a peer sending 64 MiB").
pub const FLOOD_BYTES: usize = 64 << 20;

/// One way to answer a request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// These bytes, then close.
    Raw(&'static [u8]),
    /// `head`, then `unit` repeated until [`FLOOD_BYTES`] are sent or the reader goes away.
    Flood {
        head: &'static [u8],
        unit: &'static [u8],
    },
    /// `head`, then a JSON body of `depth` nested arrays, with its Content-Length.
    DeepJson { head: &'static str, depth: usize },
    /// These bytes one at a time, `every` apart (a slow drip), for at most 10 s.
    Drip {
        bytes: &'static [u8],
        every: Duration,
    },
    /// Read the request and never answer (for at most 30 s).
    Silent,
}

/// Every malformed reply the issue lists, for etcd's gateway and for a health endpoint.
pub fn all_malformed() -> Vec<Reply> {
    vec![
        // Chunk sizes whose sum overflows.
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nfffffffffffffffd\r\nxxxxxxxxxx\r\n0\r\n\r\n",
        ),
        Reply::Raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551617\r\n\r\n{}"),
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}"),
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}"),
        Reply::Raw(b"HTTP/1.1 2000000 OK\r\n\r\n"),
        Reply::Raw(b"HTTP/9.9 200\r\n\r\n"),
        Reply::Raw(b"\x00\xff\x13\x37garbage\r\n\r\n\x00"),
        Reply::Raw(b"SSH-2.0-OpenSSH_9.2\r\n"),
        Reply::Raw(b""),
        // JSON that is truncated, wrong-typed, or not what etcd sends.
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"header\":"),
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 43\r\n\r\n{\"ID\":[1,2],\"TTL\":{\"a\":1},\"etcdserver\":7}",
        ),
        Reply::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnull"),
        Reply::DeepJson {
            head: "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
            depth: 500_000,
        },
        // Floods: endless headers, an endless body without a length, a huge chunk.
        Reply::Flood {
            head: b"HTTP/1.1 200 OK\r\n",
            unit: b"X-Flood: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        },
        Reply::Flood {
            head: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
            unit: b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        },
        Reply::Flood {
            head: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n",
            unit: b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        },
        Reply::Drip {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            every: Duration::from_millis(300),
        },
        Reply::Silent,
    ]
}

/// A server answering connection N with `replies[N % len]`.
pub struct Hostile {
    pub port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl Hostile {
    pub fn start(replies: Vec<Reply>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hostile server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (stop2, served2) = (Arc::clone(&stop), Arc::clone(&served));
        let acceptor = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = served2.fetch_add(1, Ordering::SeqCst);
                let reply = replies[n % replies.len()].clone();
                let stop3 = Arc::clone(&stop2);
                thread::spawn(move || answer(conn, &reply, &stop3));
            }
        });
        Hostile {
            port,
            stop,
            served,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections answered so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request head (bounded), so the client is waiting for the answer.
fn read_head(conn: &mut TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < 64 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

fn answer(mut conn: TcpStream, reply: &Reply, stop: &AtomicBool) {
    read_head(&mut conn);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    match reply {
        Reply::Raw(bytes) => {
            let _ = conn.write_all(bytes);
        }
        Reply::Flood { head, unit } => {
            let _ = conn.write_all(head);
            let mut sent = 0;
            while sent < FLOOD_BYTES && !stop.load(Ordering::SeqCst) {
                if conn.write_all(unit).is_err() {
                    break;
                }
                sent += unit.len();
            }
        }
        Reply::DeepJson { head, depth } => {
            let body = "[".repeat(*depth) + &"]".repeat(*depth);
            let text = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
            let _ = conn.write_all(text.as_bytes());
        }
        Reply::Drip { bytes, every } => {
            let until = Instant::now() + Duration::from_secs(10);
            for b in bytes.iter() {
                if Instant::now() > until || stop.load(Ordering::SeqCst) {
                    break;
                }
                if conn.write_all(&[*b]).is_err() {
                    break;
                }
                thread::sleep(*every);
            }
        }
        Reply::Silent => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// A TCP proxy to `upstream` that holds each chunk of client bytes containing `marker` for
/// `hold` before passing it on (a slowed etcd for one kind of request). Records when it holds.
pub struct SlowProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    holding: Arc<Mutex<Option<Instant>>>,
}

impl SlowProxy {
    pub fn start(upstream: u16, marker: &'static [u8], hold: Duration) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let holding = Arc::new(Mutex::new(None));
        let (stop2, holding2) = (Arc::clone(&stop), Arc::clone(&holding));
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (stop3, holding3) = (Arc::clone(&stop2), Arc::clone(&holding2));
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                thread::spawn(move || pipe(s2, c2));
                thread::spawn(move || {
                    forward_holding(client, server, marker, hold, &stop3, &holding3)
                });
            }
        });
        SlowProxy {
            port,
            stop,
            holding,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Since when a marked request is being held, if one is.
    pub fn holding_since(&self) -> Option<Instant> {
        *self.holding.lock().expect("lock")
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn forward_holding(
    mut client: TcpStream,
    mut server: TcpStream,
    marker: &[u8],
    hold: Duration,
    stop: &AtomicBool,
    holding: &Mutex<Option<Instant>>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if buf[..n].windows(marker.len()).any(|w| w == marker) {
            *holding.lock().expect("lock") = Some(Instant::now());
            let until = Instant::now() + hold;
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            *holding.lock().expect("lock") = None;
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
}
