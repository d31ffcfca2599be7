//! The services as hecd-haproxy keeps them, and what to do about them: a pure model. For each
//! service, what etcd wants (its servers, its instances' route declarations) and what HAProxy
//! has (the servers of the backend it was given, the routes map). [`Balancer::plan`] compares
//! them and returns the operations ([`Op`]) that make HAProxy equal to what is wanted; the
//! applier ([`super::apply`]) carries them out over the runtime API and hands each result back
//! to [`Balancer::applied`], the one place HAProxy's side of the model changes. Level-triggered:
//! every update replaces or edits what is wanted, then the next plan walks the difference, so a
//! resync after a lost watch needs no special case. Nothing here talks to HAProxy or etcd.
//!
//! Order within one plan, so no request meets a backend that cannot serve it:
//! 1. every service with servers gets a backend (the default service `servers`, the others one
//!    of the pool's); a used-up pool makes the plan a reload with a bigger one;
//! 2. new servers are added (`add server`, `enable health`, `enable server`), moved ones
//!    re-addressed, draining ones whose key came back made ready;
//! 3. the routes map is made equal to the live declarations (`set map`, else `add map`; `del map`):
//!    a route counts while the instance that declares it has its server key, and a route two
//!    services claim goes to the one whose live declaration is older;
//! 4. servers whose key went are put in drain; [`Balancer::finish`] deletes them once idle (or
//!    after the drain timeout), and then they are confirmed (confirmed drain);
//! 5. a backend whose service has no server left goes back to the pool.
//!
//! A refused operation makes the next plan a reload; one that failed on the socket is planned
//! again. Until the first successful read, nothing is wanted or removed: HAProxy serves what
//! the config file had. A failed read never changes what is wanted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::follow::{Change, Declaration, Update};
use crate::haproxy::{
    Addr, BackendConfig, DEFAULT_BACKEND, POOL_PREFIX, RuntimeError, TCP_PREFIX, TcpListener,
};

/// Pool backends prepared at start beyond those in use.
pub const POOL_SPARE: usize = 16;

/// One server in HAProxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub addr: Addr,
    /// Since when it drains (its key is gone), if it does.
    pub draining: Option<Instant>,
}

/// One service: the servers under one prefix.
#[derive(Clone, Debug, Default)]
pub struct Service {
    /// The HAProxy backend serving it, while it has one.
    pub backend: Option<String>,
    /// What etcd says; `None` until the first read.
    pub wanted: Option<BTreeMap<String, Addr>>,
    /// What HAProxy has in the backend.
    pub servers: BTreeMap<String, Server>,
    /// Route declarations of its instances, by instance name.
    pub declarations: BTreeMap<String, Declaration>,
    /// Followed by the etcd thread (the default service always is).
    pub followed: bool,
}

impl Service {
    fn needs_backend(&self) -> bool {
        self.wanted.as_ref().is_some_and(|w| !w.is_empty()) || !self.servers.is_empty()
    }
}

/// One operation on HAProxy, as the model decides it; the applier carries it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new server: `add server`, `enable health`, `enable server`.
    Add {
        prefix: String,
        backend: String,
        name: String,
        addr: Addr,
    },
    /// A server whose address changed (and that may be coming back from a drain): `set server
    /// ... addr`, then `state ready` if it drains.
    Move {
        prefix: String,
        backend: String,
        name: String,
        addr: Addr,
        ready: bool,
    },
    /// A draining server whose key came back at the same address: `state ready`.
    Ready {
        prefix: String,
        backend: String,
        name: String,
    },
    /// A server whose key went: `state drain` (no new requests; open ones finish).
    Drain {
        prefix: String,
        backend: String,
        name: String,
    },
    /// A drained server that is idle (`in_use` 0) or past the drain timeout (`force`: its
    /// sessions are shut first): `state maint`, `del server`.
    Delete {
        prefix: String,
        backend: String,
        name: String,
        force: bool,
        in_use: u64,
    },
    /// A route's map entry, new or pointed elsewhere ([`crate::haproxy::Runtime::map_set`]).
    MapSet { key: String, backend: String },
    /// A route no longer declared: `del map`.
    MapDel { key: String },
    /// A service with no server left gives its backend back to the pool (no HAProxy command).
    Release { prefix: String, backend: String },
    /// Only a reload with a rewritten config applies what is wanted.
    Reload(String),
}

/// What an operation is about, for messages.
fn describe(op: &Op) -> String {
    match op {
        Op::Add { prefix, name, .. }
        | Op::Move { prefix, name, .. }
        | Op::Ready { prefix, name, .. }
        | Op::Drain { prefix, name, .. }
        | Op::Delete { prefix, name, .. } => format!("server {name} of {prefix}"),
        Op::MapSet { key, .. } | Op::MapDel { key } => format!("route {key}"),
        Op::Release { prefix, .. } => format!("service {prefix}"),
        Op::Reload(why) => format!("reload ({why})"),
    }
}

pub struct Balancer {
    pub drain_timeout: Duration,
    /// `--prefix`: the service of every request no route matches.
    pub default_prefix: String,
    /// The services whose backend never changes: the default one (`servers`) and each `--tcp`
    /// one (`tcp-N`, in order), prefix → backend.
    fixed: Vec<(String, String)>,
    pub services: BTreeMap<String, Service>,
    /// Pool backends in the config HAProxy runs (`pool-1` .. `pool-N`).
    pub pool: usize,
    /// The routes map as HAProxy has it: map key → backend.
    pub routes: BTreeMap<String, String>,
    /// Only a reload with a rewritten config can apply what is wanted (the runtime API
    /// refused a change, or the pool is used up).
    pub needs_reload: Option<String>,
    /// The first snapshot arrived.
    pub synced: bool,
    /// `(prefix, name)` of servers whose key went and that HAProxy no longer has (drained and
    /// deleted, or never there): what this balancer confirms (confirmed drain).
    pub drained: Vec<(String, String)>,
    /// Routes not routed because an older declaration holds them, as last logged.
    conflicts: BTreeSet<(String, String)>,
    /// A runtime command failed on the socket: the next pass must run even if nothing else
    /// changes.
    pub retry: bool,
    /// What HAProxy has is not known (reading it back after a start or reload failed): the
    /// next pass reads it before it plans anything ([`Balancer::loaded`] clears it).
    pub stale: bool,
}

impl Balancer {
    /// A model with the default service under `default_prefix` and the TCP services of `tcp`.
    pub fn new(drain_timeout: Duration, default_prefix: String, tcp: &[TcpListener]) -> Self {
        let fixed: Vec<(String, String)> =
            std::iter::once((default_prefix.clone(), DEFAULT_BACKEND.to_owned()))
                .chain(tcp.iter().map(|t| (t.prefix.clone(), t.backend.clone())))
                .collect();
        let services = fixed
            .iter()
            .map(|(prefix, backend)| {
                let service = Service {
                    backend: Some(backend.clone()),
                    followed: true,
                    ..Service::default()
                };
                (prefix.clone(), service)
            })
            .collect();
        Balancer {
            drain_timeout,
            default_prefix,
            fixed,
            services,
            pool: POOL_SPARE,
            routes: BTreeMap::new(),
            needs_reload: None,
            synced: false,
            drained: Vec::new(),
            conflicts: BTreeSet::new(),
            retry: false,
            stale: false,
        }
    }

    /// Takes an update from etcd into what is wanted.
    pub fn update(&mut self, update: Update) {
        match update {
            Update::Snapshot {
                services,
                declarations,
            } => {
                self.synced = true;
                for service in self.services.values_mut() {
                    service.wanted = Some(BTreeMap::new());
                    service.declarations.clear();
                    service.followed = false;
                }
                for (prefix, servers) in services {
                    let s = self.services.entry(prefix).or_default();
                    s.wanted = Some(servers);
                    s.followed = true;
                }
                for ((prefix, name), d) in declarations {
                    self.services
                        .entry(prefix)
                        .or_default()
                        .declarations
                        .insert(name, d);
                }
                self.forget_unfollowed();
            }
            Update::Service(prefix, servers) => {
                let s = self.services.entry(prefix).or_default();
                s.wanted = Some(servers);
                s.followed = true;
            }
            Update::Unfollow(prefix) => {
                if let Some(s) = self.services.get_mut(&prefix) {
                    s.wanted = Some(BTreeMap::new());
                    s.declarations.clear();
                    s.followed = false;
                }
                self.forget_unfollowed();
            }
            Update::Changes(changes) => {
                for change in changes {
                    self.change(change);
                }
            }
        }
    }

    fn change(&mut self, change: Change) {
        match change {
            Change::Server { prefix, name, addr } => {
                let Some(s) = self.services.get_mut(&prefix) else {
                    return;
                };
                let Some(wanted) = &mut s.wanted else {
                    return; // only after a snapshot, which the follower always sends first
                };
                match addr {
                    Some(a) => {
                        wanted.insert(name, a);
                    }
                    None => {
                        wanted.remove(&name);
                        // Never a server here: nothing to drain, confirmed at once.
                        if !s.servers.contains_key(&name) {
                            self.drained.push((prefix, name));
                        }
                    }
                }
            }
            Change::Route {
                prefix,
                name,
                declaration,
            } => {
                let s = self.services.entry(prefix).or_default();
                match declaration {
                    Some(d) => {
                        s.declarations.insert(name, d);
                    }
                    None => {
                        s.declarations.remove(&name);
                    }
                }
            }
        }
    }

    /// Drops the services nobody follows that have nothing left in HAProxy.
    fn forget_unfollowed(&mut self) {
        let fixed = &self.fixed;
        self.services.retain(|prefix, s| {
            fixed.iter().any(|(p, _)| p == prefix)
                || s.followed
                || s.backend.is_some()
                || !s.declarations.is_empty()
        });
    }

    /// The names of the pool's backends: `pool-1` .. `pool-N`.
    fn pool_backends(&self) -> impl Iterator<Item = String> + use<> {
        (1..=self.pool).map(|i| format!("{POOL_PREFIX}{i}"))
    }

    /// The pool backends no service holds.
    fn free_backends(&self) -> Vec<String> {
        let held: BTreeSet<&str> = self
            .services
            .values()
            .filter_map(|s| s.backend.as_deref())
            .collect();
        self.pool_backends()
            .filter(|b| !held.contains(b.as_str()))
            .collect()
    }

    /// Step 1: a backend for every service that needs one. A used-up pool grows (by a reload:
    /// the caller renders the config with [`Balancer::layout`]). Also what the start-up does
    /// before HAProxy runs.
    pub fn assign_backends(&mut self) {
        let mut free = self.free_backends().into_iter();
        let needing: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| s.backend.is_none() && s.needs_backend())
            .map(|(p, _)| p.clone())
            .collect();
        for (i, prefix) in needing.iter().enumerate() {
            let backend = match free.next() {
                Some(b) => b,
                None => {
                    let before = self.pool;
                    let used = self.pool + needing.len() - i;
                    self.pool = used + used.max(POOL_SPARE);
                    self.needs_reload.get_or_insert(format!(
                        "the pool of {before} backends is used up; growing it to {}",
                        self.pool
                    ));
                    free = self.free_backends().into_iter();
                    let Some(b) = free.next() else { return };
                    b
                }
            };
            log::info!("service {prefix} takes backend {backend}");
            if let Some(s) = self.services.get_mut(prefix) {
                s.backend = Some(backend);
            }
        }
    }

    /// The operations that make HAProxy equal to what is wanted, in the order of the module
    /// doc; only `[Reload(why)]` when nothing but a reload can. Empty before the first read.
    pub fn plan(&mut self) -> Vec<Op> {
        if !self.synced {
            return Vec::new();
        }
        self.assign_backends();
        if let Some(why) = self.needs_reload.take() {
            return vec![Op::Reload(why)]; // the reload's config has everything
        }
        let mut ops = self.plan_servers();
        ops.extend(self.plan_routes());
        ops.extend(self.plan_drains());
        ops.extend(self.release_backends());
        ops
    }

    /// Records a failed operation: a socket error is tried again on the next plan, a missing
    /// server or entry is one HAProxy no longer has, a refusal asks for a reload.
    fn failed(&mut self, what: &str, e: RuntimeError) {
        match e {
            RuntimeError::Socket(e) => {
                log::warn!("{what}: {e}; trying again");
                self.retry = true;
            }
            RuntimeError::Missing(e) => log::debug!("{what}: {e}"),
            RuntimeError::Refused(e) => {
                self.needs_reload.get_or_insert(format!("{what}: {e}"));
            }
        }
    }

    /// Step 2.
    fn plan_servers(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for (prefix, s) in &self.services {
            let (Some(backend), Some(wanted)) = (&s.backend, &s.wanted) else {
                continue;
            };
            for (name, addr) in wanted {
                let (prefix, backend, name) = (prefix.clone(), backend.clone(), name.clone());
                ops.push(match s.servers.get(&name) {
                    None => Op::Add {
                        prefix,
                        backend,
                        name,
                        addr: addr.clone(),
                    },
                    Some(cur) if cur.draining.is_none() && &cur.addr == addr => continue,
                    Some(cur) if &cur.addr == addr => Op::Ready {
                        prefix,
                        backend,
                        name,
                    },
                    Some(cur) => Op::Move {
                        prefix,
                        backend,
                        name,
                        addr: addr.clone(),
                        ready: cur.draining.is_some(),
                    },
                });
            }
        }
        ops
    }

    /// The routes map as it should be: map key → backend.
    pub fn wanted_routes(&mut self) -> BTreeMap<String, String> {
        // map key → (declaration revision, prefix, route as written)
        let mut claims: BTreeMap<String, Vec<(i64, String, String)>> = BTreeMap::new();
        for (prefix, s) in &self.services {
            let (Some(backend), Some(wanted)) = (&s.backend, &s.wanted) else {
                continue;
            };
            if backend.starts_with(TCP_PREFIX) {
                continue; // a TCP service is reached on its own port, never by a route
            }
            for (name, d) in &s.declarations {
                if !wanted.contains_key(name) {
                    continue; // a declaration counts while its instance is registered
                }
                for route in &d.routes {
                    let c = claims.entry(route.map_key()).or_default();
                    match c.iter_mut().find(|(_, p, _)| p == prefix) {
                        Some(existing) => existing.0 = existing.0.min(d.revision),
                        None => c.push((d.revision, prefix.clone(), route.to_string())),
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        let mut conflicts = BTreeSet::new();
        for (key, mut c) in claims {
            c.sort();
            let (_, winner, route) = &c[0];
            for (_, loser, _) in &c[1..] {
                let conflict = (route.clone(), loser.clone());
                if !self.conflicts.contains(&conflict) {
                    log::warn!(
                        "route {route} is claimed by {loser} too; it stays with {winner}, whose declaration is older"
                    );
                }
                conflicts.insert(conflict);
            }
            if let Some(b) = self.services.get(winner).and_then(|s| s.backend.clone()) {
                out.insert(key, b);
            }
        }
        self.conflicts = conflicts;
        out
    }

    /// Step 3.
    fn plan_routes(&mut self) -> Vec<Op> {
        let wanted = self.wanted_routes();
        let mut ops = Vec::new();
        for (key, backend) in &wanted {
            let current = self.routes.get(key);
            if current != Some(backend) {
                ops.push(Op::MapSet {
                    key: key.clone(),
                    backend: backend.clone(),
                });
            }
        }
        for key in self.routes.keys().filter(|k| !wanted.contains_key(*k)) {
            ops.push(Op::MapDel { key: key.clone() });
        }
        ops
    }

    /// Step 4, first half: drain what is no longer wanted.
    fn plan_drains(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for (prefix, s) in &self.services {
            let (Some(backend), Some(wanted)) = (&s.backend, &s.wanted) else {
                continue;
            };
            for (name, server) in &s.servers {
                if server.draining.is_none() && !wanted.contains_key(name) {
                    ops.push(Op::Drain {
                        prefix: prefix.clone(),
                        backend: backend.clone(),
                        name: name.clone(),
                    });
                }
            }
        }
        ops
    }

    /// Step 5: every service with no server wanted or left gives its backend back (the default
    /// one keeps `servers`).
    fn release_backends(&mut self) -> Vec<Op> {
        let mut ops = Vec::new();
        for (prefix, s) in &mut self.services {
            if self.fixed.iter().any(|(p, _)| p == prefix) || s.needs_backend() {
                continue;
            }
            if let Some(backend) = s.backend.take() {
                log::info!(
                    "service {prefix} has no server left; backend {backend} back in the pool"
                );
                ops.push(Op::Release {
                    prefix: prefix.clone(),
                    backend,
                });
            }
        }
        self.forget_unfollowed();
        ops
    }

    /// Whether a server drains (then the caller polls [`Balancer::finish`] often).
    pub fn draining(&self) -> bool {
        self.services
            .values()
            .any(|s| s.servers.values().any(|v| v.draining.is_some()))
    }

    /// Step 4, second half: the draining servers that are idle (by `in_use`, connections in
    /// use per `(backend, server)` as HAProxy counts them) or past the drain timeout at `now`,
    /// to delete.
    pub fn finish(&self, now: Instant, in_use: &BTreeMap<(String, String), u64>) -> Vec<Op> {
        let mut ops = Vec::new();
        for (prefix, s) in &self.services {
            let Some(backend) = &s.backend else { continue };
            for (name, server) in &s.servers {
                let Some(since) = server.draining else {
                    continue;
                };
                let used = in_use
                    .get(&(backend.clone(), name.clone()))
                    .copied()
                    .unwrap_or(0);
                let late = now.saturating_duration_since(since) >= self.drain_timeout;
                if used == 0 || late {
                    ops.push(Op::Delete {
                        prefix: prefix.clone(),
                        backend: backend.clone(),
                        name: name.clone(),
                        force: late && used > 0,
                        in_use: used,
                    });
                }
            }
        }
        ops
    }

    /// Takes the result of carrying out `op` at `now` into what HAProxy has: a success changes
    /// it; a server or map entry already gone counts as removed; a socket error leaves it (the
    /// next plan has the operation again, [`Balancer::retry`]); a refusal asks for a reload.
    /// Returns whether HAProxy changed (the files follow).
    pub fn applied(&mut self, op: &Op, result: Result<(), RuntimeError>, now: Instant) -> bool {
        let missing = matches!(result, Err(RuntimeError::Missing(_)));
        if let Err(e) = &result
            && !(missing && matches!(op, Op::Drain { .. } | Op::Delete { .. } | Op::MapDel { .. }))
        {
            self.failed(&describe(op), e.clone());
            return false;
        }
        match op {
            Op::Add {
                prefix,
                name,
                addr,
                backend,
            } => {
                log::info!("added server {name} {addr} to {prefix} ({backend})");
                self.set_server(prefix, name, addr.clone());
            }
            Op::Move {
                prefix,
                name,
                addr,
                ready,
                ..
            } => {
                let how = if *ready {
                    "back in service at"
                } else {
                    "moved to"
                };
                log::info!("server {name} of {prefix} {how} {addr}");
                self.set_server(prefix, name, addr.clone());
            }
            Op::Ready { prefix, name, .. } => {
                let addr = self.server(prefix, name).map(|s| s.addr.clone());
                if let Some(addr) = addr {
                    log::info!("server {name} of {prefix} back in service at {addr}");
                    self.set_server(prefix, name, addr);
                }
            }
            Op::Drain { prefix, name, .. } if missing => {
                // HAProxy no longer has it: out of rotation already.
                self.remove_server(prefix, name);
            }
            Op::Drain { prefix, name, .. } => {
                if let Some(server) = self.server_mut(prefix, name) {
                    log::info!(
                        "draining server {name} {} of {prefix}: its key is gone",
                        server.addr
                    );
                    server.draining = Some(now);
                }
            }
            Op::Delete {
                prefix,
                name,
                force,
                in_use,
                ..
            } => {
                let since = self.server(prefix, name).and_then(|s| s.draining);
                let ms = since.map_or(0, |t| now.saturating_duration_since(t).as_millis());
                if *force {
                    log::warn!(
                        "removed server {name} of {prefix} after the drain timeout ({ms} ms), cutting {in_use} connections"
                    );
                } else {
                    log::info!(
                        "removed server {name} of {prefix}: idle {ms} ms after its key went"
                    );
                }
                self.remove_server(prefix, name);
                self.release_backends();
            }
            Op::MapSet { key, backend, .. } => {
                log::info!("route {key} → {backend}");
                self.routes.insert(key.clone(), backend.clone());
            }
            Op::MapDel { key } => {
                log::info!("route {key} removed");
                self.routes.remove(key);
            }
            Op::Release { .. } | Op::Reload(_) => return false,
        }
        true
    }

    fn server(&self, prefix: &str, name: &str) -> Option<&Server> {
        self.services.get(prefix)?.servers.get(name)
    }

    fn server_mut(&mut self, prefix: &str, name: &str) -> Option<&mut Server> {
        self.services.get_mut(prefix)?.servers.get_mut(name)
    }

    /// HAProxy serves `name` of `prefix` at `addr`, in rotation.
    fn set_server(&mut self, prefix: &str, name: &str, addr: Addr) {
        if let Some(s) = self.services.get_mut(prefix) {
            s.servers.insert(
                name.to_owned(),
                Server {
                    addr,
                    draining: None,
                },
            );
        }
    }

    /// HAProxy no longer has `name` of `prefix`: confirmed.
    fn remove_server(&mut self, prefix: &str, name: &str) {
        if let Some(s) = self.services.get_mut(prefix) {
            s.servers.remove(name);
        }
        self.drained.push((prefix.to_owned(), name.to_owned()));
    }

    /// The backends for the config file: the default one and the whole pool, each with its
    /// service and servers (`wanted`: what etcd wants, for a reload; else what HAProxy serves,
    /// draining servers left out).
    pub fn layout(&self, wanted: bool) -> Vec<BackendConfig> {
        let mut by_backend: BTreeMap<&str, (&String, &Service)> = BTreeMap::new();
        for (prefix, s) in &self.services {
            if let Some(b) = &s.backend {
                by_backend.insert(b, (prefix, s));
            }
        }
        let names = self
            .fixed
            .iter()
            .map(|(_, backend)| backend.clone())
            .chain(self.pool_backends());
        names
            .map(|name| {
                let Some((prefix, s)) = by_backend.get(name.as_str()) else {
                    return BackendConfig {
                        name,
                        ..BackendConfig::default()
                    };
                };
                let servers = match (&s.wanted, wanted) {
                    (Some(w), true) => w.clone(),
                    _ => s
                        .servers
                        .iter()
                        .filter(|(_, v)| v.draining.is_none())
                        .map(|(n, v)| (n.clone(), v.addr.clone()))
                        .collect(),
                };
                BackendConfig {
                    name,
                    service: Some((*prefix).clone()),
                    servers,
                }
            })
            .collect()
    }

    /// Takes the backends of a config file written before (a start without etcd): their
    /// services and pool size, as what is wanted until etcd answers.
    pub fn adopt(&mut self, backends: &[BackendConfig]) {
        let pool = backends
            .iter()
            .filter(|b| b.name.starts_with(POOL_PREFIX))
            .count();
        self.pool = self.pool.max(pool);
        for b in backends {
            let Some(prefix) = &b.service else { continue };
            let s = self.services.entry(prefix.clone()).or_default();
            s.backend = Some(b.name.clone());
            s.followed = true;
        }
    }

    /// What HAProxy has after a (re)start or reload, as read back through the runtime API:
    /// each backend's servers, and the routes map.
    pub fn loaded(
        &mut self,
        mut servers: BTreeMap<String, BTreeMap<String, Addr>>,
        routes: BTreeMap<String, String>,
    ) {
        // Servers that were draining and that the new worker does not have (a reload's config
        // lists only wanted servers) are out of rotation now: confirm them.
        for (prefix, s) in &self.services {
            let now = s.backend.as_ref().and_then(|b| servers.get(b));
            for (name, server) in &s.servers {
                if server.draining.is_some() && now.is_none_or(|n| !n.contains_key(name)) {
                    self.drained.push((prefix.clone(), name.clone()));
                }
            }
        }
        for s in self.services.values_mut() {
            s.servers = s
                .backend
                .as_ref()
                .and_then(|b| servers.remove(b))
                .unwrap_or_default()
                .into_iter()
                .map(|(name, addr)| {
                    (
                        name,
                        Server {
                            addr,
                            draining: None,
                        },
                    )
                })
                .collect();
        }
        self.routes = routes;
        self.stale = false;
    }

    /// Every server HAProxy should have per backend, for checking a reload took: backend →
    /// names.
    pub fn expected_servers(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.layout(true)
            .into_iter()
            .filter(|b| !b.servers.is_empty())
            .map(|b| (b.name, b.servers.into_keys().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Route;

    const DEFAULT: &str = "/app/servers";

    fn addr(a: &str) -> Addr {
        Addr::parse(a).unwrap()
    }

    fn servers(list: &[(&str, &str)]) -> BTreeMap<String, Addr> {
        list.iter()
            .map(|(n, a)| ((*n).to_owned(), addr(a)))
            .collect()
    }

    fn declared(routes: &[&str], revision: i64) -> Declaration {
        Declaration {
            routes: routes.iter().map(|r| Route::parse(r).unwrap()).collect(),
            revision,
        }
    }

    /// A model after a first read of `services`, with `declarations` (prefix, name, routes,
    /// revision).
    fn synced(
        services: &[(&str, &[(&str, &str)])],
        declarations: &[(&str, &str, &[&str], i64)],
    ) -> Balancer {
        let mut b = Balancer::new(Duration::from_secs(30), DEFAULT.into(), &[]);
        b.update(Update::Snapshot {
            services: services
                .iter()
                .map(|(p, s)| ((*p).to_owned(), servers(s)))
                .collect(),
            declarations: declarations
                .iter()
                .map(|(p, n, r, rev)| (((*p).to_owned(), (*n).to_owned()), declared(r, *rev)))
                .collect(),
        });
        b
    }

    /// Carries out `ops` as an HAProxy that accepts everything would.
    fn accept(b: &mut Balancer, ops: &[Op], now: Instant) {
        for op in ops {
            b.applied(op, Ok(()), now);
        }
    }

    fn server_gone(b: &mut Balancer, prefix: &str, name: &str) {
        b.update(Update::Changes(vec![Change::Server {
            prefix: prefix.into(),
            name: name.into(),
            addr: None,
        }]));
    }

    fn kinds(ops: &[Op]) -> Vec<&'static str> {
        ops.iter()
            .map(|op| match op {
                Op::Add { .. } => "add",
                Op::Move { .. } => "move",
                Op::Ready { .. } => "ready",
                Op::Drain { .. } => "drain",
                Op::Delete { .. } => "delete",
                Op::MapSet { .. } => "map set",
                Op::MapDel { .. } => "map del",
                Op::Release { .. } => "release",
                Op::Reload(_) => "reload",
            })
            .collect()
    }

    #[test]
    fn nothing_is_planned_before_the_first_read() {
        let mut b = Balancer::new(Duration::from_secs(30), DEFAULT.into(), &[]);
        assert_eq!(b.plan(), []);
    }

    #[test]
    fn servers_get_a_backend_before_their_routes_point_at_it() {
        let mut b = synced(
            &[
                (DEFAULT, &[("a", "10.0.0.1:80")]),
                ("/app/api", &[("api-1", "10.0.0.2:80")]),
            ],
            &[("/app/api", "api-1", &["api.example.com"], 5)],
        );
        let ops = b.plan();
        assert_eq!(kinds(&ops), ["add", "add", "map set"]);
        assert_eq!(
            ops[2],
            Op::MapSet {
                key: "api.example.com/".into(),
                backend: "pool-1".into()
            }
        );
        accept(&mut b, &ops, Instant::now());
        // Applied: nothing left to do.
        assert_eq!(b.plan(), []);
        assert_eq!(
            b.routes.get("api.example.com/").map(String::as_str),
            Some("pool-1")
        );
    }

    #[test]
    fn the_older_live_claim_of_a_route_wins() {
        let mut b = synced(
            &[
                ("/app/a", &[("a-1", "10.0.0.1:80")]),
                ("/app/b", &[("b-1", "10.0.0.2:80")]),
            ],
            &[
                ("/app/a", "a-1", &["www.example.com"], 9),
                ("/app/b", "b-1", &["www.example.com"], 5),
            ],
        );
        let ops = b.plan();
        let b_backend = b.services["/app/b"].backend.clone().unwrap();
        assert!(ops.contains(&Op::MapSet {
            key: "www.example.com/".into(),
            backend: b_backend
        }));
        accept(&mut b, &ops, Instant::now());
        // b's instance goes: its declaration no longer counts, a's takes the route, and b's
        // server drains after the route has moved.
        server_gone(&mut b, "/app/b", "b-1");
        let ops = b.plan();
        assert_eq!(kinds(&ops), ["map set", "drain"]);
        let a_backend = b.services["/app/a"].backend.clone().unwrap();
        assert_eq!(
            ops[0],
            Op::MapSet {
                key: "www.example.com/".into(),
                backend: a_backend
            }
        );
    }

    #[test]
    fn a_used_up_pool_grows_by_a_reload() {
        let many: Vec<(String, Vec<(&str, &str)>)> = (0..=POOL_SPARE)
            .map(|i| (format!("/app/s{i}"), vec![("one", "10.0.0.1:80")]))
            .collect();
        let refs: Vec<(&str, &[(&str, &str)])> = many
            .iter()
            .map(|(p, s)| (p.as_str(), s.as_slice()))
            .collect();
        let mut b = synced(&refs, &[]);
        let ops = b.plan();
        assert_eq!(kinds(&ops), ["reload"]);
        assert!(
            matches!(&ops[0], Op::Reload(why) if why.contains("pool of 16 backends is used up")),
            "{ops:?}"
        );
        assert!(b.pool > POOL_SPARE + 1);
        // The reload's config has a backend for each service and the bigger pool.
        let layout = b.layout(true);
        assert_eq!(layout.len(), b.pool + 1);
        assert_eq!(layout.iter().filter(|l| l.service.is_some()).count(), 18);
        // Once reloaded, no reload again.
        assert_eq!(kinds(&b.plan()), vec!["add"; 17]);
    }

    #[test]
    fn a_server_drains_then_is_deleted_then_confirmed() {
        let t0 = Instant::now();
        let mut b = synced(
            &[(DEFAULT, &[("a", "10.0.0.1:80"), ("x", "10.0.0.9:80")])],
            &[],
        );
        let ops = b.plan();
        accept(&mut b, &ops, t0);
        server_gone(&mut b, DEFAULT, "x");
        let ops = b.plan();
        assert_eq!(
            ops,
            [Op::Drain {
                prefix: DEFAULT.into(),
                backend: "servers".into(),
                name: "x".into()
            }]
        );
        accept(&mut b, &ops, t0);
        assert!(b.draining() && b.drained.is_empty());
        let busy: BTreeMap<(String, String), u64> = [(("servers".into(), "x".into()), 2)].into();
        // In use: kept; idle: deleted; then confirmed.
        assert_eq!(b.finish(t0 + Duration::from_secs(1), &busy), []);
        let ops = b.finish(t0 + Duration::from_secs(1), &BTreeMap::new());
        assert_eq!(kinds(&ops), ["delete"]);
        assert!(matches!(ops[0], Op::Delete { force: false, .. }));
        // Past the drain timeout it goes even in use, its sessions shut.
        let late = b.finish(t0 + Duration::from_secs(31), &busy);
        assert!(matches!(
            late[0],
            Op::Delete {
                force: true,
                in_use: 2,
                ..
            }
        ));
        accept(&mut b, &ops, t0 + Duration::from_secs(1));
        assert_eq!(b.drained, [(DEFAULT.to_owned(), "x".to_owned())]);
        assert!(!b.draining());
        assert_eq!(b.plan(), []);
    }

    #[test]
    fn a_key_back_during_the_drain_is_served_again() {
        let t0 = Instant::now();
        let mut b = synced(&[(DEFAULT, &[("x", "10.0.0.9:80")])], &[]);
        let ops = b.plan();
        accept(&mut b, &ops, t0);
        server_gone(&mut b, DEFAULT, "x");
        let ops = b.plan();
        accept(&mut b, &ops, t0);
        let back = |b: &mut Balancer, a: &str| {
            b.update(Update::Changes(vec![Change::Server {
                prefix: DEFAULT.into(),
                name: "x".into(),
                addr: Some(addr(a)),
            }]));
            b.plan()
        };
        assert_eq!(kinds(&back(&mut b, "10.0.0.9:80")), ["ready"]);
        let moved = back(&mut b, "10.0.0.10:80");
        assert!(
            matches!(&moved[..], [Op::Move { ready: true, .. }]),
            "{moved:?}"
        );
        accept(&mut b, &moved, t0);
        assert!(!b.draining());
    }

    #[test]
    fn a_refused_operation_becomes_a_reload_and_a_socket_error_a_retry() {
        let mut b = synced(&[(DEFAULT, &[("a", "10.0.0.1:80")])], &[]);
        let ops = b.plan();
        b.applied(
            &ops[0],
            Err(RuntimeError::Socket("busy".into())),
            Instant::now(),
        );
        assert!(b.retry);
        assert_eq!(b.plan(), ops, "planned again");
        b.applied(
            &ops[0],
            Err(RuntimeError::Refused("no".into())),
            Instant::now(),
        );
        assert_eq!(kinds(&b.plan()), ["reload"]);
    }

    #[test]
    fn a_server_haproxy_no_longer_has_is_confirmed_at_once() {
        let mut b = synced(&[(DEFAULT, &[("x", "10.0.0.9:80")])], &[]);
        let ops = b.plan();
        accept(&mut b, &ops, Instant::now());
        server_gone(&mut b, DEFAULT, "x");
        let ops = b.plan();
        b.applied(
            &ops[0],
            Err(RuntimeError::Missing("No such server".into())),
            Instant::now(),
        );
        assert_eq!(b.drained, [(DEFAULT.to_owned(), "x".to_owned())]);
        assert!(!b.draining());
        // A key deleted that HAProxy never had is confirmed when the change arrives.
        let mut b = synced(&[(DEFAULT, &[])], &[]);
        server_gone(&mut b, DEFAULT, "never");
        assert_eq!(b.drained, [(DEFAULT.to_owned(), "never".to_owned())]);
    }

    #[test]
    fn a_tcp_service_keeps_its_backend_and_takes_no_route() {
        let tcp = [TcpListener {
            bind: ":5432".into(),
            prefix: "/app/db".into(),
            backend: "tcp-1".into(),
        }];
        let mut b = Balancer::new(Duration::from_secs(30), DEFAULT.into(), &tcp);
        b.update(Update::Snapshot {
            services: [
                (DEFAULT.to_owned(), servers(&[])),
                ("/app/db".to_owned(), servers(&[("db-1", "10.0.0.5:5432")])),
            ]
            .into(),
            // A declaration naming the TCP service routes nowhere.
            declarations: [(
                ("/app/db".to_owned(), "db-1".to_owned()),
                declared(&["db.example.com"], 3),
            )]
            .into(),
        });
        let ops = b.plan();
        assert_eq!(
            ops,
            [Op::Add {
                prefix: "/app/db".into(),
                backend: "tcp-1".into(),
                name: "db-1".into(),
                addr: addr("10.0.0.5:5432")
            }]
        );
        accept(&mut b, &ops, Instant::now());
        let names: Vec<String> = b.layout(true).into_iter().map(|l| l.name).collect();
        assert_eq!(names[..3], ["servers", "tcp-1", "pool-1"]);
        // Its last server gone and deleted: the backend stays, as the default one's does.
        server_gone(&mut b, "/app/db", "db-1");
        let ops = b.plan();
        accept(&mut b, &ops, Instant::now());
        let ops = b.finish(Instant::now(), &BTreeMap::new());
        accept(&mut b, &ops, Instant::now());
        assert_eq!(b.services["/app/db"].backend.as_deref(), Some("tcp-1"));
        assert_eq!(b.drained, [("/app/db".to_owned(), "db-1".to_owned())]);
    }

    #[test]
    fn a_service_with_no_server_left_gives_its_backend_back() {
        let t0 = Instant::now();
        let mut b = synced(
            &[("/app/api", &[("api-1", "10.0.0.2:80")])],
            &[("/app/api", "api-1", &["api.example.com"], 5)],
        );
        let ops = b.plan();
        accept(&mut b, &ops, t0);
        server_gone(&mut b, "/app/api", "api-1");
        let ops = b.plan();
        // The route goes first, then the server drains; the backend stays until it is deleted.
        assert_eq!(kinds(&ops), ["map del", "drain"]);
        accept(&mut b, &ops, t0);
        let ops = b.finish(t0, &BTreeMap::new());
        accept(&mut b, &ops, t0);
        assert_eq!(
            b.services.get("/app/api").and_then(|s| s.backend.clone()),
            None
        );
        assert_eq!(b.free_backends().len(), b.pool);
        // The default service keeps its backend, with or without servers.
        assert_eq!(b.services[DEFAULT].backend.as_deref(), Some("servers"));
    }
}
