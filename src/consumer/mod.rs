//! hecd-haproxy, the consumer stage: starts HAProxy (master-worker) with a config rendered in
//! `--dir`, and keeps its backends and routes equal to the keys through the runtime API: one
//! backend per service (the default `--prefix`, and every prefix that route declarations
//! under `LB_PREFIX/routes/` name), one routes map that sends each request to the service whose
//! route matches its Host and the longest path prefix.
//!
//! Five threads: the follower (`follow`, etcd range + watch), its probe (`probe`), the
//! announcer (`announce`, confirmed drain), a signal thread (sigwait), and the main loop, which
//! alone talks to HAProxy: it takes updates and signals from one channel, has the model
//! (`services`) plan what to change and the applier (`apply`) carry it out, rewrites the
//! config, map and server-state files after each change, and reaps children. HAProxy is
//! reloaded (SIGUSR2 to the master) only when the runtime API refused a change, when the pool
//! of prepared backends is used up, or on SIGHUP. A master that ends by itself is started
//! again ([`crate::haproxy::process`]), up to five times a minute.

pub mod announce;
pub mod apply;
pub mod certdir;
pub mod certs;
pub mod config;
pub mod follow;
pub mod orderer;
pub mod probe;
pub mod services;
pub mod store;

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::etcd::Client;
use crate::exit as status;
use crate::haproxy::process::{DEATH_WINDOW, Deaths, MAX_DEATHS, Process, Verdict};
use crate::haproxy::{Frontend, Runtime, parse_config, render_map};
use crate::http::Http;
use apply::Applier;
use certs::Certs;
use config::Config;
use follow::{Follower, Update};
use services::Balancer;

/// What the main loop waits for.
#[derive(Debug)]
pub enum Input {
    Etcd(Update),
    Signal(Signal),
    /// What a look at `--certs` found.
    Certs(certs::Found),
    /// The certificate store in etcd changed (`--acme`).
    Store(store::StoreUpdate),
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

/// Runs hecd-haproxy until a stop signal or HAProxy's end; returns the exit status.
pub fn run(config: Config, tls: Option<crate::http::Tls>) -> u8 {
    let (tx, rx) = mpsc::channel();
    if let Err(e) = spawn_signal_thread(tx.clone()) {
        log::error!("cannot set up signal handling: {e}");
        return status::FAILED;
    }
    let frontend = config.frontend.clone();
    if let Err(e) = std::fs::create_dir_all(&frontend.dir) {
        log::error!("--dir {}: {e}", frontend.dir.display());
        return status::FAILED;
    }
    remove_runtime_sockets(&frontend.dir);
    let mut certs = frontend
        .https
        .as_ref()
        .map(|_| Certs::new(&frontend.certs_dir()));
    if let (Some(certs), Some(dir)) = (&mut certs, &config.certs) {
        let mut watched = certdir::CertDir::new(dir);
        if let Some(found) = watched.look() {
            certs.update(&found);
        }
        let tx = tx.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("certs".into())
            .spawn(move || watched.run(move |found| tx.send(Input::Certs(found)).is_ok()))
        {
            log::error!("cannot start the certificates thread: {e}");
            return status::FAILED;
        }
    }
    let client = || {
        Client::new(
            Http::new(tls.as_ref()),
            &config.endpoints,
            crate::etcd::EtcdApi::Auto,
            config.access.credentials.clone(),
            &config.lb_id,
        )
    };
    let acme = match &config.acme {
        Some(a) => match start_acme(a, &config.lb_id, client, &tx) {
            Ok(side) => Some(side),
            Err(e) => {
                log::error!("cannot start the ACME threads: {e}");
                return status::FAILED;
            }
        },
        None => None,
    };
    let follower = Follower {
        client: client(),
        fixed: std::iter::once(config.prefix.clone())
            .chain(frontend.tcp.iter().map(|t| t.prefix.clone()))
            .collect(),
        lb_prefix: config.lb_prefix.clone(),
        max_services: config.max_services,
        forbidden: config.acme.iter().map(|a| a.cert_prefix.clone()).collect(),
        seed: crate::etcd::jitter_seed(&config.lb_id),
        probe: match probe::Probe::start(client()) {
            Ok(p) => p,
            Err(e) => {
                log::error!("cannot start the probe thread: {e}");
                return status::FAILED;
            }
        },
        tell: Box::new(move |update| tx.send(Input::Etcd(update)).is_ok()),
    };
    if let Err(e) = std::thread::Builder::new()
        .name("etcd".into())
        .spawn(move || follower.run())
    {
        log::error!("cannot start the etcd thread: {e}");
        return status::FAILED;
    }

    let mut balancer = Balancer::new(config.drain_timeout, config.prefix.clone(), &frontend.tcp);
    let applier = Applier::new(
        Runtime::new(&frontend.runtime_path()),
        frontend.check_options(),
        frontend.map_path(),
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
    if let Some(certs) = &mut certs {
        certs.assume_loaded();
        written.write_certs(&frontend, certs, true);
    }
    if let Some(e) = written.error.take() {
        log::error!("{e}");
        return status::FAILED;
    }
    let mut haproxy = Process::new(
        &config.haproxy,
        &frontend.config_path(),
        &frontend.socket_path(),
    );
    if let Err(e) = check(&haproxy, &frontend, certs.as_mut(), &mut written) {
        log::error!("{e}");
        return status::FAILED;
    }
    // HAProxy warns at start when the state file named in the config is missing.
    if !frontend.state_path().exists() {
        let _ = write_atomic(&frontend.state_path(), "1\n");
    }
    let master = match haproxy.start(&applier.runtime) {
        Ok(pid) => pid,
        Err(e) => {
            log::error!("{e}");
            return status::FAILED;
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
    applier.read_back(&mut balancer);
    // Announced once HAProxy serves: from now on instances wait for this balancer.
    if let Err(e) = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || announcer.run())
    {
        log::error!("cannot start the announcement thread: {e}; no drain confirmations");
    }
    let mut main = Main {
        frontend,
        balancer,
        applier,
        haproxy,
        written,
        announce: announce_tx,
        stopping: None,
        reloads: 0,
        dirty_since: None,
        changed: true,
        deaths: Deaths::default(),
        certs,
        acme,
    };
    main.run(&rx, early)
}

/// The main loop's state: it alone talks to HAProxy.
struct Main {
    frontend: Frontend,
    balancer: Balancer,
    applier: Applier,
    haproxy: Process,
    written: Files,
    announce: mpsc::Sender<announce::Message>,
    /// The stop signal passed on, and when: the master ignores signals until its own loop
    /// runs (right after start-up), so it is sent again each second until HAProxy ends.
    /// (graceful, when last sent).
    stopping: Option<(bool, Instant)>,
    reloads: u64,
    /// Since when the files lag behind HAProxy.
    dirty_since: Option<Instant>,
    /// An update came in since the last pass: what is wanted may differ from what HAProxy has.
    /// A quiet second with nothing changed (and nothing to retry or drain) makes no pass, so
    /// being idle costs the same whatever the number of services.
    changed: bool,
    deaths: Deaths,
    /// The certificates, with `--https`.
    certs: Option<Certs>,
    /// ACME, with `--acme`.
    acme: Option<AcmeSide>,
}

/// The main loop's side of ACME: what the store holds and which hosts the orderer was told
/// are due.
struct AcmeSide {
    domains: Vec<String>,
    renew_before: Duration,
    /// host → chain and key, as the store has them.
    stored: std::collections::BTreeMap<String, String>,
    due: mpsc::Sender<Vec<String>>,
    /// The last list sent.
    sent: Option<Vec<String>>,
    /// The challenge tokens HAProxy answers, to the orderer whenever they change: it tells
    /// the CA to look only once this balancer answers.
    answered: mpsc::Sender<std::collections::BTreeSet<String>>,
    answered_sent: std::collections::BTreeSet<String>,
    /// The routed hosts when last looked at.
    hosts: std::collections::BTreeSet<String>,
    /// When the hosts were last looked at (at least once a minute: certificates age).
    looked: Instant,
}

/// How often the hosts are looked at for renewal while nothing changes.
const RENEW_LOOK: Duration = Duration::from_secs(60);

/// Starts the store follower and the orderer.
fn start_acme(
    a: &config::AcmeConfig,
    lb_id: &str,
    client: impl Fn() -> Client,
    tx: &mpsc::Sender<Input>,
) -> std::io::Result<AcmeSide> {
    let tell = tx.clone();
    let store = store::StoreFollower {
        client: client(),
        cert_prefix: a.cert_prefix.clone(),
        seed: crate::etcd::jitter_seed(lb_id) ^ 0x5707e,
        probe: probe::Probe::start(client())?,
        tell: Box::new(move |u| tell.send(Input::Store(u)).is_ok()),
    };
    std::thread::Builder::new()
        .name("store".into())
        .spawn(move || store.run())?;
    let (due, due_rx) = mpsc::channel();
    let (answered, answered_rx) = mpsc::channel();
    let orderer = orderer::Orderer {
        client: client(),
        http: Http::new(Some(&a.tls)),
        directory: a.directory.clone(),
        email: a.email.clone(),
        cert_prefix: a.cert_prefix.clone(),
        lb_id: lb_id.to_owned(),
        renew_before: a.renew_before,
        due: due_rx,
        answered: answered_rx,
    };
    std::thread::Builder::new()
        .name("acme".into())
        .spawn(move || orderer.run())?;
    Ok(AcmeSide {
        domains: a.domains.clone(),
        renew_before: a.renew_before,
        stored: Default::default(),
        due,
        sent: None,
        answered,
        answered_sent: Default::default(),
        hosts: Default::default(),
        looked: Instant::now(),
    })
}

/// `haproxy -c` on the files written; if HAProxy refuses them while certificates are in the
/// crt-list, it is tried once more with none (they are then loaded one by one at runtime,
/// where one HAProxy refuses is skipped with a warning).
fn check(
    haproxy: &Process,
    frontend: &Frontend,
    certs: Option<&mut Certs>,
    written: &mut Files,
) -> Result<(), String> {
    let Err(e) = haproxy.check() else {
        return Ok(());
    };
    let Some(certs) = certs.filter(|c| c.loaded_paths().next().is_some()) else {
        return Err(e);
    };
    log::warn!("{e}; starting without certificates, then loading them one by one");
    certs.assume_none();
    written.write_certs(frontend, certs, false);
    match written.error.take() {
        Some(e) => Err(e),
        None => haproxy.check(),
    }
}

impl Main {
    /// A change of the certificate store: certificates loaded or dropped, challenge answers
    /// set or withdrawn, and the hosts due looked at again.
    fn store(&mut self, update: store::StoreUpdate) {
        let (Some(acme), Some(certs)) = (&mut self.acme, &mut self.certs) else {
            return;
        };
        let now = certs::unix_now();
        match update {
            store::StoreUpdate::All(all) => {
                certs.replace_store(&all.certs, now);
                certs.replace_answers(&all.challenges);
                acme.stored = all.certs;
            }
            store::StoreUpdate::Cert(host, pem) => {
                certs.update_store(&host, pem.as_deref(), now);
                match pem {
                    Some(p) => acme.stored.insert(host, p),
                    None => acme.stored.remove(&host),
                };
            }
            store::StoreUpdate::Challenge(token, answer) => {
                certs.set_answer(&token, answer.as_deref());
            }
        }
        self.changed = true;
        self.look_for_due(true);
    }

    /// Tells the orderer which hosts are due, when that changed: when the store or the
    /// certificate files changed (`force`), when the routed hosts changed, and once a minute
    /// besides (certificates age). Nothing without `--acme`.
    fn look_for_due(&mut self, force: bool) {
        let (Some(acme), Some(certs)) = (&mut self.acme, &self.certs) else {
            return;
        };
        let hosts: std::collections::BTreeSet<String> = self
            .balancer
            .routes
            .keys()
            .filter_map(|k| k.split('/').next())
            .map(str::to_owned)
            .collect();
        if !force && hosts == acme.hosts && acme.looked.elapsed() < RENEW_LOOK {
            return;
        }
        acme.looked = Instant::now();
        acme.hosts.clone_from(&hosts);
        let wanted = crate::acme::plan::wanted(&hosts, &acme.domains, &certs.file_names());
        let at = certs::unix_now();
        let due: Vec<String> = wanted
            .into_iter()
            .filter(|h| {
                crate::acme::plan::due(
                    h,
                    acme.stored.get(h).map(String::as_str),
                    at,
                    acme.renew_before,
                )
            })
            .collect();
        if acme.sent.as_ref() != Some(&due) {
            if !due.is_empty() {
                log::info!("ACME: due: {}", due.join(", "));
            }
            let _ = acme.due.send(due.clone());
            acme.sent = Some(due);
        }
    }

    /// Takes inputs until a stop or a failure; returns the exit status.
    fn run(&mut self, rx: &mpsc::Receiver<Input>, mut pending: Vec<Input>) -> u8 {
        loop {
            let busy =
                self.balancer.draining() || self.stopping.is_some() || self.dirty_since.is_some();
            let wait = if busy {
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
                        return status::FAILED;
                    }
                },
            };
            let mut reload = None;
            match input {
                Some(Input::Etcd(update)) if self.stopping.is_none() => {
                    self.changed = true;
                    self.balancer.update(update);
                    // Take every update already queued before touching HAProxy.
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Input::Etcd(u) => self.balancer.update(u),
                            other => {
                                pending.push(other);
                                break;
                            }
                        }
                    }
                }
                Some(Input::Etcd(_)) => {}
                Some(Input::Certs(found)) => {
                    if let Some(certs) = &mut self.certs {
                        self.changed |= certs.update(&found);
                    }
                    self.look_for_due(true);
                }
                Some(Input::Store(update)) => self.store(update),
                Some(Input::Signal(sig @ (Signal::SIGTERM | Signal::SIGINT))) => self.stop(sig),
                Some(Input::Signal(Signal::SIGHUP)) => reload = Some("SIGHUP".to_owned()),
                // SIGCHLD, or a quiet second: a master that ended is seen either way.
                Some(Input::Signal(_)) | None => {}
            }
            if let Some(status) = self.watch_master() {
                return status;
            }
            if let Some((gracefully, sent)) = &mut self.stopping {
                if sent.elapsed() >= Duration::from_secs(1) {
                    self.haproxy.stop(*gracefully);
                    *sent = Instant::now();
                }
                continue;
            }
            self.look_for_due(false);
            self.apply(reload);
        }
    }

    /// On a stop signal: the first withdraws the announcement, then stops HAProxy softly
    /// (workers finish their connections); a second stops it at once.
    fn stop(&mut self, sig: Signal) {
        let gracefully = self.stopping.is_none();
        if gracefully {
            withdraw(&self.announce);
        }
        let how = if gracefully { "gracefully" } else { "now" };
        log::info!("{sig}: stopping HAProxy {how}");
        self.stopping = Some((gracefully, Instant::now()));
        self.haproxy.stop(gracefully);
    }

    /// Reaps; when the master has ended: after a stop, the exit status; else HAProxy is
    /// started again from what etcd wants, or, the fifth time within a minute, hecd-haproxy
    /// gives up (status 1) so that its orchestrator starts it anew.
    fn watch_master(&mut self) -> Option<u8> {
        let ended = self.haproxy.reap()?;
        if self.stopping.is_some() {
            log::info!("HAProxy stopped");
            return Some(status::OK);
        }
        let mut why = crate::supervisor::reap::describe(ended);
        loop {
            let window = DEATH_WINDOW.as_secs();
            match self.deaths.record(Instant::now()) {
                Verdict::GiveUp => {
                    log::error!(
                        "HAProxy's master {why}: {MAX_DEATHS} times within {window} s; giving up"
                    );
                    return Some(status::FAILED);
                }
                Verdict::Restart(n) => log::error!(
                    "HAProxy's master {why}; starting it again ({n} of {MAX_DEATHS} within {window} s)"
                ),
            }
            match self.restart() {
                Ok(pid) => {
                    log::info!("HAProxy master pid {pid} serves again");
                    return None;
                }
                Err(e) => {
                    // A start that failed counts as another death.
                    why = format!("did not start again ({e})");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Writes the files from what etcd wants (when known), checks them and starts HAProxy;
    /// then reads back what it has.
    fn restart(&mut self) -> Result<i32, String> {
        // No worker is left to confuse: the new generation's socket at once.
        self.frontend.generation += 1;
        self.next_runtime();
        self.write_wanted();
        if let Some(e) = self.written.error.take() {
            return Err(e);
        }
        check(
            &self.haproxy,
            &self.frontend,
            self.certs.as_mut(),
            &mut self.written,
        )?;
        let pid = self.haproxy.start(&self.applier.runtime)?;
        self.applier.read_back(&mut self.balancer);
        self.dirty_since = None;
        self.changed = true;
        Ok(pid)
    }

    /// hecd-haproxy's commands go to the admin socket of the config's generation; the last
    /// one's file is removed (its worker is stopping, or gone).
    fn next_runtime(&mut self) {
        let old = std::mem::replace(
            &mut self.applier.runtime,
            Runtime::new(&self.frontend.runtime_path()),
        );
        if old.path() != self.applier.runtime.path() {
            let _ = std::fs::remove_file(old.path());
        }
    }

    /// The config and map for a reload or a restart: what etcd wants, once it has answered.
    fn write_wanted(&mut self) {
        let b = &mut self.balancer;
        let layout = b.layout(b.synced);
        let routes = if b.synced {
            b.wanted_routes()
        } else {
            b.routes.clone()
        };
        self.written.write(&self.frontend, &layout, Some(&routes));
        if let Some(certs) = &mut self.certs {
            certs.assume_loaded();
            self.written.write_certs(&self.frontend, certs, true);
        }
    }

    /// Makes HAProxy equal to what is wanted: through the runtime API, or by a reload when it
    /// refused or one was asked for; the files follow within FILE_DELAY.
    fn apply(&mut self, mut reload: Option<String>) {
        let certs_retry = self.certs.as_ref().is_some_and(|c| c.retry);
        let due = self.changed
            || certs_retry
            || self.balancer.retry
            || self.balancer.draining()
            || self.dirty_since.is_some()
            || reload.is_some();
        if !due {
            return;
        }
        self.changed = false;
        self.balancer.retry = false;
        let (mut changed, needs_reload) = self.applier.pass(&mut self.balancer);
        if let Some(certs) = &mut self.certs {
            certs.retry = false;
            changed |= self
                .applier
                .pass_certs(certs, &apply::CertFiles::of(&self.frontend));
            if let Some(acme) = &mut self.acme {
                let answered = certs.answered_tokens();
                if answered != acme.answered_sent {
                    let _ = acme.answered.send(answered.clone());
                    acme.answered_sent = answered;
                }
            }
        }
        if changed {
            // Routes may have come or gone: hosts to order for with them.
            self.look_for_due(false);
        }
        for (prefix, name) in self.balancer.drained.drain(..) {
            let _ = self.announce.send(announce::Message::Drained(prefix, name));
        }
        if let Some(why) = needs_reload {
            reload = Some(why);
        }
        if let Some(why) = reload {
            self.reload(&why);
            return;
        }
        // The files follow HAProxy within FILE_DELAY: a burst of changes is one write.
        if changed && self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
        if self.dirty_since.is_some_and(|t| t.elapsed() >= FILE_DELAY) {
            let layout = self.balancer.layout(false);
            self.written
                .write(&self.frontend, &layout, Some(&self.balancer.routes));
            if let Some(certs) = &self.certs {
                self.written.write_certs(&self.frontend, certs, false);
            }
            if let Some(e) = self.written.error.take() {
                log::error!("{e}");
            }
            save_state(&self.applier.runtime, &self.frontend);
            self.dirty_since = None;
        }
    }

    fn reload(&mut self, why: &str) {
        // Whatever comes of it, the next pass compares again.
        self.changed = true;
        self.reloads += 1;
        log::warn!("reloading HAProxy ({} so far): {why}", self.reloads);
        self.frontend.generation += 1;
        self.write_wanted();
        let checked = match self.written.error.take() {
            Some(e) => Err(e),
            None => check(
                &self.haproxy,
                &self.frontend,
                self.certs.as_mut(),
                &mut self.written,
            ),
        };
        match checked {
            Ok(()) => {
                save_state(&self.applier.runtime, &self.frontend);
                self.haproxy.reload();
                // The config passed `haproxy -c`: from now on its generation is HAProxy's.
                self.next_runtime();
                if let Err(e) = wait_for_reload(&self.applier, &mut self.balancer) {
                    log::warn!("after the reload: {e}; reading HAProxy's state again");
                    self.balancer.stale = true;
                }
            }
            Err(e) => log::error!("not reloading: {e}"),
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
    crt_list: Option<String>,
    hosts: Option<String>,
    answers: Option<String>,
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

impl Files {
    /// Writes the certificates' files for what `certs` serves: with `copies`, every wanted
    /// certificate's copy that is missing; the crt-list and the hosts map; then removes the
    /// copies nothing serves any more.
    fn write_certs(&mut self, frontend: &Frontend, certs: &Certs, copies: bool) {
        if copies {
            for (path, pem) in certs.wanted_files() {
                if !path.exists()
                    && let Err(e) = apply::write_private(&path, &pem)
                {
                    self.error = Some(e);
                }
            }
        }
        for (path, text, last) in [
            (
                frontend.crt_list_path(),
                certs.crt_list(),
                &mut self.crt_list,
            ),
            (
                frontend.hosts_map_path(),
                certs.hosts_map(),
                &mut self.hosts,
            ),
            (
                frontend.answers_map_path(),
                certs.answers_map(),
                &mut self.answers,
            ),
        ] {
            if last.as_ref() != Some(&text) || !path.exists() {
                match write_atomic(&path, &text) {
                    Ok(()) => *last = Some(text),
                    Err(e) => self.error = Some(e),
                }
            }
        }
        let served: std::collections::BTreeSet<&std::path::PathBuf> =
            certs.loaded_paths().collect();
        if let Ok(entries) = std::fs::read_dir(frontend.certs_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !served.contains(&path) {
                    let _ = std::fs::remove_file(&path);
                }
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

/// Removes the generations' admin sockets an earlier run left in `dir` (`runtime-N.sock`).
fn remove_runtime_sockets(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_runtime = name
            .to_str()
            .and_then(|n| n.strip_prefix("runtime-")?.strip_suffix(".sock"))
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()));
        if is_runtime {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// After SIGUSR2: waits (bounded) until the new worker has the servers of the new config,
/// then takes them (and the routes map) as what HAProxy has. Only the new worker answers on
/// the new generation's admin socket (see [`Frontend::runtime_path`]).
fn wait_for_reload(applier: &Applier, balancer: &mut Balancer) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = balancer.expected_servers();
    loop {
        let now = applier.runtime.servers().map(|all| {
            all.into_iter()
                .filter(|(_, s)| !s.is_empty())
                .map(|(b, s)| (b, s.into_keys().collect()))
                .collect::<std::collections::BTreeMap<_, std::collections::BTreeSet<_>>>()
        });
        match now {
            Ok(now) if now == expected => {
                return applier.load(balancer).map_err(|e| e.to_string());
            }
            _ if Instant::now() > deadline => {
                return Err("the new worker did not show the new servers within 10 s".into());
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
