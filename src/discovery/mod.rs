//! Picks the `HOST:PORT` to advertise, the key's name, and where to run the check, from what
//! the options say, what the kernel says (`net`) and what Docker says (`docker`):
//!
//! - port: `--port`, else the lowest TCP port the app's session listens on (waiting until one
//!   exists);
//! - mode `published` (auto: when Docker shows the port published): the host's IP and the
//!   published host port, the host IP being `--host-ip`, else a specific binding HostIp, else
//!   the Swarm node address, else the default gateway; mode `container`: the container's
//!   network IP and the app port;
//! - `--advertise` overrides the host, the port, or both;
//! - name: `--name`, else the container's name from Docker, else the hostname.
//!
//! Runs on the registrar thread (it reads `/proc` and may ask the Docker API), never on the
//! supervisor's.

pub mod docker;
pub mod net;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::config::Registration;
use crate::http::Http;

/// The advertised address: the contract's (`crate::contract`).
pub use crate::contract::Address;

/// Which address to advertise. (`Default` only so that hecd-init's arguments struct can
/// start empty: what `--mode` takes when not given is written in its row, in `config`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Auto,
    Container,
    Published,
}

/// `--advertise`: either part may be left to discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertise {
    pub host: Option<String>,
    pub port: Option<u16>,
}

/// `--docker`: where the Engine API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerApi {
    Unix(String),
    Tcp { host: String, port: u16 },
}

/// What discovery settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub address: Address,
    /// Where the check connects: the app's listening address (loopback for a wildcard bind).
    pub check: SocketAddr,
}

/// Discovery state kept across attempts (it retries until the app listens).
pub struct Discovery {
    reg: Registration,
    docker: Option<DockerApi>,
    app_sid: i32,
    http: Http,
    told_ports: bool,
    /// `GET /info`'s Swarm node address, once the engine has answered (it does not change
    /// while the container runs).
    swarm_addr: Option<Option<IpAddr>>,
    /// The last host-address choice logged, so a retry does not log it again.
    told_host: Option<String>,
}

impl Discovery {
    /// `docker` is `--docker`, or the default socket when it exists; `app_sid` the app's pid
    /// (it leads its own session).
    pub fn new(reg: Registration, docker: Option<DockerApi>, app_sid: i32) -> Self {
        Self {
            http: docker
                .as_ref()
                .map_or_else(|| Http::new(None), docker::client),
            reg,
            docker,
            app_sid,
            told_ports: false,
            swarm_addr: None,
            told_host: None,
        }
    }

    /// One attempt; `Err` says what is still missing (retried by the caller).
    pub fn discover(&mut self) -> Result<Found, String> {
        let listeners = net::app_listeners(self.app_sid);
        let port = match self.reg.port.or_else(|| listeners.first().map(|l| l.port)) {
            Some(p) => p,
            // Before the app listens, an explicit advertised port stands in for the app's.
            None => self
                .reg
                .advertise
                .port
                .ok_or("waiting for the app to listen on a TCP port")?,
        };
        if self.reg.port.is_none() && listeners.len() > 1 && !self.told_ports {
            let all: Vec<String> = listeners.iter().map(|l| l.port.to_string()).collect();
            log::info!(
                "the app listens on ports {}; using {port} (set --port to choose)",
                all.join(", ")
            );
            self.told_ports = true;
        }
        let check = listeners
            .iter()
            .find(|l| l.port == port)
            .map_or(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), |l| {
                SocketAddr::new(check_host(l.addr), port)
            });

        let container = self.docker.as_ref().and_then(|api| {
            let id = docker::own_id()?;
            match docker::inspect(api, &self.http, &id, Duration::from_secs(2)) {
                Ok(c) => Some(c),
                Err(e) => {
                    log::debug!("{e}; not using the Docker API");
                    None
                }
            }
        });
        let name = self
            .reg
            .name
            .clone()
            .or_else(|| container.as_ref().map(|c| c.name.clone()))
            .unwrap_or_else(hostname);
        // `--name` was checked at start; a found name (Docker's, the hostname) is made valid.
        let safe = crate::contract::safe_name(&name);
        if safe != name {
            log::warn!("the name {name:?} is not a valid instance name; registering as {safe:?}");
        }
        let name = safe;

        let published = container.as_ref().and_then(|c| c.published(port));
        let use_published = match (self.reg.mode, published) {
            (Mode::Published, None) => {
                return Err(format!(
                    "--mode published: port {port} is not published by Docker (docker run -p/-P){}",
                    if container.is_none() {
                        ", or the Docker API does not know this container"
                    } else {
                        ""
                    }
                ));
            }
            (Mode::Published, Some(_)) | (Mode::Auto, Some(_)) => true,
            (Mode::Container, _) | (Mode::Auto, None) => false,
        };
        let (mut host, mut adv_port) = match (use_published, published) {
            (true, Some(bindings)) => {
                // Prefer an IPv4 binding: `-P` publishes on 0.0.0.0 and :: alike.
                let &(bind_ip, host_port) = bindings
                    .iter()
                    .find(|(ip, _)| !ip.is_some_and(|i| i.is_ipv6()))
                    .or(bindings.first())
                    .ok_or("no port binding")?;
                (self.host_ip(bind_ip)?, host_port)
            }
            _ => {
                let host = match (
                    &self.reg.advertise.host,
                    container.as_ref().and_then(|c| c.network_ip()),
                ) {
                    (Some(_), _) => String::new(), // overridden below; no need to look
                    (None, Some(ip)) => ip.to_string(),
                    (None, None) => net::container_ip()?.to_string(),
                };
                (host, port)
            }
        };
        if let Some(h) = &self.reg.advertise.host {
            host.clone_from(h);
        }
        if let Some(p) = self.reg.advertise.port {
            adv_port = p;
        }
        Ok(Found {
            name,
            address: Address {
                host,
                port: adv_port,
            },
            check,
        })
    }

    /// The host address for a published port, logged (once per change) with where it came
    /// from.
    fn host_ip(&mut self, binding: Option<IpAddr>) -> Result<String, String> {
        let (ip, why) = self.choose_host_ip(binding)?;
        let line = format!("advertising host address {ip} ({why})");
        if self.told_host.as_ref() != Some(&line) {
            if why.starts_with("default gateway") {
                log::warn!(
                    "{line}: only this host can reach it; set --host-ip to the host's own address"
                );
            } else {
                log::info!("{line}");
            }
            self.told_host = Some(line);
        }
        Ok(ip.to_string())
    }

    /// `--host-ip`, else a specific binding address, else the address of the Swarm node this
    /// container runs on (the one the other nodes use), else the default gateway (on a bridge
    /// that is this host, reachable only from itself).
    fn choose_host_ip(
        &mut self,
        binding: Option<IpAddr>,
    ) -> Result<(IpAddr, &'static str), String> {
        if let Some(ip) = self.reg.host_ip {
            return Ok((ip, "--host-ip"));
        }
        if let Some(ip) = binding.filter(|ip| !ip.is_unspecified()) {
            return Ok((ip, "the port's binding address"));
        }
        if let Some(ip) = self.swarm_node_addr()? {
            return Ok((ip, "the Swarm node address from the Docker API"));
        }
        let gw = net::default_gateway()
            .ok_or("no --host-ip, no specific HostIp, not a Swarm node, and no default gateway")?;
        Ok((
            IpAddr::V4(gw),
            "default gateway: no --host-ip, no specific HostIp, not a Swarm node",
        ))
    }

    /// The Swarm node address, asked once per answer: an engine that is no Swarm node, or an
    /// answer that cannot be used (logged), is remembered as `None`. A call that fails is an
    /// error, so the attempt is retried rather than settling on the gateway by accident.
    fn swarm_node_addr(&mut self) -> Result<Option<IpAddr>, String> {
        if let Some(known) = self.swarm_addr {
            return Ok(known);
        }
        let Some(api) = self.docker.as_ref() else {
            return Ok(None);
        };
        let addr = match docker::swarm_node_addr(api, &self.http, Duration::from_secs(2)) {
            Ok(addr) => addr,
            Err(docker::InfoError::Unusable(e)) => {
                log::warn!("{e}; not using a Swarm node address");
                None
            }
            Err(docker::InfoError::Unreachable(e)) => return Err(e),
        };
        self.swarm_addr = Some(addr);
        Ok(addr)
    }
}

/// Where to connect to reach a socket listening on `addr`. A wildcard bind is reached on
/// 127.0.0.1, also for `::`: such sockets take IPv4 too (Linux's default `bindv6only=0`), and
/// containers often have no `::1` at all (Docker disables IPv6 unless asked).
fn check_host(addr: IpAddr) -> IpAddr {
    match addr {
        a if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        // A v4-mapped address (::ffff:a.b.c.d) is reached over IPv4.
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
        other => other,
    }
}

/// The hostname, which Docker sets to the container's short id; `None` when unset.
pub fn hostname_if_set() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

/// The hostname, or `pid-N` when the system has none.
pub fn hostname() -> String {
    hostname_if_set().unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_bracket_ipv6() {
        let a = |h: &str| {
            Address {
                host: h.into(),
                port: 80,
            }
            .to_string()
        };
        assert_eq!(a("10.0.0.5"), "10.0.0.5:80");
        assert_eq!(a("fd00::5"), "[fd00::5]:80");
        assert_eq!(a("web.local"), "web.local:80");
    }

    #[test]
    fn check_hosts() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(check_host(ip("0.0.0.0")), ip("127.0.0.1"));
        assert_eq!(check_host(ip("::")), ip("127.0.0.1"));
        assert_eq!(check_host(ip("::1")), ip("::1"));
        assert_eq!(check_host(ip("172.17.0.2")), ip("172.17.0.2"));
        assert_eq!(check_host(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
