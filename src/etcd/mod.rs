//! The etcd client of both programs: endpoints tried in turn, in an order drawn from the
//! program's identity (so a fleet spreads over the members), starting with the last one that
//! answered; the API chosen (`--etcd-api`, or `/version` for auto); v3 auth tokens fetched and
//! renewed; registration's operations (register, keep alive, deregister), range reads, watch
//! streams ([`Watch`]) and the leader probe, each bounded by a deadline. Capped exponential
//! backoff with jitter lives here too. Blocking I/O: each thread that calls it (hecd-init's
//! registrar and stop path, hecd-haproxy's follower, probe and announcer) has a client of its
//! own.

pub mod v2;
pub mod v3;

use std::fmt;
use std::time::{Duration, Instant};

use crate::http::{Http, HttpError, Method, Reply};
use crate::json;

/// Which etcd API to speak. (`Default` only so that hecd-init's arguments struct can start
/// empty: what `--etcd-api` takes when not given is written in its row, in `config`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EtcdApi {
    #[default]
    Auto,
    V3,
    V2,
}

/// One etcd client endpoint, e.g. `http://10.0.0.1:2379`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Host as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

/// `--etcd-user`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // Never print the password, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

/// What an answer from one endpoint means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// v3: the lease expired, was revoked, or etcd lost it (restart with an empty data dir).
    LeaseGone,
    /// v2: the key to refresh has expired.
    KeyGone,
    /// v3: the auth token expired or is unknown; authenticate again.
    BadToken(String),
    /// The member cannot serve now (no leader, shutting down): try another endpoint.
    Unavailable(String),
    /// etcd refused the request (permissions, bad request).
    Rejected(String),
    /// The answer was not what etcd sends.
    Malformed(String),
}

/// Why an operation failed, with the endpoint(s) and causes, ready to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdError {
    /// The lease (v3) or key (v2) is gone: register again.
    Gone,
    /// No endpoint could be used; one `endpoint: cause` per endpoint tried.
    Unreachable(Vec<String>),
    /// An endpoint answered with an error that retrying elsewhere will not fix.
    Failed { endpoint: String, cause: String },
    /// The deadline passed before any endpoint answered.
    OutOfTime,
    /// A range answer was over the body limit: read fewer keys at a time.
    TooBig,
    /// The member stopped serving (lost its leader) in the middle of a watch; the next call
    /// starts with the next endpoint.
    Unavailable { endpoint: String, cause: String },
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Gone => write!(f, "the lease is gone"),
            EtcdError::Unreachable(causes) => {
                write!(f, "no endpoint answered: {}", causes.join("; "))
            }
            EtcdError::Failed { endpoint, cause } => write!(f, "{endpoint}: {cause}"),
            EtcdError::OutOfTime => write!(f, "out of time"),
            EtcdError::TooBig => write!(f, "the answer is too big"),
            EtcdError::Unavailable { endpoint, cause } => write!(f, "{endpoint}: {cause}"),
        }
    }
}

/// The resolved API of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// v3 JSON gateway under this path prefix.
    V3(&'static str),
    V2,
}

/// What keeps a registration alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    V3(i64),
    /// v2 keys carry their own TTL.
    V2,
}

impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lease::V3(id) => write!(f, "lease {id:x}"),
            Lease::V2 => write!(f, "v2 ttl"),
        }
    }
}

/// Picks the API from a `/version` answer: v3 (with its gateway prefix) on etcd 3.x, else v2.
pub fn api_from_version(body: &str) -> Result<Api, Fault> {
    let v = json::parse(body).map_err(|e| Fault::Malformed(format!("/version is {e}")))?;
    let server = json::str_at(&v, "etcdserver")
        .ok_or_else(|| Fault::Malformed("/version without etcdserver".into()))?;
    let mut parts = server.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(3), Some(minor)) if minor >= 4 => Ok(Api::V3("/v3")),
        (Some(3), Some(3)) => Ok(Api::V3("/v3beta")),
        (Some(3), Some(_)) => Ok(Api::V3("/v3alpha")),
        (Some(major), _) if major > 3 => Ok(Api::V3("/v3")),
        (Some(2), _) => Ok(Api::V2),
        _ => Err(Fault::Malformed(format!("unknown etcd version {server:?}"))),
    }
}

/// A stable 64-bit hash of an identity: FNV-1a, then splitmix64's finaliser so that names
/// differing only in their last character land far apart. Not std's hasher, which is seeded
/// anew in every process: the same name must give the same member after a restart.
pub fn identity_hash(identity: &str) -> u64 {
    mix(fnv1a(identity.as_bytes()))
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser: every input bit moves about half the output bits.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The order in which an instance or balancer named `identity` tries the `count` endpoints of
/// its `--etcd` list (indices into it): a shuffle drawn from `identity_hash(identity)`. A fleet
/// given the same list spreads over the members instead of piling onto the first; the
/// instances of a member that fails spread over the others instead of all moving to the next
/// one; and a restart lands where it was.
pub fn endpoint_order(identity: &str, count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    let mut state = identity_hash(identity);
    // Fisher–Yates, with splitmix64's stream as the source.
    for i in (1..count).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let bound = u64::try_from(i + 1).unwrap_or(u64::MAX);
        let j = usize::try_from(mix(state) % bound).unwrap_or(0);
        order.swap(i, j);
    }
    order
}

/// The endpoint (index in the list of `count`) that `identity` talks to first.
pub fn first_endpoint(identity: &str, count: usize) -> usize {
    endpoint_order(identity, count)
        .first()
        .copied()
        .unwrap_or(0)
}

/// A jitter seed of this process: its identity, pid and the wall clock's nanoseconds, mixed.
/// Containers all run as pid 1 and may start in the same millisecond; their names differ.
pub fn jitter_seed(identity: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(identity_hash(identity) ^ nanos ^ u64::from(std::process::id()).rotate_left(32))
}

/// Capped exponential backoff with jitter: each delay is drawn from the upper half of an
/// exponentially growing window, so many instances restarting together spread out. Once at
/// the cap, an instance retries every `cap/2` to `cap`, at a phase of its own: when etcd comes
/// back, a fleet's first retries are spread over one `cap`, never bunched in one instant.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            seed: mix(seed) | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        window.mul_f64(fraction)
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Longest single request; a deadline further away is cut to this, so one slow member cannot
/// use up the whole budget meant for trying the others.
const REQUEST_CAP: Duration = Duration::from_secs(5);

/// The client.
#[derive(Clone)]
pub struct Client {
    http: Http,
    endpoints: Vec<String>,
    current: usize,
    wanted: EtcdApi,
    api: Option<Api>,
    credentials: Option<Credentials>,
    token: Option<String>,
}

/// `http://host:port` for an endpoint, IPv6 in brackets.
pub fn base_url(e: &Endpoint) -> String {
    let scheme = if e.tls { "https" } else { "http" };
    if e.host.contains(':') {
        format!("{scheme}://[{}]:{}", e.host, e.port)
    } else {
        format!("{scheme}://{}:{}", e.host, e.port)
    }
}

/// What one attempt at one endpoint gave.
enum Attempt<T> {
    Done(T),
    /// Try the next endpoint.
    Next(String),
    /// Stop: the answer holds for the whole cluster.
    Stop(EtcdError),
}

/// Why a watch ended, for [`Client::finish_watch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchEnd {
    /// The member stopped serving (lost its leader) or was left: go elsewhere.
    Elsewhere,
    /// etcd rejected the auth token: fetch another.
    BadToken,
}

/// An open watch stream ([`Client::open_watch`]): iterate for its messages, each with the
/// index (in the list it was opened with) of the watch it is for. The iteration ends when the
/// stream ends or its life is over; a stream that breaks, sends garbage or an error message
/// gives one error, and ends.
pub struct Watch {
    stream: crate::http::Stream,
    /// The first line, read to see the stream open.
    pending: Option<String>,
    endpoint: String,
    prefix: &'static str,
    count: usize,
    /// The stream's own agent, for [`Watch::canceller`].
    http: Http,
    ended: Option<WatchEnd>,
}

/// Ends a [`Watch`] from another thread: its read fails at once.
#[derive(Clone)]
pub struct Canceller(Http);

impl Canceller {
    pub fn cancel(&self) {
        self.0.shutdown();
    }
}

impl Watch {
    /// The base URL of the member the stream is on.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The v3 gateway prefix in use (for [`Client::probe`]).
    pub fn api_prefix(&self) -> &'static str {
        self.prefix
    }

    pub fn canceller(&self) -> Canceller {
        Canceller(self.http.clone())
    }

    /// Marks the member left (a canceled stream, a member without a leader): the next call
    /// of the client it goes back to starts elsewhere.
    pub fn leave(&mut self) {
        self.ended = Some(WatchEnd::Elsewhere);
    }

    fn failed(&self, cause: String) -> EtcdError {
        EtcdError::Failed {
            endpoint: self.endpoint.clone(),
            cause,
        }
    }
}

impl Iterator for Watch {
    type Item = Result<(usize, v3::WatchMessage), EtcdError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended.is_some() {
            return None;
        }
        let line = match self.pending.take() {
            Some(line) => line,
            None => match self.stream.next_line(MAX_WATCH_LINE) {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                // The stream's life is over: not a failure.
                Err(HttpError::Timeout) => return None,
                Err(e) => {
                    self.ended = Some(WatchEnd::Elsewhere);
                    return Some(Err(self.failed(format!("watch stream: {e}"))));
                }
            },
        };
        match v3::parse_watch_tagged(&line) {
            Ok((id, message)) => match usize::try_from(id).ok().filter(|i| *i < self.count) {
                Some(index) => Some(Ok((index, message))),
                None => {
                    self.ended = Some(WatchEnd::Elsewhere);
                    Some(Err(self.failed(format!(
                        "watch stream: a message for watch {id}, which was never asked for"
                    ))))
                }
            },
            Err(Fault::Unavailable(cause)) => {
                // Lost its leader (the stream was opened requiring one): what comes next is
                // watched from another member.
                self.ended = Some(WatchEnd::Elsewhere);
                Some(Err(EtcdError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    cause,
                }))
            }
            Err(fault) => {
                self.ended = Some(if matches!(fault, Fault::BadToken(_)) {
                    WatchEnd::BadToken
                } else {
                    WatchEnd::Elsewhere
                });
                Some(Err(self.failed(format!("watch stream: {fault:?}"))))
            }
        }
    }
}

impl Client {
    /// A client for `endpoints`, tried in the order [`endpoint_order`] gives `identity` (the
    /// instance's `--name` or hostname, the balancer's `--lb-id`).
    pub fn new(
        http: Http,
        endpoints: &[Endpoint],
        api: EtcdApi,
        credentials: Option<Credentials>,
        identity: &str,
    ) -> Self {
        Self {
            http,
            endpoints: endpoint_order(identity, endpoints.len())
                .into_iter()
                .map(|i| base_url(&endpoints[i]))
                .collect(),
            current: 0,
            wanted: api,
            api: match api {
                EtcdApi::V3 => Some(Api::V3("/v3")),
                EtcdApi::V2 => Some(Api::V2),
                EtcdApi::Auto => None,
            },
            credentials,
            token: None,
        }
    }

    /// Grants a lease of `ttl` seconds (v3). v2 keys carry their TTL themselves: no request.
    pub fn grant(&mut self, ttl: u64, deadline: Instant) -> Result<Lease, EtcdError> {
        self.grant_with_ttl(ttl, deadline).map(|(lease, _)| lease)
    }

    /// [`Client::grant`], with the TTL etcd granted (v3; `None` for v2 or when etcd did not
    /// say): etcd raises a TTL below its minimum.
    pub fn grant_with_ttl(
        &mut self,
        ttl: u64,
        deadline: Instant,
    ) -> Result<(Lease, Option<u64>), EtcdError> {
        self.each_endpoint(deadline, |c, base, t| match c.api {
            Some(Api::V3(prefix)) => c
                .v3_call(base, prefix, v3::GRANT, &v3::grant(ttl), t, v3::parse_grant)
                .map(|(id, granted)| (Lease::V3(id), granted.and_then(|g| u64::try_from(g).ok()))),
            _ => Attempt::Done((Lease::V2, None)),
        })
    }

    /// Puts `key = value` under the lease (v3), or sets the key with a TTL of `ttl` (v2).
    /// [`EtcdError::Gone`] means the lease is no longer there: grant another.
    pub fn put(
        &mut self,
        key: &str,
        value: &str,
        lease: Lease,
        ttl: u64,
        deadline: Instant,
    ) -> Result<(), EtcdError> {
        self.each_endpoint(deadline, |c, base, t| match (lease, c.api) {
            (Lease::V3(id), Some(Api::V3(prefix))) => {
                let put = v3::put(key, value, id);
                c.v3_call(base, prefix, v3::PUT, &put, t, v3::parse_done)
            }
            _ => c.v2_call(base, Method::Put, key, Some(&v2::set(value, ttl)), t, false),
        })
    }

    /// Puts every `(key, value)` under the lease in one transaction (v3: one revision, all or
    /// none). v2 has no transactions: only the first pair is set there, with a TTL of `ttl`.
    pub fn put_all(
        &mut self,
        puts: &[(&str, &str)],
        lease: Lease,
        ttl: u64,
        deadline: Instant,
    ) -> Result<(), EtcdError> {
        let Some((key, value)) = puts.first() else {
            return Ok(());
        };
        if puts.len() == 1 {
            return self.put(key, value, lease, ttl, deadline);
        }
        self.each_endpoint(deadline, |c, base, t| match (lease, c.api) {
            (Lease::V3(id), Some(Api::V3(prefix))) => {
                let txn = v3::put_all(puts, id);
                c.v3_call(base, prefix, v3::TXN, &txn, t, v3::parse_done)
            }
            _ => c.v2_call(base, Method::Put, key, Some(&v2::set(value, ttl)), t, false),
        })
    }

    /// Puts `key = value` under `lease` (v3; 0: no lease) only if the key does not exist, in
    /// one transaction: whether it was put. A lock, or a value only the first writer sets.
    pub fn put_if_absent(
        &mut self,
        key: &str,
        value: &str,
        lease: i64,
        deadline: Instant,
    ) -> Result<bool, EtcdError> {
        let txn = v3::put_if_absent(key, value, lease);
        self.each_endpoint(deadline, |c, base, t| match c.api {
            Some(Api::V3(prefix)) => c.v3_call(base, prefix, v3::TXN, &txn, t, v3::parse_succeeded),
            _ => Attempt::Stop(not_v3(base)),
        })
    }

    /// Puts `key = value` with no lease (v3): it stays until deleted.
    pub fn put_forever(
        &mut self,
        key: &str,
        value: &str,
        deadline: Instant,
    ) -> Result<(), EtcdError> {
        let put = v3::put(key, value, 0);
        self.each_endpoint(deadline, |c, base, t| match c.api {
            Some(Api::V3(prefix)) => c.v3_call(base, prefix, v3::PUT, &put, t, v3::parse_done),
            _ => Attempt::Stop(not_v3(base)),
        })
    }

    /// Deletes `key` (v3); a key already gone counts as done.
    pub fn delete_key(&mut self, key: &str, deadline: Instant) -> Result<(), EtcdError> {
        let body = v3::delete(key);
        self.each_endpoint(deadline, |c, base, t| match c.api {
            Some(Api::V3(prefix)) => c.v3_call(base, prefix, v3::DELETE, &body, t, v3::parse_done),
            _ => Attempt::Stop(not_v3(base)),
        })
    }

    /// Revokes `lease` (v3); one already gone counts as done.
    pub fn revoke(&mut self, lease: i64, deadline: Instant) -> Result<(), EtcdError> {
        let body = v3::lease_id(lease);
        self.each_endpoint(deadline, |c, base, t| match c.api {
            Some(Api::V3(prefix)) => {
                match c.v3_call(base, prefix, v3::REVOKE, &body, t, v3::parse_done) {
                    Attempt::Stop(EtcdError::Gone) => Attempt::Done(()),
                    other => other,
                }
            }
            _ => Attempt::Stop(not_v3(base)),
        })
    }

    /// Whether the API in use is v2 (known after the first call).
    pub fn is_v2(&self) -> bool {
        self.api == Some(Api::V2)
    }

    /// The same cluster, API, last good endpoint and auth token, over another HTTP client:
    /// what the stop path uses, so nothing in flight on this one can hold it up.
    pub fn fork(&self, http: Http) -> Client {
        Client {
            http,
            endpoints: self.endpoints.clone(),
            current: self.current,
            wanted: self.wanted,
            api: self.api,
            credentials: self.credentials.clone(),
            token: self.token.clone(),
        }
    }

    /// Renews the lease (v3) or the key's TTL (v2). [`EtcdError::Gone`] means register again.
    pub fn keepalive(
        &mut self,
        lease: Lease,
        key: &str,
        ttl: u64,
        deadline: Instant,
    ) -> Result<(), EtcdError> {
        self.each_endpoint(deadline, |c, base, t| match (lease, c.api) {
            (Lease::V3(id), Some(Api::V3(prefix))) => c
                .v3_call(
                    base,
                    prefix,
                    v3::KEEPALIVE,
                    &v3::lease_id(id),
                    t,
                    v3::parse_keepalive,
                )
                .map(|_ttl| ()),
            _ => c.v2_call(base, Method::Put, key, Some(&v2::refresh(ttl)), t, false),
        })
    }

    /// Deletes the key and revokes the lease. A key or lease already gone counts as done.
    /// Returns the store revision of the delete (v3), from which load balancers' confirmations
    /// count.
    pub fn deregister(
        &mut self,
        lease: Lease,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<i64>, EtcdError> {
        self.each_endpoint(deadline, |c, base, t| match (lease, c.api) {
            (Lease::V3(id), Some(Api::V3(prefix))) => c
                .v3_call(
                    base,
                    prefix,
                    v3::DELETE,
                    &v3::delete(key),
                    t,
                    v3::parse_revision,
                )
                .and_then(|revision| {
                    match c.v3_call(
                        base,
                        prefix,
                        v3::REVOKE,
                        &v3::lease_id(id),
                        t,
                        v3::parse_done,
                    ) {
                        Attempt::Done(()) | Attempt::Stop(EtcdError::Gone) => {
                            Attempt::Done(Some(revision))
                        }
                        other => other.and_then(|()| Attempt::Done(Some(revision))),
                    }
                }),
            _ => c
                .v2_call(base, Method::Delete, key, None, t, true)
                .map(|()| None),
        })
    }

    /// Reads one page of `[key, end)` at `revision` (0: the latest), at most `limit` keys (v3
    /// only). An answer over the body limit is [`EtcdError::TooBig`]: read fewer keys.
    pub fn range(
        &mut self,
        key: &[u8],
        end: &[u8],
        revision: i64,
        limit: u32,
        keys_only: bool,
        deadline: Instant,
    ) -> Result<v3::Page, EtcdError> {
        let body = v3::range(key, end, revision, limit, keys_only);
        self.each_endpoint(deadline, |c, base, t| match c.api {
            Some(Api::V3(prefix)) => c.v3_call(base, prefix, v3::RANGE, &body, t, v3::parse_range),
            _ => Attempt::Stop(not_v3(base)),
        })
    }

    /// Opens one watch stream carrying every `(key, end, start_revision)` of `watches` (v3
    /// only), on the first endpoint that takes it within `deadline`, over an HTTP agent of its
    /// own (so [`Watch::canceller`] can end it from another thread without touching this
    /// client's other requests). The stream lasts `life`, or as long as etcd keeps it open
    /// (`None`). Loop over the [`Watch`] for its messages; hand it back with
    /// [`Client::finish_watch`] when done.
    pub fn open_watch(
        &mut self,
        watches: &[(&[u8], &[u8], i64)],
        life: Option<Duration>,
        deadline: Instant,
    ) -> Result<Watch, EtcdError> {
        let body = v3::watch_many(watches);
        self.each_endpoint(deadline, |c, base, t| {
            let Some(Api::V3(prefix)) = c.api else {
                return Attempt::Stop(not_v3(base));
            };
            let url = format!("{base}{prefix}{}", v3::WATCH);
            // Open, authenticating first; a rejected (expired) token once more after
            // authenticating again, as for the other calls.
            let mut tries = 0;
            loop {
                if c.credentials.is_some() && c.token.is_none() {
                    match c.authenticate(base, prefix, t) {
                        Ok(token) => c.token = Some(token),
                        Err(a) => return a,
                    }
                }
                let http = c.http.detached();
                let mut stream = match http.stream(&url, &c.v3_headers(), &body, t, life) {
                    Ok(s) => s,
                    Err(e) => return Attempt::Next(e.to_string()),
                };
                let first = match stream.next_line(MAX_WATCH_LINE) {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        return Attempt::Stop(EtcdError::Failed {
                            endpoint: base.to_owned(),
                            cause: "the watch stream ended at once".into(),
                        });
                    }
                    Err(e) => return Attempt::Next(format!("watch stream: {e}")),
                };
                let fault = if stream.status == 200 {
                    v3::parse_watch(&first).err()
                } else {
                    Some(
                        v3::parse_done(stream.status, &first)
                            .err()
                            .unwrap_or_else(|| Fault::Malformed(format!("HTTP {}", stream.status))),
                    )
                };
                match fault {
                    Some(Fault::BadToken(_)) if tries == 0 && c.credentials.is_some() => {
                        log::info!("{base}: auth token rejected; authenticating again");
                        c.token = None;
                        tries += 1;
                    }
                    Some(f) if stream.status != 200 => return fault_attempt(base, f),
                    _ => {
                        return Attempt::Done(Watch {
                            stream,
                            pending: Some(first),
                            endpoint: base.to_owned(),
                            prefix,
                            count: watches.len(),
                            http,
                            ended: None,
                        });
                    }
                }
            }
        })
    }

    /// Takes back a watch that is over: the next call starts with the next endpoint when its
    /// member stopped serving (lost its leader, or was left for another reason), and a token
    /// etcd rejected is fetched again.
    pub fn finish_watch(&mut self, watch: Watch) {
        match watch.ended {
            Some(WatchEnd::Elsewhere) => self.move_past(&watch.endpoint),
            Some(WatchEnd::BadToken) => self.token = None,
            None => {}
        }
    }

    /// The next call starts with the endpoint after `endpoint` (in this client's order).
    pub fn move_past(&mut self, endpoint: &str) {
        if let Some(i) = self.endpoints.iter().position(|e| e == endpoint) {
            self.current = (i + 1) % self.endpoints.len();
        }
    }

    /// Whether the member at `endpoint` (a base URL as [`Watch::endpoint`] gives it) serves:
    /// one `maintenance/status` call that must answer within `timeout` and name a leader
    /// (sent requiring one, as every call). Costs one request, whatever is watched.
    pub fn probe(
        &mut self,
        endpoint: &str,
        prefix: &'static str,
        timeout: Duration,
    ) -> Result<(), String> {
        match self.v3_call(
            endpoint,
            prefix,
            v3::STATUS,
            "{}",
            timeout,
            v3::parse_status,
        ) {
            Attempt::Done(()) => Ok(()),
            Attempt::Next(cause) => Err(cause),
            Attempt::Stop(e) => Err(e.to_string()),
        }
    }

    /// Runs `op` against each endpoint in turn, starting with the last one that answered,
    /// until one gives an answer that holds for the cluster or the deadline passes.
    fn each_endpoint<T>(
        &mut self,
        deadline: Instant,
        mut op: impl FnMut(&mut Self, &str, Duration) -> Attempt<T>,
    ) -> Result<T, EtcdError> {
        let mut causes = Vec::new();
        for i in 0..self.endpoints.len() {
            let index = (self.current + i) % self.endpoints.len();
            let base = self.endpoints[index].clone();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(if causes.is_empty() {
                    EtcdError::OutOfTime
                } else {
                    EtcdError::Unreachable(causes)
                });
            }
            // Leave the other endpoints a share of the time.
            let share = left / u32::try_from(self.endpoints.len() - i).unwrap_or(1);
            let timeout = share
                .max(left.min(Duration::from_millis(500)))
                .min(REQUEST_CAP);
            if self.api.is_none() {
                match self.detect_api(&base, timeout) {
                    Ok(api) => {
                        log::info!(
                            "{base}: using the etcd {} API",
                            if api == Api::V2 { "v2" } else { "v3" }
                        );
                        self.api = Some(api);
                    }
                    Err(cause) => {
                        causes.push(format!("{base}: {cause}"));
                        continue;
                    }
                }
            }
            match op(self, &base, timeout) {
                Attempt::Done(v) => {
                    self.current = index;
                    return Ok(v);
                }
                Attempt::Stop(e) => {
                    self.current = index;
                    return Err(e);
                }
                Attempt::Next(cause) => causes.push(format!("{base}: {cause}")),
            }
        }
        Err(EtcdError::Unreachable(causes))
    }

    fn detect_api(&self, base: &str, timeout: Duration) -> Result<Api, String> {
        debug_assert_eq!(self.wanted, EtcdApi::Auto);
        let reply = self
            .http
            .request(Method::Get, &format!("{base}/version"), &[], None, timeout)
            .map_err(|e| e.to_string())?;
        if reply.status != 200 {
            return Err(format!("/version answered HTTP {}", reply.status));
        }
        api_from_version(&reply.body).map_err(|f| format!("{f:?}"))
    }

    /// One v3 call, authenticating first (and once more on a rejected token) when a user is set.
    fn v3_call<T>(
        &mut self,
        base: &str,
        prefix: &str,
        path: &str,
        body: &str,
        timeout: Duration,
        parse: fn(u16, &str) -> Result<T, Fault>,
    ) -> Attempt<T> {
        let started = Instant::now();
        for attempt in 0..2 {
            if self.credentials.is_some() && self.token.is_none() {
                match self.authenticate(base, prefix, timeout.saturating_sub(started.elapsed())) {
                    Ok(token) => self.token = Some(token),
                    Err(a) => return a,
                }
            }
            let auth = self.v3_headers();
            let url = format!("{base}{prefix}{path}");
            let left = timeout.saturating_sub(started.elapsed());
            let reply = match self.http.request(
                Method::Post,
                &url,
                &auth,
                Some(("application/json", body)),
                left,
            ) {
                Ok(r) => r,
                // The same keys are as big on every member.
                Err(HttpError::TooBig(_)) if path == v3::RANGE => {
                    return Attempt::Stop(EtcdError::TooBig);
                }
                Err(e) => return Attempt::Next(e.to_string()),
            };
            match parse(reply.status, &reply.body) {
                Ok(v) => return Attempt::Done(v),
                Err(Fault::BadToken(_)) if attempt == 0 && self.credentials.is_some() => {
                    log::info!("{base}: auth token rejected; authenticating again");
                    self.token = None;
                }
                Err(f) => return fault_attempt(base, f),
            }
        }
        Attempt::Next("auth token rejected twice".into())
    }

    /// The headers of every v3 request: the auth token, and `hasleader`, which the gateway
    /// passes on as the gRPC metadata etcd's own clients send with `WithRequireLeader`. A
    /// member that has lost its leader (cut off from the others, still answering) then refuses
    /// at once with "no leader" (code 14) instead of serving stale reads, holding writes until
    /// they time out, or keeping a watch open that will never see another change; and it
    /// cancels such watches when it loses its leader. Either way the client moves on to the
    /// next endpoint.
    fn v3_headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![("grpc-metadata-hasleader", "true")];
        if let Some(t) = self.token.as_deref() {
            headers.push(("authorization", t));
        }
        headers
    }

    fn authenticate<T>(
        &mut self,
        base: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, Attempt<T>> {
        let Some(creds) = &self.credentials else {
            return Err(Attempt::Next("no credentials".into()));
        };
        let body = v3::authenticate(&creds.user, creds.password.as_deref().unwrap_or(""));
        let url = format!("{base}{prefix}{}", v3::AUTHENTICATE);
        let reply = self
            .http
            .request(
                Method::Post,
                &url,
                &[],
                Some(("application/json", &body)),
                timeout,
            )
            .map_err(|e| Attempt::Next(e.to_string()))?;
        v3::parse_token(reply.status, &reply.body).map_err(|f| match fault_attempt::<T>(base, f) {
            Attempt::Stop(EtcdError::Failed { endpoint, cause }) => {
                Attempt::Stop(EtcdError::Failed {
                    endpoint,
                    cause: format!("authentication as {:?} failed: {cause}", creds.user),
                })
            }
            other => other,
        })
    }

    fn v2_call(
        &self,
        base: &str,
        method: Method,
        key: &str,
        form: Option<&str>,
        timeout: Duration,
        missing_ok: bool,
    ) -> Attempt<()> {
        let basic;
        let mut headers = Vec::new();
        if let Some(c) = &self.credentials {
            basic = format!(
                "Basic {}",
                v3::base64(
                    format!("{}:{}", c.user, c.password.as_deref().unwrap_or("")).as_bytes()
                )
            );
            headers.push(("authorization", basic.as_str()));
        }
        let url = format!("{base}{}", v2::key_path(key));
        let body = form.map(|f| ("application/x-www-form-urlencoded", f));
        log::trace!("{method:?} {url} {}", form.unwrap_or(""));
        let Reply { status, body, .. } =
            match self.http.request(method, &url, &headers, body, timeout) {
                Ok(reply) => reply,
                Err(e) => return Attempt::Next(e.to_string()),
            };
        log::trace!("{status} {body}");
        match v2::parse(status, &body, missing_ok) {
            Ok(()) => Attempt::Done(()),
            Err(f) => fault_attempt(base, f),
        }
    }
}

impl<T> Attempt<T> {
    fn and_then<U>(self, f: impl FnOnce(T) -> Attempt<U>) -> Attempt<U> {
        match self {
            Attempt::Done(v) => f(v),
            Attempt::Next(e) => Attempt::Next(e),
            Attempt::Stop(e) => Attempt::Stop(e),
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        self.and_then(|v| Attempt::Done(f(v)))
    }
}

/// Longest watch message read: bigger ones (a burst of huge values) end the stream, and the
/// reader reads the keys again page by page.
const MAX_WATCH_LINE: usize = 1 << 20;

fn not_v3(base: &str) -> EtcdError {
    EtcdError::Failed {
        endpoint: base.to_owned(),
        cause: "this cluster speaks only the etcd v2 API; watching needs v3 (etcd 3.x)".into(),
    }
}

fn fault_attempt<T>(base: &str, fault: Fault) -> Attempt<T> {
    match fault {
        Fault::LeaseGone | Fault::KeyGone => Attempt::Stop(EtcdError::Gone),
        Fault::Unavailable(cause) => Attempt::Next(format!("unavailable: {cause}")),
        // A malformed answer may be one broken member or a proxy: try the others.
        Fault::Malformed(cause) => Attempt::Next(cause),
        Fault::BadToken(cause) | Fault::Rejected(cause) => Attempt::Stop(EtcdError::Failed {
            endpoint: base.to_owned(),
            cause,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_api_from_version() {
        assert_eq!(
            api_from_version(include_str!("../../tests/fixtures/version_3.4.json")),
            Ok(Api::V3("/v3"))
        );
        assert_eq!(
            api_from_version(r#"{"etcdserver":"3.3.27","etcdcluster":"3.3.0"}"#),
            Ok(Api::V3("/v3beta"))
        );
        assert_eq!(
            api_from_version(r#"{"etcdserver":"2.3.8","etcdcluster":"2.3.0"}"#),
            Ok(Api::V2)
        );
        assert!(api_from_version("{}").is_err());
        assert!(api_from_version("not json").is_err());
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 42);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn first_endpoints_spread_a_fleet_and_stay_put() {
        for members in [2, 3, 5] {
            let mut on = vec![0usize; members];
            for i in 0..1000 {
                on[first_endpoint(&format!("web-{i}"), members)] += 1;
            }
            let mean = 1000 / members;
            // A fair split: each member within 20 % of its share.
            assert!(
                on.iter().all(|n| n.abs_diff(mean) * 5 <= mean),
                "{members} members: {on:?}"
            );
        }
        // A failed member's instances spread over the others: of those that start on the
        // first of three, about half go on to each of the other two.
        let mut next = [0usize; 3];
        for i in 0..3000 {
            let order = endpoint_order(&format!("web-{i}"), 3);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "a permutation");
            if order[0] == 0 {
                next[order[1]] += 1;
            }
        }
        assert_eq!(next[0], 0);
        assert!(
            next[1].abs_diff(next[2]) * 5 <= next[1] + next[2],
            "{next:?}"
        );
        // The same name, the same member, in any process (no per-process seed).
        assert_eq!(first_endpoint("web-7", 3), first_endpoint("web-7", 3));
        // FNV-1a's published test vectors, and the finaliser fixed by a known value.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(identity_hash("web-7"), 3_749_664_545_934_666_742);
        assert_eq!(first_endpoint("anything", 1), 0);
        assert_eq!(first_endpoint("anything", 0), 0);
    }

    #[test]
    fn jitter_seeds_of_same_moment_processes_differ_by_name() {
        assert_ne!(jitter_seed("web-1"), jitter_seed("web-2"));
        // Seeds one apart still give unrelated delays.
        let first =
            |seed| Backoff::new(Duration::from_secs(1), Duration::from_secs(1), seed).next_delay();
        let delays: std::collections::BTreeSet<Duration> = (1..=20).map(first).collect();
        assert!(delays.len() >= 15, "{delays:?}");
    }

    #[test]
    fn a_fleet_retrying_through_an_outage_comes_back_spread_out() {
        // 1000 instances (seeds as jitter_seed gives them) fail from t = 0 and retry with the
        // registrar's backoff (200 ms doubling to a 3.3 s cap: --ttl 10) until etcd is back at
        // t = 10 s; their first tries after that are spread over one cap, never at once.
        let cap = Duration::from_millis(3333);
        let back = Duration::from_secs(10);
        let mut first = Vec::new();
        for i in 0..1000 {
            let mut b = Backoff::new(
                Duration::from_millis(200),
                cap,
                jitter_seed(&format!("i{i}")),
            );
            let mut t = Duration::ZERO;
            while t < back {
                t += b.next_delay();
            }
            first.push(t - back);
        }
        assert!(first.iter().all(|d| *d <= cap), "all within one cap");
        let mut per_100ms = std::collections::BTreeMap::<u128, usize>::new();
        for d in &first {
            *per_100ms.entry(d.as_millis() / 100).or_default() += 1;
        }
        // Uniform over about 2.5 s would put 40 in each 100 ms.
        let busiest = per_100ms.values().max().copied().unwrap_or(0);
        assert!(
            busiest <= 80,
            "{busiest} in the busiest 100 ms: {per_100ms:?}"
        );
    }

    #[test]
    fn endpoints_as_urls() {
        let e = |tls, host: &str, port| Endpoint {
            tls,
            host: host.into(),
            port,
        };
        assert_eq!(
            base_url(&e(false, "10.0.0.1", 2379)),
            "http://10.0.0.1:2379"
        );
        assert_eq!(
            base_url(&e(true, "fd00::1", 2379)),
            "https://[fd00::1]:2379"
        );
    }
}
