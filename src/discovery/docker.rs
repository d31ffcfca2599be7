//! The Docker Engine API, for what only Docker knows: the container's name, the host port
//! published for the app's port (`docker run -P`), and the address of the Swarm node the
//! container runs on. Finds its own container id in `/proc/self/mountinfo` or
//! `/proc/self/cgroup` (else uses the hostname, which Docker sets to the short id), asks
//! `GET /containers/<id>/json` and `GET /info` through the shared HTTP client (unix socket or
//! tcp://), and parses the answers. Read-only: it never changes anything in Docker.

use std::net::IpAddr;
use std::time::Duration;

use super::DockerApi;
use crate::http::{Http, Method};
use crate::json::{self, Value};

/// One published binding: (HostIp, HostPort).
pub type Binding = (Option<IpAddr>, u16);

/// What the API says about this container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Without Docker's leading `/`.
    pub name: String,
    /// `NetworkSettings.Ports`: container port → (HostIp, HostPort) bindings.
    pub ports: Vec<(u16, Vec<Binding>)>,
    /// `NetworkSettings.Networks`: network name → this container's address on it.
    pub networks: Vec<(String, IpAddr)>,
}

impl Container {
    /// The address on the container's own network: the first network other than Swarm's
    /// `ingress` (whose addresses only the routing mesh uses).
    pub fn network_ip(&self) -> Option<IpAddr> {
        self.networks
            .iter()
            .find(|(n, _)| n != "ingress")
            .map(|(_, ip)| *ip)
    }

    /// The bindings published for a TCP port, if any.
    pub fn published(&self, port: u16) -> Option<&[Binding]> {
        self.ports
            .iter()
            .find(|(p, b)| *p == port && !b.is_empty())
            .map(|(_, b)| b.as_slice())
    }
}

/// A 64-hex-digit container id in a mountinfo or cgroup line: `/docker/containers/<id>/`,
/// `/docker/<id>`, `docker-<id>.scope`.
pub fn container_id(mountinfo: &str, cgroup: &str) -> Option<String> {
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let from_mounts = mountinfo.lines().find_map(|line| {
        let rest = line.split("/containers/").nth(1)?;
        let id = rest.split('/').next()?;
        is_id(id).then(|| id.to_owned())
    });
    from_mounts.or_else(|| {
        cgroup.lines().find_map(|line| {
            line.split(['/', '-', '.', ':'])
                .find(|part| is_id(part))
                .map(str::to_owned)
        })
    })
}

/// `/containers/<id>/json`: the id may come from the hostname, so it is one path segment
/// whatever it holds.
fn inspect_path(id: &str) -> String {
    let segment = percent_encoding::utf8_percent_encode(id, crate::http::UNRESERVED);
    format!("/containers/{segment}/json")
}

/// Parses `GET /containers/<id>/json`.
pub fn parse_inspect(body: &str) -> Result<Container, String> {
    let v = json::parse(body).map_err(|e| format!("container JSON is {e}"))?;
    let name = json::str_at(&v, "Name")
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| !n.is_empty())
        .ok_or("container JSON without a Name")?;
    let mut ports = Vec::new();
    if let Some(map) = v
        .pointer("/NetworkSettings/Ports")
        .and_then(Value::as_object)
    {
        for (spec, bindings) in map {
            let Some(port) = spec
                .strip_suffix("/tcp")
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let bindings = bindings
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|b| {
                            let host_port = b.get("HostPort")?.as_str()?.parse::<u16>().ok()?;
                            let host_ip = json::str_at(b, "HostIp").and_then(|ip| ip.parse().ok());
                            Some((host_ip, host_port))
                        })
                        .collect()
                })
                .unwrap_or_default();
            ports.push((port, bindings));
        }
    }
    let mut networks = Vec::new();
    let no_networks = serde_json::Map::new();
    for (net, settings) in v
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .unwrap_or(&no_networks)
    {
        let ip = ["IPAddress", "GlobalIPv6Address"]
            .iter()
            .find_map(|k| json::str_at(settings, k).and_then(|a| a.parse::<IpAddr>().ok()));
        if let Some(ip) = ip {
            networks.push((net.clone(), ip));
        }
    }
    Ok(Container {
        name,
        ports,
        networks,
    })
}

/// The HTTP client for the Engine API: one bound to the socket for `unix://`.
pub fn client(api: &DockerApi) -> Http {
    match api {
        DockerApi::Unix(path) => Http::unix(path),
        DockerApi::Tcp { .. } => Http::new(None),
    }
}

/// Asks the Engine API about `id` (an id, id prefix or name), through [`client`]'s client.
pub fn inspect(
    api: &DockerApi,
    http: &Http,
    id: &str,
    timeout: Duration,
) -> Result<Container, String> {
    let body = get(api, http, &inspect_path(id), timeout)?
        .ok_or_else(|| format!("Docker API {}: no container {id:?}", describe(api)))?;
    parse_inspect(&body)
}

/// Why [`swarm_node_addr`] has no answer.
#[derive(Debug)]
pub enum InfoError {
    /// The call failed (connection, timeout): worth asking again.
    Unreachable(String),
    /// The engine answered something unusable (an error status, e.g. a socket proxy that
    /// blocks `/info`, or bad JSON): asking again will not help.
    Unusable(String),
}

/// The address this engine advertises to its Swarm (`GET /info` → `Swarm.NodeAddr`), the one
/// the other nodes reach it on; `None` when the engine is not an active Swarm node.
pub fn swarm_node_addr(
    api: &DockerApi,
    http: &Http,
    timeout: Duration,
) -> Result<Option<IpAddr>, InfoError> {
    let body = match get(api, http, "/info", timeout) {
        Ok(Some(body)) => body,
        Ok(None) => {
            return Err(InfoError::Unusable(format!(
                "Docker API {}: no /info",
                describe(api)
            )));
        }
        Err(e) if e.contains(": HTTP ") => return Err(InfoError::Unusable(e)),
        Err(e) => return Err(InfoError::Unreachable(e)),
    };
    parse_info(&body).map_err(|e| InfoError::Unusable(format!("Docker API {}: {e}", describe(api))))
}

/// Parses `GET /info`: the Swarm node address when `Swarm.LocalNodeState` is `active`.
pub fn parse_info(body: &str) -> Result<Option<IpAddr>, String> {
    let v = json::parse(body).map_err(|e| format!("/info JSON is {e}"))?;
    if json::str_at(&v, "ID").is_none() && v.get("Swarm").is_none() {
        return Err("/info JSON without ID or Swarm".into());
    }
    if v.pointer("/Swarm/LocalNodeState").and_then(Value::as_str) != Some("active") {
        return Ok(None);
    }
    let addr = v.pointer("/Swarm/NodeAddr").and_then(Value::as_str);
    match addr.map(|a| a.parse::<IpAddr>()) {
        Some(Ok(ip)) if !ip.is_unspecified() => Ok(Some(ip)),
        _ => Err(format!(
            "/info: Swarm.NodeAddr {addr:?} is not an IP address"
        )),
    }
}

/// `GET PATH` on the Engine API: the body of a 200, `None` for a 404, else an error naming
/// the endpoint.
fn get(
    api: &DockerApi,
    http: &Http,
    path: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let url = match api {
        DockerApi::Unix(_) => format!("http://localhost{path}"),
        DockerApi::Tcp { host, port } if host.contains(':') => {
            format!("http://[{host}]:{port}{path}")
        }
        DockerApi::Tcp { host, port } => format!("http://{host}:{port}{path}"),
    };
    let reply = http
        .request(Method::Get, &url, &[], None, timeout)
        .map_err(|e| format!("Docker API {}: {e}", describe(api)))?;
    match reply.status {
        200 => Ok(Some(reply.body)),
        404 => Ok(None),
        s => Err(format!("Docker API {}: HTTP {s} for {path}", describe(api))),
    }
}

fn describe(api: &DockerApi) -> String {
    match api {
        DockerApi::Unix(path) => format!("unix://{path}"),
        DockerApi::Tcp { host, port } => format!("tcp://{host}:{port}"),
    }
}

/// This container's id as Docker knows it: from mountinfo or cgroup, else the hostname.
pub fn own_id() -> Option<String> {
    let read = |p: &str| crate::file::read_text(std::path::Path::new(p), crate::file::PROC_MAX);
    container_id(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup"))
        .or_else(super::hostname_if_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inspected_id_is_one_path_segment() {
        assert_eq!(
            inspect_path("3f1a9c0b2d4e"),
            "/containers/3f1a9c0b2d4e/json"
        );
        assert_eq!(inspect_path("web_1.a-b"), "/containers/web_1.a-b/json");
        assert_eq!(
            inspect_path("../info?x=1 #"),
            "/containers/..%2Finfo%3Fx%3D1%20%23/json"
        );
    }

    const ID: &str = "3aa6e0e8cf1f7480ce4022d7a83ac3966a1d6b7032acbe5c3227cd09e15b516a";

    #[test]
    fn finds_the_container_id() {
        let mountinfo = include_str!("../../tests/fixtures/mountinfo_docker.txt");
        let cgroup = include_str!("../../tests/fixtures/cgroup_docker_v1.txt");
        assert_eq!(container_id(mountinfo, "").as_deref(), Some(ID));
        assert_eq!(container_id("", cgroup).as_deref(), Some(ID));
        let systemd = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id("", &systemd).as_deref(), Some(ID));
        assert_eq!(
            container_id("1 2 3:4 / / rw - ext4 /dev/sda rw\n", "0::/\n"),
            None
        );
        assert_eq!(
            container_id("x /containers/short/hostname y\n", "garbage"),
            None
        );
    }

    /// Hostile mountinfo, cgroup and inspect text: never a panic.
    #[test]
    fn parsers_survive_hostile_input() {
        let mountinfo = include_str!("../../tests/fixtures/mountinfo_docker.txt");
        let cgroup = include_str!("../../tests/fixtures/cgroup_docker_v1.txt");
        let inspect = include_str!("../../tests/fixtures/docker_inspect.json");
        let mut m = crate::fuzz::Mutator::new(0x000d_0c4e5);
        for _ in 0..5_000 {
            let _ = container_id(
                &m.mutate(mountinfo.as_bytes()),
                &m.mutate(cgroup.as_bytes()),
            );
            let _ = parse_inspect(&m.mutate(inspect.as_bytes()));
        }
        let deep = format!(
            r#"{{"Name":"/x","NetworkSettings":{}}}"#,
            "[".repeat(10_000)
        );
        assert!(parse_inspect(&deep).is_err());
        let odd = r#"{"Name":"/x","NetworkSettings":{"Ports":{"80/tcp":[{"HostPort":"99999"},{"HostPort":7}]},"Networks":[1]}}"#;
        assert_eq!(parse_inspect(odd).unwrap().published(80), None);
    }

    #[test]
    fn parses_a_real_inspect_answer() {
        let c = parse_inspect(include_str!("../../tests/fixtures/docker_inspect.json")).unwrap();
        assert_eq!(c.name, "hecd-fx");
        assert_eq!(
            c.published(8080),
            Some(&[(Some("127.0.0.1".parse().unwrap()), 32769)][..])
        );
        let both = c.published(9090).unwrap();
        assert_eq!(both[0], (Some("0.0.0.0".parse().unwrap()), 32768));
        assert_eq!(c.published(1234), None);
        assert_eq!(c.network_ip(), Some("172.17.0.2".parse().unwrap()));
        let swarm = r#"{"Name":"/t","NetworkSettings":{"Networks":{"ingress":{"IPAddress":"10.0.0.5"},"web":{"IPAddress":"10.0.1.7"}}}}"#;
        assert_eq!(
            parse_inspect(swarm).unwrap().network_ip(),
            Some("10.0.1.7".parse().unwrap())
        );
    }

    #[test]
    fn reads_the_swarm_node_address() {
        let info = include_str!("../../tests/fixtures/docker_info_swarm.json");
        assert_eq!(parse_info(info), Ok(Some("10.0.0.12".parse().unwrap())));
        let plain = r#"{"ID":"X","Swarm":{"NodeID":"","NodeAddr":"","LocalNodeState":"inactive"}}"#;
        assert_eq!(parse_info(plain), Ok(None));
        assert_eq!(parse_info(r#"{"ID":"X"}"#), Ok(None));
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"Swarm":{"LocalNodeState":"active","NodeAddr":"node-1"}}"#,
            r#"{"Swarm":{"LocalNodeState":"active","NodeAddr":"0.0.0.0"}}"#,
            r#"{"Swarm":{"LocalNodeState":"active"}}"#,
        ] {
            assert!(parse_info(bad).is_err(), "{bad:?}");
        }
        let mut m = crate::fuzz::Mutator::new(0x1f0);
        for _ in 0..5_000 {
            let _ = parse_info(&m.mutate(info.as_bytes()));
        }
    }

    #[test]
    fn bad_inspect_answers_are_errors() {
        for body in ["", "{", "[]", "{}", r#"{"Name": 5}"#, r#"{"Name": "/"}"#] {
            assert!(parse_inspect(body).is_err(), "{body:?}");
        }
        let odd = r#"{"Name":"/x","NetworkSettings":{"Ports":{"53/udp":null,"80/tcp":null,"81/tcp":[{"HostPort":"x"}]}}}"#;
        let c = parse_inspect(odd).unwrap();
        assert_eq!((c.published(80), c.published(81)), (None, None));
    }
}
