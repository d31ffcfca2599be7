//! Registration in etcd, on a thread of its own so no network call can delay signal handling
//! or reaping. States: waiting for the first passing check → registered (lease kept alive at
//! TTL/3) ⇄ unhealthy (key removed after two failed checks), with backoff on etcd errors,
//! ending when the supervisor asks it to deregister. Its deadlines (check, keepalive, retry)
//! are times it sleeps until on its command channel, so a Deregister command interrupts any
//! wait. It tells the supervisor what changed through a channel plus a byte on a pipe the
//! supervisor polls. It never spawns, waits for, or signals processes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;

use std::net::{Ipv4Addr, SocketAddr};

use crate::check;
use crate::config::{Check, DockerApi, Registration};
use crate::discovery::{Discovery, Found};
use crate::error::UsageError;
use crate::etcd::{Backoff, Client, EtcdError, Lease};
use crate::http::{Http, PemFile, Tls};

/// How often the check runs before the app has passed it once (at most).
const READINESS_POLL: Duration = Duration::from_millis(100);

/// From the supervisor to the registrar.
#[derive(Debug)]
pub enum Command {
    /// Delete the key and revoke the lease by this deadline, answer `Deregistered`, and stop.
    Deregister(Instant),
}

/// From the registrar to the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum News {
    /// The key is now present (true) or absent (false) in etcd.
    Registered(bool),
    /// Deregistration finished (or failed; the lease then expires by itself); true when a key
    /// was registered at that moment.
    Deregistered(bool),
}

/// Everything the registrar needs, prepared and checked before the app starts.
pub struct Plan {
    pub registration: Registration,
    pub tls: Option<Tls>,
    /// `--docker`, or the default socket when it exists.
    pub docker: Option<DockerApi>,
}

/// The supervisor's side of a running registrar.
pub struct Handle {
    commands: Sender<Command>,
    news: Receiver<News>,
    wake: OwnedFd,
}

impl Handle {
    /// The descriptor that becomes readable when news arrives (or the registrar ends).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Asks for deregistration; false when the registrar is no longer running.
    pub fn deregister(&self, deadline: Instant) -> bool {
        self.commands.send(Command::Deregister(deadline)).is_ok()
    }

    /// Collects the news so far; the flag is false once the registrar has ended.
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

/// Starts the registrar thread for the app `app_pid`. Call after the signal mask is set, so
/// the thread inherits it.
pub fn start(plan: Plan, app_pid: i32) -> io::Result<Handle> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let (command_tx, command_rx) = mpsc::channel();
    let (news_tx, news_rx) = mpsc::channel();
    let notifier = Notifier {
        news: news_tx,
        wake: write,
    };
    thread::Builder::new()
        .name("registrar".into())
        .spawn(move || Registrar::new(plan, app_pid, notifier).run(&command_rx))?;
    Ok(Handle {
        commands: command_tx,
        news: news_rx,
        wake: read,
    })
}

/// Sends news and pokes the supervisor. Dropping it (the thread ended, even by a panic)
/// pokes once more, so the supervisor sees the channel close.
struct Notifier {
    news: Sender<News>,
    wake: OwnedFd,
}

impl Notifier {
    fn send(&self, news: News) {
        // A closed channel means the supervisor is exiting; nothing left to tell.
        if self.news.send(news).is_ok() {
            self.poke();
        }
    }

    fn poke(&self) {
        match nix::unistd::write(&self.wake, b"!") {
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
    check_addr: SocketAddr,
    found: bool,
    next_discovery: Instant,
    ttl: Duration,
    lease: Option<Lease>,
    /// Passed the last check, or failed fewer than two in a row since.
    healthy: bool,
    /// Has passed a check at least once.
    passed_once: bool,
    failures: u32,
    next_check: Instant,
    next_keepalive: Instant,
    retry_at: Instant,
    backoff: Backoff,
    notifier: Notifier,
}

impl Registrar {
    fn new(plan: Plan, app_pid: i32, notifier: Notifier) -> Self {
        let reg = plan.registration;
        let http = Http::new(plan.tls.as_ref());
        let now = Instant::now();
        // Jitter only needs instances started together to differ: pid and wall-clock nanos.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = (u64::from(std::process::id()) << 32) ^ u64::from(nanos);
        let cap = (reg.ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(5));
        Self {
            client: Client::new(http, &reg.endpoints, reg.api, reg.credentials.clone()),
            probe_http: Http::new(None),
            healthy: reg.check == Check::None,
            passed_once: false,
            check: reg.check.clone(),
            check_interval: reg.check_interval,
            prefix: reg.prefix.clone(),
            ttl: reg.ttl,
            discovery: Discovery::new(reg, plan.docker, app_pid),
            key: String::new(),
            value: String::new(),
            check_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            found: false,
            next_discovery: now,
            lease: None,
            failures: 0,
            next_check: now,
            next_keepalive: now,
            retry_at: now,
            backoff: Backoff::new(Duration::from_millis(200), cap, seed),
            notifier,
        }
    }

    fn run(mut self, commands: &Receiver<Command>) {
        loop {
            let command = match self.next_due() {
                Some(due) => commands.recv_timeout(due.saturating_duration_since(Instant::now())),
                None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match command {
                Ok(Command::Deregister(deadline)) => {
                    let had_key = self.lease.is_some();
                    self.remove(deadline);
                    self.notifier.send(News::Deregistered(had_key));
                    return;
                }
                Err(RecvTimeoutError::Timeout) => self.work(),
                // The supervisor is gone: hecd-init is exiting.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The earliest time something is due.
    fn next_due(&self) -> Option<Instant> {
        if !self.found {
            return Some(self.next_discovery);
        }
        let check = (self.check != Check::None).then_some(self.next_check);
        let keepalive = self.lease.map(|_| self.next_keepalive);
        let retry = (self.lease.is_none() && self.healthy).then_some(self.retry_at);
        [check, keepalive, retry].into_iter().flatten().min()
    }

    fn work(&mut self) {
        if !self.found {
            self.discover();
            return;
        }
        let now = Instant::now();
        if self.check != Check::None && now >= self.next_check {
            self.run_check();
            // Until the app first passes, look more often, so a fresh instance takes traffic
            // soon after it listens rather than up to a whole interval later.
            let every = if self.passed_once {
                self.check_interval
            } else {
                self.check_interval.min(READINESS_POLL)
            };
            self.next_check = Instant::now() + every;
        }
        if self.lease.is_some() && now >= self.next_keepalive {
            self.keepalive();
        }
        if self.lease.is_none() && self.healthy && Instant::now() >= self.retry_at {
            self.register();
        }
    }

    /// Finds the name and address; retried every 100 ms until the app listens.
    fn discover(&mut self) {
        match self.discovery.discover() {
            Ok(Found {
                name,
                address,
                check,
            }) => {
                self.key = format!("{}/{name}", self.prefix);
                self.value = address.to_string();
                self.check_addr = check;
                self.found = true;
                self.next_check = Instant::now();
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

    fn run_check(&mut self) {
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
                    self.remove(Instant::now() + Duration::from_secs(2));
                }
            }
        }
    }

    fn register(&mut self) {
        let now = Instant::now();
        let deadline = now + (self.ttl / 3).max(Duration::from_secs(2));
        match self
            .client
            .register(&self.key, &self.value, self.ttl.as_secs(), deadline)
        {
            Ok(lease) => {
                log::info!(
                    "registered {} = {} ({lease}, ttl {}s)",
                    self.key,
                    self.value,
                    self.ttl.as_secs()
                );
                self.lease = Some(lease);
                self.next_keepalive = Instant::now() + self.ttl / 3;
                self.backoff.reset();
                self.notifier.send(News::Registered(true));
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                log::warn!(
                    "cannot register {}: {e}; retrying in {}ms",
                    self.key,
                    delay.as_millis()
                );
                self.retry_at = Instant::now() + delay;
            }
        }
    }

    fn keepalive(&mut self) {
        let Some(lease) = self.lease else { return };
        let deadline = Instant::now() + self.ttl / 3;
        match self
            .client
            .keepalive(lease, &self.key, self.ttl.as_secs(), deadline)
        {
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
                self.retry_at = Instant::now();
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
    }

    /// Deletes the key and revokes the lease; on failure the lease runs out by itself.
    fn remove(&mut self, deadline: Instant) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.notifier.send(News::Registered(false));
        match self.client.deregister(lease, &self.key, deadline) {
            Ok(()) => log::info!("deregistered {} (revoked {lease})", self.key),
            Err(e) => log::warn!(
                "cannot deregister {}: {e}; etcd drops it when the lease expires (within {}s)",
                self.key,
                self.ttl.as_secs()
            ),
        }
    }
}

/// The Docker Engine API socket used when `--docker` is not given and it exists.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// CA bundle used for `https://` endpoints when `--etcd-cacert` is not given.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Reads the TLS files and fixes the address, before the app starts: a missing or bad file is
/// a usage error (exit 2), not something to find out later on the registrar thread.
pub fn plan(registration: Registration) -> Result<Plan, UsageError> {
    let docker = registration.docker.clone().or_else(|| {
        std::path::Path::new(DOCKER_SOCKET)
            .exists()
            .then(|| DockerApi::Unix(DOCKER_SOCKET.to_owned()))
    });
    let wants_tls = registration.endpoints.iter().any(|e| e.tls);
    let tls = if wants_tls || registration.cacert.is_some() {
        let ca_path = match &registration.cacert {
            Some(p) => p.clone(),
            None if std::path::Path::new(SYSTEM_CA_BUNDLE).exists() => SYSTEM_CA_BUNDLE.to_owned(),
            None => {
                return Err(UsageError::new(
                    "--etcd-cacert",
                    format!(
                        "https:// endpoints need a CA bundle: give --etcd-cacert FILE ({SYSTEM_CA_BUNDLE} does not exist)"
                    ),
                ));
            }
        };
        let ca = read("--etcd-cacert", &ca_path)?;
        let client = match (&registration.cert, &registration.key) {
            (Some(c), Some(k)) => Some(((c, read("--etcd-cert", c)?), (k, read("--etcd-key", k)?))),
            _ => None,
        };
        let client = client.as_ref().map(|((cp, c), (kp, k))| {
            (PemFile { path: cp, data: c }, PemFile { path: kp, data: k })
        });
        let ca = PemFile {
            path: &ca_path,
            data: &ca,
        };
        Some(Tls::from_pem(ca, client).map_err(|e| UsageError::new("--etcd-cacert", e))?)
    } else {
        None
    };
    Ok(Plan {
        registration,
        tls,
        docker,
    })
}

fn read(option: &str, path: &str) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path).map_err(|e| UsageError::new(option, format!("cannot read {path}: {e}")))
}
