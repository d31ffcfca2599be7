//! Registration in etcd, off the supervisor's thread so no network call can delay signal
//! handling or reaping. Two threads:
//!
//! - the registrar: discovery → waiting for the first passing check → registered (lease kept
//!   alive at TTL/3) ⇄ unhealthy (key removed after two failed checks), with backoff on etcd
//!   errors. Its probes, Docker calls and etcd requests block; its deadlines are times it sleeps
//!   until on its wake channel.
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
use crate::config::Check;
use crate::discovery::{Discovery, Found};
use crate::etcd::{Backoff, Client, EtcdError, Lease};
use crate::http::Http;

pub use plan::{Plan, plan};

/// How often the check runs before the app has passed it once (at most).
const READINESS_POLL: Duration = Duration::from_millis(100);

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
        reg.credentials.clone(),
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

struct Registrar {
    client: Client,
    probe_http: Http,
    check: Check,
    check_interval: Duration,
    discovery: Discovery,
    prefix: String,
    /// Set once discovery has found the name and address.
    key: String,
    value: String,
    /// `--route` (sorted), and `--lb-prefix` for the declaration's key.
    routes: Vec<crate::contract::Route>,
    lb_prefix: String,
    /// The route declaration, `LB_PREFIX/routes/PREFIX/NAME` = the routes, put with the key
    /// under the same lease (v3); `None` without `--route`.
    declaration: Option<(String, String)>,
    /// v2 was found although routes are declared: said once.
    told_v2_routes: bool,
    check_addr: SocketAddr,
    found: bool,
    next_discovery: Instant,
    ttl: Duration,
    /// A lease granted and not known to be gone (it may carry no key yet).
    lease: Option<Lease>,
    /// The TTL etcd granted that lease (it raises TTLs below its minimum), when it said.
    granted_ttl: Option<u64>,
    /// The key is in etcd under `lease`, as far as the last answer said.
    registered: bool,
    /// Passed the last check, or failed fewer than two in a row since.
    healthy: bool,
    /// Has passed a check at least once.
    passed_once: bool,
    failures: u32,
    next_check: Instant,
    next_keepalive: Instant,
    retry_at: Instant,
    backoff: Backoff,
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
        Self {
            client,
            probe_http: Http::new(None),
            healthy: reg.check == Check::None,
            passed_once: false,
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
            found: false,
            next_discovery: now,
            lease: None,
            granted_ttl: None,
            registered: false,
            failures: 0,
            next_check: now,
            next_keepalive: now,
            retry_at: now,
            backoff: Backoff::new(Duration::from_millis(200), cap, seed),
            shared,
            notifier,
        }
    }

    fn run(mut self, wake: &Receiver<()>) {
        loop {
            let woken = match self.next_due() {
                Some(due) => wake.recv_timeout(due.saturating_duration_since(Instant::now())),
                None => wake.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
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

    /// The earliest time something is due.
    fn next_due(&self) -> Option<Instant> {
        if !self.found {
            return Some(self.next_discovery);
        }
        let check = (self.check != Check::None).then_some(self.next_check);
        let keepalive = self.registered.then_some(self.next_keepalive);
        let retry = (!self.registered && self.healthy).then_some(self.retry_at);
        [check, keepalive, retry].into_iter().flatten().min()
    }

    fn work(&mut self) -> Result<(), Stopping> {
        if !self.found {
            self.discover();
            return Ok(());
        }
        let now = Instant::now();
        if self.check != Check::None && now >= self.next_check {
            self.run_check()?;
            // Until the app first passes, look more often, so a fresh instance takes traffic
            // soon after it listens rather than up to a whole interval later.
            let every = if self.passed_once {
                self.check_interval
            } else {
                self.check_interval.min(READINESS_POLL)
            };
            self.next_check = Instant::now() + every;
        }
        if self.registered && now >= self.next_keepalive {
            self.keepalive()?;
        }
        if !self.registered && self.healthy && Instant::now() >= self.retry_at {
            self.register()?;
        }
        Ok(())
    }

    /// Finds the name and address; retried every 100 ms until the app listens.
    fn discover(&mut self) {
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
                self.found = true;
                self.next_check = Instant::now();
                lock(&self.shared).key = self.key.clone();
                log::info!(
                    "will register {} = {} once the {} check on {check} passes",
                    self.key,
                    self.value,
                    self.check
                );
            }
            Err(why) => {
                log::debug!("discovery: {why}");
                self.next_discovery = Instant::now() + READINESS_POLL;
            }
        }
    }

    fn run_check(&mut self) -> Result<(), Stopping> {
        let timeout = self
            .check_interval
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        match check::probe(&self.check, &self.probe_http, self.check_addr, timeout) {
            Ok(()) => {
                if !self.healthy {
                    log::info!("check passed: {} on {}", self.check, self.check_addr);
                }
                self.healthy = true;
                self.passed_once = true;
                self.failures = 0;
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                log::debug!("check failed ({} in a row): {e}", self.failures);
                if self.failures == 2 && self.healthy {
                    self.healthy = false;
                    log::warn!("check failed twice in a row ({e}); removing {}", self.key);
                    self.remove()?;
                }
            }
        }
        Ok(())
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

    fn register(&mut self) -> Result<(), Stopping> {
        let deadline = Instant::now() + (self.ttl / 3).max(Duration::from_secs(2));
        let ttl = self.ttl.as_secs();
        let lease = match self.lease {
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
        let result = lease.and_then(|lease| {
            self.lease = Some(lease);
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
        match result {
            Ok(lease) => {
                log::info!(
                    "registered {} = {} ({lease}, ttl {}s)",
                    self.key,
                    self.value,
                    self.granted_ttl.unwrap_or(self.ttl.as_secs())
                );
                self.registered = true;
                self.next_keepalive = Instant::now() + self.ttl / 3;
                self.backoff.reset();
                self.notifier.send(News::Registered(true));
            }
            Err(e) => {
                if e == EtcdError::Gone {
                    // The lease expired before the put: grant a fresh one next time.
                    self.lease = None;
                }
                let delay = self.backoff.next_delay();
                log::warn!(
                    "cannot register {}: {e}; retrying in {}ms",
                    self.key,
                    delay.as_millis()
                );
                self.retry_at = Instant::now() + delay;
            }
        }
        Ok(())
    }

    fn keepalive(&mut self) -> Result<(), Stopping> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let deadline = Instant::now() + self.ttl / 3;
        let result = self
            .client
            .keepalive(lease, &self.key, self.ttl.as_secs(), deadline);
        self.sync(|_| {})?;
        match result {
            Ok(()) => {
                log::debug!("kept {lease} alive");
                self.next_keepalive = Instant::now() + self.ttl / 3;
                self.backoff.reset();
            }
            Err(EtcdError::Gone) => {
                log::warn!(
                    "{lease} is gone (expired, revoked, or etcd lost it); registering {} again",
                    self.key
                );
                self.lease = None;
                self.registered = false;
                self.retry_at = Instant::now();
                self.sync(|s| {
                    s.lease = None;
                    s.maybe_present = false;
                })?;
                self.notifier.send(News::Registered(false));
            }
            Err(e) => {
                let delay = self.backoff.next_delay().min(self.ttl / 3);
                log::warn!(
                    "keepalive of {lease} failed: {e}; retrying in {}ms",
                    delay.as_millis()
                );
                self.next_keepalive = Instant::now() + delay;
            }
        }
        Ok(())
    }

    /// Deletes the key and revokes the lease (two failed checks); on failure the lease runs
    /// out by itself, since it is no longer kept alive.
    fn remove(&mut self) -> Result<(), Stopping> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        self.registered = false;
        self.notifier.send(News::Registered(false));
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
