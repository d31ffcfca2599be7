//! hecd-haproxy, the consumer stage: starts HAProxy (master-worker) with a config rendered in
//! `--dir`, and keeps its backends and routes equal to the keys through the runtime API: one
//! backend per service (the default `--prefix`, and every prefix that route declarations
//! under `LB_PREFIX/routes/` name), one routes map that sends each request to the service whose
//! route matches its Host and the longest path prefix.
//!
//! Four threads: the follower (`follow`, etcd range + watch), the announcer (`announce`,
//! confirmed drain), a signal thread (sigwait), and the main loop, which alone talks to
//! HAProxy: it takes updates and signals from one channel, reconciles (`services`), finishes
//! drains, rewrites the config, map and server-state files after each change, and reaps
//! children. HAProxy is reloaded (SIGUSR2 to the master) only when the runtime API refused a
//! change, when the pool of prepared backends is used up, or on SIGHUP.

pub mod announce;
pub mod config;
pub mod follow;
pub mod services;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::etcd::Client;
use crate::haproxy::{Frontend, Runtime, parse_config, render_map};
use crate::http::Http;
use config::Config;
use follow::{Follower, Update};
use services::Balancer;

/// What the main loop waits for.
#[derive(Debug)]
pub enum Input {
    Etcd(Update),
    Signal(Signal),
}

/// How long to wait for the first read from etcd before starting HAProxy with the servers of
/// the last config file (etcd down at start must not keep the load balancer down).
const FIRST_READ: Duration = Duration::from_secs(3);

/// The config and server-state files are rewritten this long after a change (a burst of
/// changes is one write).
const FILE_DELAY: Duration = Duration::from_millis(200);

/// How often draining servers are looked at.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Longest wait for the announcement to be withdrawn on a stop.
const WITHDRAW: Duration = Duration::from_secs(2);

/// Exit statuses besides HAProxy's own.
pub mod status {
    pub const OK: u8 = 0;
    pub const SETUP: u8 = 1;
    pub const USAGE: u8 = 2;
}

/// Runs hecd-haproxy until a stop signal or HAProxy's end; returns the exit status.
pub fn run(config: Config, tls: Option<crate::http::Tls>) -> u8 {
    let (tx, rx) = mpsc::channel();
    if let Err(e) = spawn_signal_thread(tx.clone()) {
        log::error!("cannot set up signal handling: {e}");
        return status::SETUP;
    }
    let frontend = config.frontend.clone();
    if let Err(e) = std::fs::create_dir_all(&frontend.dir) {
        log::error!("--dir {}: {e}", frontend.dir.display());
        return status::SETUP;
    }
    let client = || {
        Client::new(
            Http::new(tls.as_ref()),
            &config.endpoints,
            crate::config::EtcdApi::Auto,
            config.access.credentials.clone(),
            &config.lb_id,
        )
    };
    let follower = Follower {
        client: client(),
        prefix: config.prefix.clone(),
        lb_prefix: config.lb_prefix.clone(),
        max_services: config.max_services,
        seed: crate::etcd::jitter_seed(&config.lb_id),
        tx,
    };
    if let Err(e) = std::thread::Builder::new()
        .name("etcd".into())
        .spawn(move || follower.run())
    {
        log::error!("cannot start the etcd thread: {e}");
        return status::SETUP;
    }

    let mut balancer = Balancer::new(
        Runtime::new(&frontend.socket_path()),
        frontend.check_options(),
        config.drain_timeout,
        frontend.map_path(),
        config.prefix.clone(),
    );
    let (announce_tx, announce_rx) = mpsc::channel();
    let announcer = announce::Announcer {
        client: client(),
        lb_prefix: config.lb_prefix.clone(),
        lb_id: config.lb_id.clone(),
        value: frontend.listen.clone(),
        messages: announce_rx,
    };
    // The first read, briefly: HAProxy then starts with the right servers at once.
    let started = Instant::now();
    let mut early = Vec::new();
    while !balancer.synced && started.elapsed() < FIRST_READ {
        match rx.recv_timeout(FIRST_READ.saturating_sub(started.elapsed())) {
            Ok(Input::Etcd(update)) => balancer.update(update),
            Ok(other) => early.push(other),
            Err(_) => break,
        }
    }
    let mut written = Files::default();
    if balancer.synced {
        // No HAProxy yet: each service gets its backend (the pool sized for them all), and the
        // config below has the rest.
        balancer.assign_backends();
        balancer.needs_reload = None;
        let routes = balancer.wanted_routes();
        written.write(&frontend, &balancer.layout(true), Some(&routes));
    } else {
        let previous = std::fs::read_to_string(frontend.config_path()).unwrap_or_default();
        let backends = parse_config(&previous);
        let servers: usize = backends.iter().map(|b| b.servers.len()).sum();
        log::warn!(
            "no answer from etcd yet; starting HAProxy with the {servers} servers of the last config"
        );
        balancer.adopt(&backends);
        let keep_map = frontend.map_path().exists();
        written.write(
            &frontend,
            &backends_or_layout(&backends, &balancer),
            (!keep_map).then(Default::default).as_ref(),
        );
    }
    if let Some(e) = written.error.take() {
        log::error!("{e}");
        return status::SETUP;
    }
    if let Err(e) = check_config(&config.haproxy, &frontend.config_path()) {
        log::error!("{e}");
        return status::SETUP;
    }
    // HAProxy warns at start when the state file named in the config is missing.
    if !frontend.state_path().exists() {
        let _ = write_atomic(&frontend.state_path(), "1\n");
    }
    let master = match start_haproxy(&config.haproxy, &frontend) {
        Ok(pid) => pid,
        Err(e) => {
            log::error!("{e}");
            return status::SETUP;
        }
    };
    log::info!(
        "HAProxy master pid {master}, listening on {}, {} services",
        frontend.listen,
        balancer
            .services
            .values()
            .filter(|s| s.backend.is_some())
            .count()
    );
    if let Err(e) = wait_for_socket(&balancer.runtime, master) {
        log::error!("{e}");
        let _ = nix::sys::signal::kill(Pid::from_raw(master), Signal::SIGTERM);
        return status::SETUP;
    }
    if let Err(e) = balancer.load() {
        log::warn!("cannot read HAProxy's servers back: {e}");
    }
    // Announced once HAProxy serves: from now on instances wait for this balancer.
    if let Err(e) = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || announcer.run())
    {
        log::error!("cannot start the announcement thread: {e}; no drain confirmations");
    }

    // The stop signal passed on, and when: the master ignores signals until its own loop
    // runs (right after start-up), so it is sent again each second until HAProxy ends.
    let mut stopping: Option<(Signal, Instant)> = None;
    let mut reloads = 0u64;
    // Since when the files lag behind HAProxy.
    let mut dirty_since: Option<Instant> = None;
    let mut pending: Vec<Input> = early;
    loop {
        let wait = if balancer.draining() || stopping.is_some() || dirty_since.is_some() {
            DRAIN_POLL
        } else {
            Duration::from_secs(1)
        };
        let input = match pending.pop() {
            Some(i) => Some(i),
            None => match rx.recv_timeout(wait) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    log::error!("the etcd and signal threads are gone");
                    return status::SETUP;
                }
            },
        };
        let mut reload = None;
        match input {
            Some(Input::Etcd(update)) if stopping.is_none() => {
                balancer.update(update);
                // Take every update already queued before touching HAProxy.
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Input::Etcd(u) => balancer.update(u),
                        other => {
                            pending.push(other);
                            break;
                        }
                    }
                }
            }
            Some(Input::Etcd(_)) => {}
            Some(Input::Signal(Signal::SIGCHLD)) => {
                if let Some(code) = reap(master) {
                    if stopping.is_some() {
                        log::info!("HAProxy stopped");
                        return status::OK;
                    }
                    log::error!("HAProxy's master ended by itself (status {code})");
                    return code;
                }
            }
            Some(Input::Signal(sig @ (Signal::SIGTERM | Signal::SIGINT))) => {
                // First: withdraw the announcement, then a soft stop (workers finish their
                // connections); second: at once.
                let (to, how) = if stopping.is_some() {
                    (Signal::SIGTERM, "now")
                } else {
                    withdraw(&announce_tx);
                    (Signal::SIGUSR1, "gracefully")
                };
                log::info!("{sig}: stopping HAProxy {how}");
                stopping = Some((to, Instant::now()));
                let _ = nix::sys::signal::kill(Pid::from_raw(master), to);
            }
            Some(Input::Signal(Signal::SIGHUP)) => reload = Some("SIGHUP".to_owned()),
            Some(Input::Signal(_)) | None => {}
        }
        if let Some((to, sent)) = &mut stopping {
            if sent.elapsed() >= Duration::from_secs(1) {
                let _ = nix::sys::signal::kill(Pid::from_raw(master), *to);
                *sent = Instant::now();
            }
            continue;
        }
        let mut changed = balancer.reconcile();
        changed |= balancer.finish_drains();
        for (prefix, name) in balancer.drained.drain(..) {
            let _ = announce_tx.send(announce::Message::Drained(prefix, name));
        }
        if let Some(why) = balancer.needs_reload.take() {
            reload = Some(why);
        }
        if let Some(why) = reload {
            reloads += 1;
            log::warn!("reloading HAProxy ({reloads} so far): {why}");
            // The config is what etcd wants, when it is known.
            let layout = balancer.layout(balancer.synced);
            let routes = if balancer.synced {
                balancer.wanted_routes()
            } else {
                balancer.routes.clone()
            };
            written.write(&frontend, &layout, Some(&routes));
            let checked = match written.error.take() {
                Some(e) => Err(e),
                None => check_config(&config.haproxy, &frontend.config_path()),
            };
            match checked {
                Ok(()) => {
                    save_state(&balancer.runtime, &frontend);
                    let _ = nix::sys::signal::kill(Pid::from_raw(master), Signal::SIGUSR2);
                    if let Err(e) = wait_for_reload(&mut balancer) {
                        log::warn!("after the reload: {e}");
                    }
                }
                Err(e) => log::error!("not reloading: {e}"),
            }
            continue;
        }
        // The files follow HAProxy within FILE_DELAY: a burst of changes is one write.
        if changed && dirty_since.is_none() {
            dirty_since = Some(Instant::now());
        }
        if dirty_since.is_some_and(|t| t.elapsed() >= FILE_DELAY) {
            written.write(&frontend, &balancer.layout(false), Some(&balancer.routes));
            if let Some(e) = written.error.take() {
                log::error!("{e}");
            }
            save_state(&balancer.runtime, &frontend);
            dirty_since = None;
        }
    }
}

/// A start without etcd: every backend of the layout, those the last config file had with
/// its servers.
fn backends_or_layout(
    backends: &[crate::haproxy::BackendConfig],
    balancer: &Balancer,
) -> Vec<crate::haproxy::BackendConfig> {
    let mut all = balancer.layout(false);
    for b in &mut all {
        if let Some(old) = backends.iter().find(|o| o.name == b.name) {
            b.clone_from(old);
        }
    }
    all
}

/// Tells the announcer to withdraw this balancer and waits for it (bounded).
fn withdraw(announce: &mpsc::Sender<announce::Message>) {
    let (done_tx, done_rx) = mpsc::channel();
    if announce.send(announce::Message::Stop(done_tx)).is_ok() {
        let _ = done_rx.recv_timeout(WITHDRAW);
    }
}

/// The config and map files as last written: each is rewritten (atomically) only when its
/// text changes.
#[derive(Default)]
struct Files {
    config: String,
    map: String,
    /// The last write that failed.
    error: Option<String>,
}

impl Files {
    /// Writes the config for `backends` and, when given, the routes map.
    fn write(
        &mut self,
        frontend: &Frontend,
        backends: &[crate::haproxy::BackendConfig],
        routes: Option<&std::collections::BTreeMap<String, String>>,
    ) {
        // The map first: a config naming it must find it.
        if let Some(routes) = routes {
            let map = render_map(routes);
            if map != self.map || !frontend.map_path().exists() {
                match write_atomic(&frontend.map_path(), &map) {
                    Ok(()) => self.map = map,
                    Err(e) => self.error = Some(e),
                }
            }
        }
        let text = frontend.render(backends);
        if text != self.config {
            match write_atomic(&frontend.config_path(), &text) {
                Ok(()) => self.config = text,
                Err(e) => self.error = Some(e),
            }
        }
    }
}

/// Blocks the signals hecd-haproxy handles (in every thread: call before spawning any) and
/// reads them on a thread that sends them to the main loop.
fn spawn_signal_thread(tx: mpsc::Sender<Input>) -> std::io::Result<()> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
        Signal::SIGPIPE,
    ] {
        set.add(s);
    }
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                if sig != Signal::SIGPIPE && tx.send(Input::Signal(sig)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Reaps every child that ended; returns the master's exit status if it was one of them.
fn reap(master: i32) -> Option<u8> {
    let mut master_status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid.as_raw() == master => {
                master_status = Some(u8::try_from(code).unwrap_or(1));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid.as_raw() == master => {
                master_status = Some(128u8.saturating_add(sig as u8));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return master_status,
            Ok(_) => {}
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Saves HAProxy's server states (health, admin state) for its next start or reload.
fn save_state(runtime: &Runtime, frontend: &Frontend) {
    match runtime.state_file_text() {
        Ok(text) => {
            if let Err(e) = write_atomic(&frontend.state_path(), &text) {
                log::warn!("{e}");
            }
        }
        Err(e) => log::warn!("cannot save the server states: {e}"),
    }
}

/// The variables that carry etcd credentials. HAProxy never gets them: its admin socket's
/// `show env`, a Lua script or a `${VAR}` in a config would hand them to whoever reads those.
pub const SECRET_VARIABLES: &[&str] = &[
    "HECD_ETCD_PASSWORD",
    "HECD_ETCD_USER",
    "HECD_ETCD_PASSWORD_FILE",
];

/// `command` with the etcd credential variables removed from its environment.
fn without_secrets(mut command: Command) -> Command {
    for name in SECRET_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// `haproxy -c`: the config must be valid before HAProxy gets it.
fn check_config(haproxy: &Path, config: &Path) -> Result<(), String> {
    let out = without_secrets(Command::new(haproxy))
        .args(["-c", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", haproxy.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    // HAProxy's reason is in its [ALERT] lines; its [NOTICE] lines only say which HAProxy.
    let alerts: Vec<&str> = text.lines().filter(|l| l.contains("[ALERT]")).collect();
    let lines: Vec<&str> = if alerts.is_empty() {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .take(5)
            .collect()
    } else {
        alerts.into_iter().take(3).collect()
    };
    Err(format!(
        "{} -c rejects {}: {}",
        haproxy.display(),
        config.display(),
        lines.join(" / ")
    ))
}

/// Starts the HAProxy master (`-W`, in the foreground, its own process group so a terminal's
/// Ctrl-C reaches hecd-haproxy, which passes it on; SIGTERM when hecd-haproxy dies). Its
/// stdout and stderr are ours.
fn start_haproxy(haproxy: &Path, frontend: &Frontend) -> Result<i32, String> {
    use std::os::unix::process::CommandExt;
    let _ = std::fs::remove_file(frontend.socket_path());
    let mut command = without_secrets(Command::new(haproxy));
    command
        .arg("-W")
        .arg("-f")
        .arg(frontend.config_path())
        .stdin(Stdio::null())
        .process_group(0);
    // SIGKILLed (or crashed), hecd-haproxy takes HAProxy with it: SIGTERM to the master, which
    // stops its workers; nothing is left serving a backend that no one keeps up to date.
    crate::sys::die_with_parent(&mut command, libc::SIGTERM);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", haproxy.display()))?;
    // Reaped by `reap` on SIGCHLD, not through `Child`.
    i32::try_from(child.id()).map_err(|_| "HAProxy's pid is out of range".to_owned())
}

/// Waits (bounded) until the worker answers on the admin socket.
fn wait_for_socket(runtime: &Runtime, master: i32) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runtime.command("show info") {
            Ok(answer) if answer.contains("Pid:") => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "HAProxy (master pid {master}) did not open its admin socket within 10 s"
                ));
            }
            _ => {
                if let Some(code) = reap(master) {
                    return Err(format!("HAProxy exited at start (status {code})"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// After SIGUSR2: waits (bounded) until the new worker has the servers of the new config,
/// then takes them (and the routes map) as what HAProxy has.
fn wait_for_reload(balancer: &mut Balancer) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = balancer.expected_servers();
    loop {
        let now = balancer.runtime.servers().map(|all| {
            all.into_iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(b, s)| (b, s.into_keys().collect()))
                .collect::<std::collections::BTreeMap<_, std::collections::BTreeSet<_>>>()
        });
        match now {
            Ok(now) if now == expected => return balancer.load().map_err(|e| e.to_string()),
            _ if Instant::now() > deadline => {
                return Err("the new worker did not show the new servers within 10 s".into());
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
