//! What the kernel says about the network from inside the container: the TCP ports the app's
//! processes listen on (`/proc/net/tcp{,6}` matched with socket inodes under `/proc/<pid>/fd`),
//! the interface carrying the default route and its address, and the default gateway. Parsers
//! are pure and tested on real samples; the readers around them only read `/proc`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A listening TCP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u64,
    /// The socket's owner (the uid column).
    pub uid: u32,
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` text into its LISTEN sockets. Malformed lines
/// are skipped (the kernel's format is fixed, but a truncated read must not fail the rest).
pub fn parse_listeners(text: &str) -> Vec<Listener> {
    // The header line does not parse (its state column is not 0A), so no need to skip it.
    text.lines().filter_map(parse_tcp_line).collect()
}

/// [`parse_listeners`] on a file read 16 KiB at a time: on a busy host `/proc/net/tcp` holds
/// many thousands of connections, and reading it whole would set hecd-init's peak memory.
fn read_listeners(path: &str) -> Vec<Listener> {
    use std::io::Read;
    let mut out = Vec::new();
    let Ok(mut file) = std::fs::File::open(path) else {
        return out;
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    // A read error ends the scan with what was parsed so far.
    while let Ok(n) = file.read(&mut buf[filled..]) {
        filled += n;
        // Parse the complete lines; keep a partial last line for the next read.
        let end = if n == 0 {
            filled
        } else {
            buf[..filled]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
        };
        out.extend(parse_listeners(&String::from_utf8_lossy(&buf[..end])));
        buf.copy_within(end..filled, 0);
        filled -= end;
        // EOF, or one line longer than the buffer (not the kernel's format): stop.
        if n == 0 || filled == buf.len() {
            break;
        }
    }
    out
}

fn parse_tcp_line(line: &str) -> Option<Listener> {
    let f: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    if f.len() < 10 || f[3] != "0A" {
        return None;
    }
    let (addr_hex, port_hex) = f[1].split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let addr = parse_hex_addr(addr_hex)?;
    let uid = f[7].parse().ok()?;
    let inode = f[9].parse().ok()?;
    Some(Listener {
        addr,
        port,
        inode,
        uid,
    })
}

/// The kernel prints addresses as 32-bit words in host byte order (little-endian here).
fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(hex, 16).ok()?.swap_bytes(),
        ))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            Some(IpAddr::V6(v6))
        }
        _ => None,
    }
}

/// The default route's interface and gateway from `/proc/net/route`.
pub fn parse_default_route(text: &str) -> Option<(String, Ipv4Addr)> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?.swap_bytes();
        Some((f[0].to_owned(), Ipv4Addr::from(gw)))
    })
}

/// The interface of the IPv6 default route (`::/0`) from `/proc/net/ipv6_route`.
pub fn parse_default_route6(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let zero = "00000000000000000000000000000000";
        (f.len() >= 10 && f[0] == zero && f[1] == "00" && f[9] != "lo").then(|| f[9].to_owned())
    })
}

/// Global IPv6 addresses of `iface` from `/proc/net/if_inet6` (scope 00 = global).
pub fn parse_inet6(text: &str, iface: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[5] != iface || f[3] != "00" {
                return None;
            }
            match parse_hex_addr_be(f[0])? {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            }
        })
        .collect()
}

/// if_inet6 prints the address as plain big-endian hex.
fn parse_hex_addr_be(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// Non-loopback IPv4 addresses by interface name, from getifaddrs, sorted by name.
pub fn interface_ipv4s() -> Vec<(String, Ipv4Addr)> {
    let mut out: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| Some((a.interface_name.clone(), a.address?.as_sockaddr_in()?.ip())))
                .filter(|(_, ip)| !ip.is_loopback())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Picks the container's address among its interfaces. One interface: that one. Several: the
/// first that does not carry the default route, because in a Swarm task the default route
/// goes through `docker_gwbridge` (host-local) while the overlay network is the one other
/// tasks reach; on a plain bridge there is only one interface anyway.
pub fn pick_container_ipv4(
    ifaces: &[(String, Ipv4Addr)],
    default_iface: Option<&str>,
) -> Option<Ipv4Addr> {
    match ifaces {
        [] => None,
        [(_, only)] => Some(*only),
        several => several
            .iter()
            .find(|(name, _)| Some(name.as_str()) != default_iface)
            .or(several.first())
            .map(|(_, ip)| *ip),
    }
}

/// The container's own address from its interfaces (see [`pick_container_ipv4`]), else a
/// global IPv6 address of the IPv6 default route's interface.
pub fn container_ip() -> Result<IpAddr, String> {
    let ifaces = interface_ipv4s();
    let default = parse_default_route(&read("/proc/net/route")).map(|(iface, _)| iface);
    if let Some(ip) = pick_container_ipv4(&ifaces, default.as_deref()) {
        if ifaces.len() > 1 {
            let all: Vec<String> = ifaces.iter().map(|(n, a)| format!("{n} {a}")).collect();
            log::info!(
                "several interfaces ({}); advertising {ip} (set --advertise to choose)",
                all.join(", ")
            );
        }
        return Ok(IpAddr::V4(ip));
    }
    let iface = parse_default_route6(&read("/proc/net/ipv6_route"))
        .ok_or("no default route (IPv4 or IPv6)")?;
    parse_inet6(&read("/proc/net/if_inet6"), &iface)
        .first()
        .map(|a| IpAddr::V6(*a))
        .ok_or_else(|| format!("IPv6 default route via {iface}, which has no global address"))
}

/// The default IPv4 gateway (on a Docker bridge: the host).
pub fn default_gateway() -> Option<Ipv4Addr> {
    parse_default_route(&read("/proc/net/route")).map(|(_, gw)| gw)
}

/// The TCP ports the processes of session `sid` (the app and everything it started in its
/// session) listen on, lowest first, with the listening address.
pub fn app_listeners(sid: i32) -> Vec<Listener> {
    let (inodes, uids) = session_sockets(sid);
    if inodes.is_empty() && uids.is_empty() {
        return Vec::new();
    }
    let mut found: Vec<Listener> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|path| read_listeners(path))
        .filter(|l| inodes.contains(&l.inode) || uids.contains(&l.uid))
        .collect();
    found.sort_by_key(|l| (l.port, l.addr.is_ipv6()));
    found.dedup_by_key(|l| l.port);
    found
}

/// Socket inodes open in any process whose session is `sid`, and the uids of the session's
/// processes whose descriptors hecd-init may not list. That is an app under `--user` when
/// hecd-init lacks CAP_SYS_PTRACE (Docker's default): `/proc/<pid>/fd` of another user's
/// process needs it, even for root. Their listening sockets are then known by owner instead
/// (the uid column of `/proc/net/tcp`): in a container's network namespace, a socket of the
/// app's user is the app's.
fn session_sockets(sid: i32) -> (HashSet<u64>, HashSet<u32>) {
    use std::os::unix::fs::MetadataExt;
    let mut inodes = HashSet::new();
    let mut uids = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return (inodes, uids);
    };
    for entry in procs.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if session_of(pid) != Some(sid) {
            continue;
        }
        // The directory may list while each link is closed (EACCES from readlink): either
        // way, this process's sockets are known by their owner instead.
        let closed = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
        let mut denied = false;
        match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => {
                for fd in fds.flatten() {
                    match std::fs::read_link(fd.path()) {
                        Ok(target) => {
                            if let Some(inode) = target
                                .to_str()
                                .and_then(|t| t.strip_prefix("socket:["))
                                .and_then(|t| t.strip_suffix(']'))
                                .and_then(|t| t.parse().ok())
                            {
                                inodes.insert(inode);
                            }
                        }
                        Err(e) => denied |= closed(&e),
                    }
                }
            }
            Err(e) => denied = closed(&e),
        }
        if denied {
            // /proc/<pid> belongs to the process's effective uid.
            if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}")) {
                uids.insert(meta.uid());
            }
        }
    }
    (inodes, uids)
}

/// The session id field of `/proc/<pid>/stat` (after the parenthesised command name).
fn session_of(pid: i32) -> Option<i32> {
    let stat = read(&format!("/proc/{pid}/stat"));
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

fn read(path: &str) -> String {
    crate::file::read_text(std::path::Path::new(path), crate::file::PROC_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_from_real_tcp_and_tcp6() {
        let v4 = parse_listeners(include_str!("../../tests/fixtures/proc_net_tcp_host.txt"));
        assert_eq!(
            v4[0],
            Listener {
                addr: "0.0.0.0".parse().unwrap(),
                port: 2024,
                inode: 1677,
                uid: 0
            }
        );
        assert!(
            v4.iter().all(|l| l.inode != 0),
            "only LISTEN sockets: {v4:?}"
        );
        let v6 = parse_listeners(include_str!(
            "../../tests/fixtures/proc_net_tcp6_docker.txt"
        ));
        assert_eq!(
            v6,
            [Listener {
                addr: "::".parse().unwrap(),
                port: 8080,
                inode: 84451,
                uid: 0
            }]
        );
        let loopback = "sl local\n 0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 77 1\n";
        assert_eq!(
            parse_listeners(loopback)[0].addr,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        let v6_loop = "h\n 0: 00000000000000000000000001000000:0050 0:0 0A 0:0 0:0 0 0 0 5 1\n";
        assert_eq!(
            parse_listeners(v6_loop)[0].addr,
            "::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn reads_a_large_file_in_chunks() {
        // 3000 connections, with LISTEN lines at the start, across chunk boundaries, and last.
        let mut text = String::from("  sl  local_address rem_address   st tx_queue rx_queue\n");
        let listen = |i: usize, port: u16| {
            format!(
                "{i:4}: 00000000:{port:04X} 00000000:0000 0A 0:0 0:0 0 0 0 {} 1\n",
                100 + i
            )
        };
        let other = |i: usize| {
            format!(
                "{i:4}: 0100007F:C621 0100007F:9DB0 06 00000000:00000000 03:0000015A 00000000 0 0 0 3 x\n"
            )
        };
        let mut want = Vec::new();
        for i in 0..3000 {
            if i == 0 || i % 137 == 0 || i == 2999 {
                text.push_str(&listen(i, 1000 + i as u16));
                want.push(1000 + i as u16);
            } else {
                text.push_str(&other(i));
            }
        }
        let path = std::env::temp_dir().join(format!("hecd-tcp-{}", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let got: Vec<u16> = read_listeners(path.to_str().unwrap())
            .iter()
            .map(|l| l.port)
            .collect();
        std::fs::remove_file(&path).unwrap();
        assert!(text.len() > 5 * 16 * 1024, "the file spans several chunks");
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_tcp_lines_are_skipped() {
        let text = "header\n\
                    garbage\n\
                    0: 0100007F 00000000:0000 0A 0 0 0 0 0 1\n\
                    0: XYZ:1F90 00000000:0000 0A 0:0 0:0 0 0 0 5\n\
                    0: 0100007F:GGGG 00000000:0000 0A 0:0 0:0 0 0 0 5\n\
                    0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 notanumber\n\
                    0: 0100007F:1F90 00000000:0000 0A\n\
                    0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 uid 0 9\n\
                    0: 0100007F:1F91 00000000:0000 0A 0:0 0:0 0 65534 0 9\n";
        assert_eq!(
            parse_listeners(text),
            [Listener {
                addr: "127.0.0.1".parse().unwrap(),
                port: 8081,
                inode: 9,
                uid: 65534
            }]
        );
        assert!(parse_listeners("").is_empty());
    }

    /// Hostile /proc text (mutations of real files, huge fields, binary): never a panic.
    #[test]
    fn proc_parsers_survive_hostile_input() {
        let seeds = [
            include_str!("../../tests/fixtures/proc_net_tcp_host.txt"),
            include_str!("../../tests/fixtures/proc_net_ipv6_route_host.txt"),
            "Iface\tDestination\tGateway\neth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\n",
            "00000000000000000000000000000001 01 80 10 80       lo\n",
        ];
        let mut m = crate::fuzz::Mutator::new(0x005e_ed0f_9a0c);
        for round in 0..20_000 {
            let text = m.mutate(seeds[round % seeds.len()].as_bytes());
            let _ = parse_listeners(&text);
            let _ = parse_default_route(&text);
            let _ = parse_default_route6(&text);
            let _ = parse_inet6(&text, "eth0");
        }
        let long = format!(
            "0: {}:1F90 00000000:0000 0A 0:0 0:0 0 0 0 5\n",
            "F".repeat(100_000)
        );
        assert!(parse_listeners(&long).is_empty());
        assert!(parse_listeners("\u{0}\u{ff}\n\n\n").is_empty());
    }

    #[test]
    fn container_address_prefers_the_overlay_in_swarm() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let plain = [("eth0".to_string(), ip("172.17.0.2"))];
        assert_eq!(
            pick_container_ipv4(&plain, Some("eth0")),
            Some(ip("172.17.0.2"))
        );
        // A Swarm task: eth0 on the overlay, eth1 on docker_gwbridge with the default route.
        let swarm = [
            ("eth0".to_string(), ip("10.0.1.2")),
            ("eth1".to_string(), ip("172.18.0.3")),
        ];
        assert_eq!(
            pick_container_ipv4(&swarm, Some("eth1")),
            Some(ip("10.0.1.2"))
        );
        assert_eq!(pick_container_ipv4(&[], None), None);
    }

    #[test]
    fn default_routes_and_addresses() {
        let route = include_str!("../../tests/fixtures/proc_net_route_docker.txt");
        assert_eq!(
            parse_default_route(route),
            Some(("eth0".into(), "172.17.0.1".parse().unwrap()))
        );
        assert_eq!(parse_default_route("Iface\tDestination\n"), None);
        let v6 = include_str!("../../tests/fixtures/proc_net_ipv6_route_host.txt");
        assert_eq!(parse_default_route6(v6), Some("eth0".into()));
        let inet6 = include_str!("../../tests/fixtures/proc_net_if_inet6_host.txt");
        assert_eq!(
            parse_inet6(inet6, "eth0"),
            ["fd00::2".parse::<Ipv6Addr>().unwrap()]
        );
        assert!(parse_inet6(inet6, "docker0").is_empty(), "link-local only");
    }
}
