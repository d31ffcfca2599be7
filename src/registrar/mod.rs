//! Registration in etcd, off the supervisor's thread so no network call can delay signal
//! handling or reaping. Two threads:
//!
//! - the registrar: discovery → waiting for the first passing check → registered (lease kept
//!   alive at TTL/3) ⇄ unhealthy (key removed after two failed checks), with backoff on etcd
//!   errors. Every decision is [`machine`]'s, a pure state machine; the thread carries out its
//!   actions. Its probes, Docker calls and etcd requests block; its deadlines are times it
//!   sleeps until on its wake channel.
//! - the stop path (`stop`): idle until the supervisor asks for deregistration, then deletes
//!   the key and revokes the lease at once over its own connection, whatever the registrar is
//!   in the middle of. A request in flight on the registrar is abandoned, never waited for.
//!
//! They share `Shared`: the key, the lease that may carry it, and a `stopping` flag. The
//! registrar records a lease there *before* sending the put that uses it, and sends nothing new
//! once `stopping` is set, so whatever it has in flight, the stop path's delete and revoke leave
//! no key behind (a put that lands late is under a revoked lease, and fails). Neither thread
//! spawns, waits for, or signals processes. Both tell the supervisor what changed through one
//! channel plus a byte on a pipe the supervisor polls.

mod confirm;
pub mod machine;
pub mod plan;
mod stop;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use crate::check;
use crate::check::Check;
use crate::discovery::{Discovery, Found};
use crate::etcd::{Backoff, Client, EtcdError, Lease};
use crate::http::Http;

use machine::{Action, Event, Machine, State};
pub use plan::{Plan, plan};

/// From the registrar threads to the supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum News {
    /// The key is now present (true) or absent (false) in etcd.
    Registered(bool),
    /// Deregistration finished (or failed; the lease then expires by itself); true when a key
    /// was, or may have been, in etcd at that moment.
    Deregistered(bool),
    /// The registrar thread ended by a bug (a panic): no more registration; the stop path
    /// still deletes the key on a stop.
    RegistrarFailed,
    /// During the drain: the load balancers (ids) that have confirmed, and those still silent.
    DrainWaiting {
        confirmed: Vec<String>,
        silent: Vec<String>,
    },
    /// Every load balancer announced at the delete has confirmed (`confirmed` of `of`) or gone
    /// away (`gone`, their announcement's lease ended): the drain can end.
    DrainConfirmed {
        confirmed: usize,
        of: usize,
        gone: Vec<String>,
    },
}

/// The supervisor's side of the registration threads.
pub struct Handle {
    stop: Sender<Instant>,
    wake_registrar: Sender<()>,
    news: Receiver<News>,
    wake: OwnedFd,
}

impl Handle {
    /// The descriptor that becomes readable when news arrives (or the threads end).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Asks for deregistration by `deadline`; returns at once, the answer comes as news.
    /// False when the stop path is no longer running.
    pub fn deregister(&self, deadline: Instant) -> bool {
        let asked = self.stop.send(deadline).is_ok();
        // Wake the registrar so it ends instead of starting anything new (ignored if it has
        // ended already, or is inside a call: it sees `stopping` when that returns).
        let _ended = self.wake_registrar.send(());
        asked
    }

    /// Collects the news so far; the flag is false once both threads have ended.
    pub fn take_news(&self) -> (Vec<News>, bool) {
        let mut buf = [0u8; 64];
        // Empty the pipe first, so a byte written after this read wakes the next poll.
        while matches!(nix::unistd::read(&self.wake, &mut buf), Ok(n) if n > 0) {}
        let mut out = Vec::new();
        loop {
            match self.news.try_recv() {
                Ok(n) => out.push(n),
                Err(TryRecvError::Empty) => return (out, true),
                Err(TryRecvError::Disconnected) => return (out, false),
            }
        }
    }
}

/// Starts the registrar and the stop path for the app `app_pid`; `drain` is `--drain` (the
/// stop path awaits load balancers' confirmations that long at most). Call after the signal
/// mask is set, so the threads inherit it.
pub fn start(plan: Plan, app_pid: i32, drain: Duration) -> io::Result<Handle> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let (stop_tx, stop_rx) = mpsc::channel();
    let (wake_tx, wake_rx) = mpsc::channel();
    let (news_tx, news_rx) = mpsc::channel();
    let notifier = Notifier {
        news: news_tx,
        wake: Arc::new(write),
    };
    let reg = &plan.registration;
    let identity = identity(reg);
    let client = Client::new(
        Http::new(plan.tls.as_ref()),
        &reg.endpoints,
        reg.api,
        reg.access.credentials.clone(),
        &identity,
    );
    let shared = Arc::new(Mutex::new(Shared {
        stopping: false,
        maybe_present: false,
        key: String::new(),
        lease: None,
        client: client.clone(),
    }));
    // The stop path first: it must exist whenever a key can.
    let stopper = stop::Stopper {
        shared: Arc::clone(&shared),
        http: Http::new(plan.tls.as_ref()),
        ttl: reg.ttl,
        notifier: notifier.clone(),
        confirm: (!drain.is_zero()).then(|| (reg.lb_prefix.clone(), drain)),
    };
    crate::sys::spawn_thread("deregister", move || stopper.run(&stop_rx))?;
    let registrar_notifier = notifier.clone();
    crate::sys::spawn_thread("registrar", move || {
        let run = AssertUnwindSafe(|| {
            Registrar::new(plan, client, app_pid, shared, notifier).run(&wake_rx)
        });
        if catch_unwind(run).is_err() {
            // The panic hook has printed the bug; the lease runs out without keepalives.
            registrar_notifier.send(News::RegistrarFailed);
        }
    })?;
    Ok(Handle {
        stop: stop_tx,
        wake_registrar: wake_tx,
        news: news_rx,
        wake: read,
    })
}

/// What picks this instance's first etcd endpoint and seeds its jitter: `--name`, else the
/// hostname (Docker's container id; a name found later through Docker comes too late for the
/// client, which exists before discovery).
fn identity(reg: &crate::config::Registration) -> String {
    reg.name.clone().unwrap_or_else(crate::discovery::hostname)
}

/// Sends news and pokes the supervisor. Dropping one (a thread ended, even by a panic) pokes
/// once more, so the supervisor sees the channel close when the last one goes.
#[derive(Clone)]
struct Notifier {
    news: Sender<News>,
    wake: Arc<OwnedFd>,
}

impl Notifier {
    fn send(&self, news: News) {
        // A closed channel means the supervisor is exiting; nothing left to tell.
        if self.news.send(news).is_ok() {
            self.poke();
        }
    }

    fn poke(&self) {
        match nix::unistd::write(&*self.wake, b"!") {
            // EAGAIN: the pipe is full of unread pokes, which wake the supervisor anyway.
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => log::debug!("cannot wake the supervisor: {e}"),
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.poke();
    }
}

/// What the registrar and the stop path share. Held only for a few assignments, never across
/// a request.
struct Shared {
    /// A stop was asked for: the registrar sends nothing new.
    stopping: bool,
    /// True from just before a put is sent until a delete of the key is confirmed: load
    /// balancers may see the key.
    maybe_present: bool,
    /// `PREFIX/NAME`, once discovery found the name.
    key: String,
    /// The lease the key is (or is about to be) put under.
    lease: Option<Lease>,
    /// The registrar's client as of its last change (API, endpoint, token), to fork from.
    client: Client,
}

/// Locks `Shared`, also after a panic elsewhere while it was held (its fields stay valid:
/// each is written with a single assignment).
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The registrar thread: carries out what [`machine::Machine`] decides (discovery, checks,
/// grants, puts, keepalives, removals) and feeds back what came of it.
struct Registrar {
    machine: Machine,
    client: Client,
    probe_http: Http,
    check: Check,
    check_interval: Duration,
    discovery: Discovery,
    prefix: String,
    /// What discovery found: the key `PREFIX/NAME`, its value `HOST:PORT`, where the check
    /// goes, and the route declaration (`LB_PREFIX/routes/PREFIX/NAME` = the routes, put with
    /// the key under the same lease; `None` without `--route`).
    key: String,
    value: String,
    check_addr: SocketAddr,
    declaration: Option<(String, String)>,
    /// `--route` (sorted), and `--lb-prefix` for the declaration's key.
    routes: Vec<crate::contract::Route>,
    lb_prefix: String,
    /// v2 was found although routes are declared: said once.
    told_v2_routes: bool,
    ttl: Duration,
    /// The TTL etcd granted the lease (it raises TTLs below its minimum), when it said.
    granted_ttl: Option<u64>,
    /// Why the last check, put or keepalive failed, for the message that follows the decision.
    last_error: String,
    shared: Arc<Mutex<Shared>>,
    notifier: Notifier,
}

/// The registrar was asked to stop (or the supervisor is gone): it ends.
struct Stopping;

impl Registrar {
    fn new(
        plan: Plan,
        client: Client,
        app_pid: i32,
        shared: Arc<Mutex<Shared>>,
        notifier: Notifier,
    ) -> Self {
        let reg = plan.registration;
        let now = Instant::now();
        // Jitter only needs instances started together to differ.
        let seed = crate::etcd::jitter_seed(&identity(&reg));
        let cap = (reg.ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(5));
        let settings = machine::Settings {
            has_check: reg.check != Check::None,
            check_interval: reg.check_interval,
            ttl: reg.ttl,
        };
        Self {
            machine: Machine::new(
                settings,
                Backoff::new(Duration::from_millis(200), cap, seed),
                now,
            ),
            client,
            probe_http: Http::new(None),
            check: reg.check.clone(),
            check_interval: reg.check_interval,
            prefix: reg.prefix.clone(),
            routes: reg.routes.clone(),
            lb_prefix: reg.lb_prefix.clone(),
            declaration: None,
            told_v2_routes: false,
            ttl: reg.ttl,
            discovery: Discovery::new(reg, plan.docker, app_pid),
            key: String::new(),
            value: String::new(),
            check_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            granted_ttl: None,
            last_error: String::new(),
            shared,
            notifier,
        }
    }

    fn run(mut self, wake: &Receiver<()>) {
        loop {
            let due = self.machine.deadline();
            let woken = wake.recv_timeout(due.saturating_duration_since(Instant::now()));
            let stop = match woken {
                Err(RecvTimeoutError::Timeout) => self.work().is_err(),
                // Woken by a stop, or the supervisor is gone: hecd-init is exiting.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
            };
            if stop || lock(&self.shared).stopping {
                return;
            }
        }
    }

    /// Carries out what is due, each answer fed back, until nothing is.
    fn work(&mut self) -> Result<(), Stopping> {
        while let Some(action) = self.machine.next(Instant::now()) {
            let event = match action {
                Action::Discover => self.discover(),
                Action::Probe => self.run_check(),
                Action::Register(lease) => self.register(lease)?,
                Action::Keepalive(lease) => self.keepalive(lease)?,
                // `next` gives only those four; the others follow from answers.
                other => {
                    self.carry_out(other)?;
                    continue;
                }
            };
            let was_healthy = self.machine.healthy();
            let follow = self.machine.step(event.clone(), Instant::now());
            self.tell(&event, was_healthy);
            for action in follow {
                self.carry_out(action)?;
            }
        }
        Ok(())
    }

    /// The log line of a decision the machine made.
    fn tell(&self, event: &Event, was_healthy: bool) {
        let now = Instant::now();
        match (event, &self.machine.state) {
            (Event::CheckPassed, _) if !was_healthy => {
                log::info!("check passed: {} on {}", self.check, self.check_addr);
            }
            (Event::CheckFailed, State::Unhealthy { .. }) if was_healthy => log::warn!(
                "check failed twice in a row ({}); removing {}",
                self.last_error,
                self.key
            ),
            (Event::PutFailed { .. }, State::Ready { at }) => log::warn!(
                "cannot register {}: {}; retrying in {}ms",
                self.key,
                self.last_error,
                at.saturating_duration_since(now).as_millis()
            ),
            (Event::KeepaliveFailed, State::Registered { keepalive }) => log::warn!(
                "keepalive of {} failed: {}; retrying in {}ms",
                self.machine
                    .lease()
                    .map_or_else(String::new, |l| l.to_string()),
                self.last_error,
                keepalive.saturating_duration_since(now).as_millis()
            ),
            _ => {}
        }
    }

    fn carry_out(&mut self, action: Action) -> Result<(), Stopping> {
        match action {
            Action::Notify(present) => self.notifier.send(News::Registered(present)),
            Action::ForgetLease => self.sync(|s| {
                s.lease = None;
                s.maybe_present = false;
            })?,
            Action::Remove(lease) => self.remove(lease)?,
            // Asked for by `next`, carried out in `work`.
            Action::Discover | Action::Probe | Action::Register(_) | Action::Keepalive(_) => {}
        }
        Ok(())
    }

    /// Finds the name and address; retried every 100 ms until the app listens.
    fn discover(&mut self) -> Event {
        match self.discovery.discover() {
            Ok(Found {
                name,
                address,
                check,
            }) => {
                self.key = crate::contract::server_key(&self.prefix, &name);
                self.value = address.to_string();
                if !self.routes.is_empty() {
                    self.declaration = Some((
                        crate::contract::route_key(&self.lb_prefix, &self.prefix, &name),
                        crate::contract::routes_value(&self.routes),
                    ));
                }
                self.check_addr = check;
                lock(&self.shared).key = self.key.clone();
                log::info!(
                    "will register {} = {} once the {} check on {check} passes",
                    self.key,
                    self.value,
                    self.check
                );
                Event::Found
            }
            Err(why) => {
                log::debug!("discovery: {why}");
                Event::NotFound
            }
        }
    }

    fn run_check(&mut self) -> Event {
        let timeout = self
            .check_interval
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        match check::probe(&self.check, &self.probe_http, self.check_addr, timeout) {
            Ok(()) => Event::CheckPassed,
            Err(e) => {
                log::debug!("check failed: {e}");
                self.last_error = e.to_string();
                Event::CheckFailed
            }
        }
    }

    /// Publishes the client's state (API, endpoint, token) for the stop path, and says whether
    /// a stop was asked for.
    fn sync(&self, change: impl FnOnce(&mut Shared)) -> Result<(), Stopping> {
        let mut shared = lock(&self.shared);
        if shared.stopping {
            return Err(Stopping);
        }
        shared.client = self.client.clone();
        change(&mut shared);
        Ok(())
    }

    /// Grants a lease if there is none, records it for the stop path, then puts the key (and
    /// the route declaration) under it in one transaction.
    fn register(&mut self, lease: Option<Lease>) -> Result<Event, Stopping> {
        let deadline = Instant::now() + (self.ttl / 3).max(Duration::from_secs(2));
        let ttl = self.ttl.as_secs();
        let granted = match lease {
            Some(lease) => Ok(lease),
            None => self
                .client
                .grant_with_ttl(ttl, deadline)
                .map(|(lease, granted)| {
                    if let Some(g) = granted.filter(|g| *g != ttl) {
                        log::warn!(
                            "etcd granted a TTL of {g}s for --ttl {ttl}s (etcd's minimum is about \
                             1.5 election timeouts, 2 s by default); the key outlives a crash by that"
                        );
                    }
                    self.granted_ttl = granted;
                    lease
                }),
        };
        let kept = granted.as_ref().ok().copied();
        let result = granted.and_then(|lease| {
            // Recorded before the put is sent: a stop from now on revokes this lease, so the
            // put either lands before the revoke (and is deleted with it) or fails after it.
            self.sync(|s| {
                s.lease = Some(lease);
                s.maybe_present = true;
            })
            .map_err(|Stopping| EtcdError::OutOfTime)?;
            let mut puts = vec![(self.key.as_str(), self.value.as_str())];
            if let Some((k, v)) = &self.declaration {
                puts.push((k, v));
            }
            // One transaction: a balancer sees the instance and its routes at one revision.
            let result = self.client.put_all(&puts, lease, ttl, deadline).map(|()| lease);
            if self.declaration.is_some() && self.client.is_v2() && !self.told_v2_routes {
                self.told_v2_routes = true;
                log::warn!("routes are not written: this etcd speaks only v2, and balancers read routes with v3");
            }
            result
        });
        if lock(&self.shared).stopping {
            if let Ok(lease) = result {
                // A put that landed after the stop path's delete (v2 has no lease to revoke
                // it with): take it back out.
                let until = Instant::now() + Duration::from_secs(2);
                if let Err(e) = self.client.deregister(lease, &self.key, until) {
                    log::warn!("cannot remove {} put during the stop: {e}", self.key);
                }
            }
            return Err(Stopping);
        }
        Ok(match result {
            Ok(lease) => {
                log::info!(
                    "registered {} = {} ({lease}, ttl {}s)",
                    self.key,
                    self.value,
                    self.granted_ttl.unwrap_or(self.ttl.as_secs())
                );
                Event::Put(lease)
            }
            Err(e) => {
                self.last_error = e.to_string();
                // The lease expired before the put: grant a fresh one next time.
                let lease = if e == EtcdError::Gone { None } else { kept };
                Event::PutFailed { lease }
            }
        })
    }

    fn keepalive(&mut self, lease: Lease) -> Result<Event, Stopping> {
        let deadline = Instant::now() + self.ttl / 3;
        let result = self
            .client
            .keepalive(lease, &self.key, self.ttl.as_secs(), deadline);
        self.sync(|_| {})?;
        Ok(match result {
            Ok(()) => {
                log::debug!("kept {lease} alive");
                Event::KeptAlive
            }
            Err(EtcdError::Gone) => {
                log::warn!(
                    "{lease} is gone (expired, revoked, or etcd lost it); registering {} again",
                    self.key
                );
                Event::LeaseGone
            }
            Err(e) => {
                self.last_error = e.to_string();
                Event::KeepaliveFailed
            }
        })
    }

    /// Deletes the key and revokes the lease (two failed checks); on failure the lease runs
    /// out by itself, since it is no longer kept alive.
    fn remove(&mut self, lease: Lease) -> Result<(), Stopping> {
        let deadline = Instant::now() + Duration::from_secs(2);
        match self.client.deregister(lease, &self.key, deadline) {
            Ok(_) => {
                log::info!("deregistered {} (revoked {lease})", self.key);
                self.sync(|s| {
                    s.lease = None;
                    s.maybe_present = false;
                })?;
            }
            Err(e) => log::warn!(
                "cannot deregister {}: {e}; etcd drops it when the lease expires (within {}s)",
                self.key,
                self.ttl.as_secs()
            ),
        }
        Ok(())
    }
}
