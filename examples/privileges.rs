//! Test app: what the app can reach of hecd-init's secrets. `privileges CHECK...` runs each
//! check and prints one line per check, `<check> ok` or `<check> denied: <error>`, then
//! `done`; with `serve` among the checks it then listens on 127.0.0.1 (any free port; `serve:N`
//! for port N on every address), prints `listening <port>` and accepts connections until
//! killed, so hecd-init can discover and register it.
//!
//! Checks: `read:PATH` (read a file), `connect:PATH` (connect to a Unix socket),
//! `ptrace-parent` (PTRACE_SEIZE hecd-init, its parent), `mem-parent` (open and read
//! `/proc/<parent>/mem`), `fds` (prints `fds 0,1,2`: the descriptors the app started with),
//! `id` (prints `id UID GID GROUPS HOME`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;

fn result(check: &str, r: std::io::Result<()>) {
    match r {
        Ok(()) => println!("{check} ok"),
        Err(e) => println!("{check} denied: {e}"),
    }
}

/// The descriptors open now, without the one reading the directory.
fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    // read_dir's own descriptor is the highest one it opened; it is closed now.
    fds.retain(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok());
    fds
}

fn main() {
    // Taken first, before this program opens anything of its own.
    let fds = open_fds();
    let ppid = std::os::unix::process::parent_id();
    let mut serve = None;
    for check in std::env::args().skip(1) {
        if let Some(path) = check.strip_prefix("read:") {
            result(&check, std::fs::read(path).map(|_| ()));
        } else if let Some(path) = check.strip_prefix("connect:") {
            result(&check, UnixStream::connect(path).map(|_| ()));
        } else if check == "ptrace-parent" {
            // SAFETY: PTRACE_SEIZE takes a pid and no memory; on success we detach at once.
            let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, ppid as libc::pid_t, 0, 0) };
            if rc == 0 {
                // SAFETY: as above.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, ppid as libc::pid_t, 0, 0) };
                result(&check, Ok(()));
            } else {
                result(&check, Err(std::io::Error::last_os_error()));
            }
        } else if check == "mem-parent" {
            let r = std::fs::File::open(format!("/proc/{ppid}/mem")).and_then(|mut f| {
                let mut buf = [0u8; 16];
                f.read(&mut buf).map(|_| ())
            });
            result(&check, r);
        } else if check == "fds" {
            let list: Vec<String> = fds.iter().map(i32::to_string).collect();
            println!("fds {}", list.join(","));
        } else if check == "id" {
            // SAFETY: getuid/getgid have no preconditions; getgroups writes at most 256 ids.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let mut groups = [0 as libc::gid_t; 256];
            // SAFETY: the buffer holds 256 gid_t.
            let n = unsafe { libc::getgroups(256, groups.as_mut_ptr()) };
            let list: Vec<String> = groups[..n.max(0) as usize]
                .iter()
                .map(u32::to_string)
                .collect();
            let home = std::env::var("HOME").unwrap_or_else(|_| "<unset>".into());
            println!("id {uid} {gid} {} {home}", list.join(","));
        } else if check == "serve" {
            serve = Some("127.0.0.1:0".to_owned());
        } else if let Some(port) = check.strip_prefix("serve:") {
            serve = Some(format!("0.0.0.0:{port}"));
        } else {
            println!("{check} unknown check");
        }
    }
    println!("done");
    let Some(addr) = serve else { return };
    let listener = TcpListener::bind(&addr).expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    println!("listening {port}");
    let _ = std::io::stdout().flush();
    for mut c in listener.incoming().flatten() {
        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
    }
}
