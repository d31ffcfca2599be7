//! The readiness and liveness check: `tcp` connects to the app's port, `http:PATH` expects a
//! 2xx or 3xx answer to `GET PATH`, `none` always passes. Each probe has a timeout, so a hung
//! app costs the registrar at most that long. Runs on the registrar thread, never the
//! supervisor's.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::{Http, Method};

/// The readiness and liveness check. (`Default` only so that hecd-init's arguments struct
/// can start empty: what `--check` takes when not given is written in its row, in `config`.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Check {
    #[default]
    Tcp,
    Http(String),
    None,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Tcp => write!(f, "tcp"),
            Check::Http(path) => write!(f, "http:{path}"),
            Check::None => write!(f, "none"),
        }
    }
}

/// Runs one probe against the app at `addr` (from inside the container: its listening address,
/// or loopback for a wildcard bind). `Err` says what failed.
pub fn probe(
    check: &Check,
    http: &Http,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    match check {
        Check::None => Ok(()),
        Check::Tcp => TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|e| format!("tcp {addr}: {e}")),
        Check::Http(path) => {
            // SocketAddr's Display brackets IPv6 as URLs need.
            let url = format!("http://{addr}{path}");
            match http.request(Method::Get, &url, &[], None, timeout) {
                Ok(r) if (200..400).contains(&r.status) => Ok(()),
                Ok(r) => Err(format!("GET {url}: HTTP {}", r.status)),
                Err(e) => Err(format!("GET {url}: {e}")),
            }
        }
    }
}
