//! Test app: a tiny HTTP server. `tiny_server PORT [NAME] [UNHEALTHY_FILE]` listens on
//! 127.0.0.1:PORT (PORT 0: any free port), prints `listening <port> <pid>`, answers every
//! request with `200 NAME`, except `/healthz` with 503 while UNHEALTHY_FILE exists. It prints
//! `signal <n> at <unix ms>` for every signal and exits 0 on SIGTERM or SIGINT, so tests can
//! compare when the app was signalled with when its key left etcd. SIGUSR1 makes it "crash"
//! with exit status 3. With TINY_LOG_REQUESTS=1 it also prints `request <path> at <unix ms>`.
//! With TINY_SLOW_FILE=PATH, while PATH exists, `/healthz` prints `slow request at <unix ms>`
//! and answers only 20 s later (a busy app whose health probe hangs). With TINY_DELAY_MS=N,
//! every request is served on a thread of its own and answered N ms after it arrived (a slow
//! app with requests in flight; SIGTERM still ends it at once, killing them).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::signalfd::SignalFd;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .and_then(|p| p.parse().ok())
        .expect("usage: tiny_server PORT [NAME] [UNHEALTHY_FILE]");
    let name = args.next().unwrap_or_else(|| "tiny".into());
    let unhealthy = args.next();

    let all = SigSet::all();
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None).expect("block signals");
    let signals = SignalFd::new(&all).expect("signalfd");
    std::thread::spawn(move || {
        loop {
            if let Ok(Some(info)) = signals.read_signal() {
                let sig = info.ssi_signo as i32;
                println!("signal {sig} at {}", now_ms());
                if sig == libc::SIGTERM || sig == libc::SIGINT {
                    std::process::exit(0);
                }
                if sig == libc::SIGUSR1 {
                    std::process::exit(3);
                }
            }
        }
    });

    let log_requests = std::env::var_os("TINY_LOG_REQUESTS").is_some();
    let slow_file = std::env::var_os("TINY_SLOW_FILE");
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    println!("listening {port} {}", std::process::id());
    let delay = std::env::var("TINY_DELAY_MS")
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .map(std::time::Duration::from_millis);
    let name: &'static str = Box::leak(name.into_boxed_str());
    let unhealthy: &'static Option<String> = Box::leak(Box::new(unhealthy));
    let slow_file: &'static Option<std::ffi::OsString> = Box::leak(Box::new(slow_file));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let serve = move || serve(stream, name, unhealthy, slow_file, log_requests, delay);
        if delay.is_some() {
            std::thread::spawn(serve);
        } else {
            serve();
        }
    }
}

fn serve(
    mut stream: std::net::TcpStream,
    name: &str,
    unhealthy: &Option<String>,
    slow_file: &Option<std::ffi::OsString>,
    log_requests: bool,
    delay: Option<std::time::Duration>,
) {
    let mut buf = [0u8; 2048];
    let n = stream.read(&mut buf).unwrap_or(0);
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    if log_requests && n > 0 {
        println!("request {path} at {}", now_ms());
    }
    if path == "/healthz"
        && slow_file
            .as_ref()
            .is_some_and(|f| std::path::Path::new(f).exists())
    {
        println!("slow request at {}", now_ms());
        std::thread::sleep(std::time::Duration::from_secs(20));
    }
    if let Some(d) = delay.filter(|_| n > 0) {
        std::thread::sleep(d);
    }
    let sick = path == "/healthz"
        && unhealthy
            .as_deref()
            .is_some_and(|f| std::path::Path::new(f).exists());
    let (status, body) = if sick {
        ("503 Service Unavailable", "sick\n".to_string())
    } else {
        ("200 OK", format!("{name}\n"))
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}
