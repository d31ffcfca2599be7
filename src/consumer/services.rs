//! The services as hecd-haproxy keeps them: for each, what etcd wants (its servers, its
//! instances' route declarations) and what HAProxy has (the servers of the backend it was
//! given, the routes map), made equal through the runtime API. Level-triggered: every update
//! replaces or edits what is wanted, then [`Balancer::reconcile`] walks the difference, so a
//! resync after a lost watch needs no special case.
//!
//! Order within one pass, so no request meets a backend that cannot serve it:
//! 1. every service with servers gets a backend (the default service `servers`, the others one
//!    of the pool's; a used-up pool asks for a reload with a bigger one);
//! 2. new servers are added (`add server`, `enable health`, `enable server`), moved ones
//!    re-addressed, draining ones whose key came back made ready;
//! 3. the routes map is made equal to the live declarations (`add map`, `set map`, `del map`):
//!    a route counts while the instance that declares it has its server key, and a route two
//!    services claim goes to the one whose live declaration is older;
//! 4. servers whose key went are put in drain, and deleted once idle (or after the drain
//!    timeout), then confirmed (confirmed drain);
//! 5. a backend whose service has no server left goes back to the pool.
//!
//! Until the first successful read, nothing is wanted or removed: HAProxy serves what the
//! config file had. A failed read never changes what is wanted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::follow::{Change, Declaration, Update};
use crate::haproxy::{Addr, BackendConfig, DEFAULT_BACKEND, POOL_PREFIX, Runtime, RuntimeError};

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

pub struct Balancer {
    pub runtime: Runtime,
    /// `check ...` options for `add server`.
    pub check: String,
    pub drain_timeout: Duration,
    /// The routes map file HAProxy reads.
    pub map_path: PathBuf,
    /// `--prefix`: the service of every request no route matches.
    pub default_prefix: String,
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
}

impl Balancer {
    pub fn new(
        runtime: Runtime,
        check: String,
        drain_timeout: Duration,
        map_path: PathBuf,
        default_prefix: String,
    ) -> Self {
        let mut services = BTreeMap::new();
        services.insert(
            default_prefix.clone(),
            Service {
                backend: Some(DEFAULT_BACKEND.to_owned()),
                followed: true,
                ..Service::default()
            },
        );
        Balancer {
            runtime,
            check,
            drain_timeout,
            map_path,
            default_prefix,
            services,
            pool: POOL_SPARE,
            routes: BTreeMap::new(),
            needs_reload: None,
            synced: false,
            drained: Vec::new(),
            conflicts: BTreeSet::new(),
            retry: false,
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
        let default = self.default_prefix.clone();
        self.services.retain(|prefix, s| {
            *prefix == default || s.followed || s.backend.is_some() || !s.declarations.is_empty()
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

    /// Makes HAProxy equal to what is wanted; returns whether anything changed (then the files
    /// are rewritten).
    pub fn reconcile(&mut self) -> bool {
        if !self.synced {
            return false;
        }
        self.assign_backends();
        if self.needs_reload.is_some() {
            return false; // the reload's config has everything
        }
        let mut changed = self.add_servers();
        changed |= self.apply_routes();
        changed |= self.drain_servers();
        changed |= self.release_backends();
        changed
    }

    /// Records a runtime error: a socket error is tried again on the next pass, a missing
    /// server is one HAProxy no longer has, a refusal asks for a reload.
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
    fn add_servers(&mut self) -> bool {
        let mut changed = false;
        let mut failures = Vec::new();
        for (prefix, s) in &mut self.services {
            let (Some(backend), Some(wanted)) = (&s.backend, &s.wanted) else {
                continue;
            };
            for (name, addr) in wanted {
                let result = match s.servers.get(name) {
                    None => self
                        .runtime
                        .add(backend, name, addr, &self.check)
                        .map(|()| {
                            log::info!("added server {name} {addr} to {prefix} ({backend})");
                        }),
                    Some(cur) if cur.draining.is_none() && &cur.addr == addr => continue,
                    Some(cur) => {
                        let back = cur.draining.is_some();
                        let moved = if &cur.addr == addr {
                            Ok(())
                        } else {
                            self.runtime.readdress(backend, name, addr)
                        };
                        moved
                            .and_then(|()| {
                                if back {
                                    self.runtime.ready(backend, name)
                                } else {
                                    Ok(())
                                }
                            })
                            .map(|()| {
                                let how = if back {
                                    "back in service at"
                                } else {
                                    "moved to"
                                };
                                log::info!("server {name} of {prefix} {how} {addr}");
                            })
                    }
                };
                match result {
                    Ok(()) => {
                        s.servers.insert(
                            name.clone(),
                            Server {
                                addr: addr.clone(),
                                draining: None,
                            },
                        );
                        changed = true;
                    }
                    Err(e) => failures.push((format!("server {name} of {prefix}"), e)),
                }
            }
        }
        for (what, e) in failures {
            self.failed(&what, e);
        }
        changed
    }

    /// The routes map as it should be: map key → backend.
    pub fn wanted_routes(&mut self) -> BTreeMap<String, String> {
        // map key → (declaration revision, prefix, route as written)
        let mut claims: BTreeMap<String, Vec<(i64, String, String)>> = BTreeMap::new();
        for (prefix, s) in &self.services {
            let (Some(_), Some(wanted)) = (&s.backend, &s.wanted) else {
                continue;
            };
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
    fn apply_routes(&mut self) -> bool {
        let wanted = self.wanted_routes();
        let mut changed = false;
        for (key, backend) in &wanted {
            let current = self.routes.get(key);
            if current == Some(backend) {
                continue;
            }
            match self
                .runtime
                .map_set(&self.map_path, key, backend, current.is_some())
            {
                Ok(()) => {
                    log::info!("route {key} → {backend}");
                    self.routes.insert(key.clone(), backend.clone());
                    changed = true;
                }
                Err(e) => self.failed(&format!("route {key}"), e),
            }
        }
        let gone: Vec<String> = self
            .routes
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            match self.runtime.map_del(&self.map_path, &key) {
                Ok(()) | Err(RuntimeError::Missing(_)) => {
                    log::info!("route {key} removed");
                    self.routes.remove(&key);
                    changed = true;
                }
                Err(e) => self.failed(&format!("route {key}"), e),
            }
        }
        changed
    }

    /// Step 4, first half: drain what is no longer wanted.
    fn drain_servers(&mut self) -> bool {
        let now = Instant::now();
        let mut changed = false;
        let mut failures = Vec::new();
        let mut gone = Vec::new();
        for (prefix, s) in &mut self.services {
            let (Some(backend), Some(wanted)) = (&s.backend, &s.wanted) else {
                continue;
            };
            for (name, server) in &mut s.servers {
                if server.draining.is_some() || wanted.contains_key(name) {
                    continue;
                }
                match self.runtime.drain(backend, name) {
                    Ok(()) => {
                        log::info!(
                            "draining server {name} {} of {prefix}: its key is gone",
                            server.addr
                        );
                        server.draining = Some(now);
                        changed = true;
                    }
                    Err(RuntimeError::Missing(_)) => gone.push((prefix.clone(), name.clone())),
                    Err(e) => failures.push((format!("server {name} of {prefix}"), e)),
                }
            }
        }
        for (prefix, name) in gone {
            if let Some(s) = self.services.get_mut(&prefix) {
                s.servers.remove(&name);
            }
            self.drained.push((prefix, name));
            changed = true;
        }
        for (what, e) in failures {
            self.failed(&what, e);
        }
        changed
    }

    /// Step 5.
    fn release_backends(&mut self) -> bool {
        let mut changed = false;
        for (prefix, s) in &mut self.services {
            if *prefix == self.default_prefix || s.needs_backend() {
                continue;
            }
            if let Some(b) = s.backend.take() {
                log::info!("service {prefix} has no server left; backend {b} back in the pool");
                changed = true;
            }
        }
        self.forget_unfollowed();
        changed
    }

    /// Whether a server drains (then the caller polls [`Balancer::finish_drains`] often).
    pub fn draining(&self) -> bool {
        self.services
            .values()
            .any(|s| s.servers.values().any(|v| v.draining.is_some()))
    }

    /// Step 4, second half: deletes the draining servers that are idle, or past the drain
    /// timeout; returns whether any was deleted.
    pub fn finish_drains(&mut self) -> bool {
        if !self.draining() {
            return false;
        }
        let connections = match self.runtime.connections() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("cannot read HAProxy's connections: {e}");
                return false;
            }
        };
        let mut deleted = Vec::new();
        for (prefix, s) in &self.services {
            let Some(backend) = &s.backend else { continue };
            for (name, server) in &s.servers {
                let Some(since) = server.draining else {
                    continue;
                };
                let used = connections
                    .get(&(backend.clone(), name.clone()))
                    .copied()
                    .unwrap_or(0);
                let late = since.elapsed() >= self.drain_timeout;
                if used > 0 && !late {
                    continue;
                }
                match self.runtime.delete(backend, name, late) {
                    Ok(()) | Err(RuntimeError::Missing(_)) => {
                        let ms = since.elapsed().as_millis();
                        if late && used > 0 {
                            log::warn!(
                                "removed server {name} of {prefix} after the drain timeout ({ms} ms), cutting {used} connections"
                            );
                        } else {
                            log::info!(
                                "removed server {name} of {prefix}: idle {ms} ms after its key went"
                            );
                        }
                        deleted.push((prefix.clone(), name.clone()));
                    }
                    Err(e) => log::debug!("server {name} of {prefix} not removed yet: {e}"),
                }
            }
        }
        for (prefix, name) in &deleted {
            if let Some(s) = self.services.get_mut(prefix) {
                s.servers.remove(name);
            }
        }
        let any = !deleted.is_empty();
        self.drained.extend(deleted);
        if any {
            self.release_backends();
        }
        any
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
        let names = std::iter::once(DEFAULT_BACKEND.to_owned()).chain(self.pool_backends());
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

    /// What HAProxy has after a (re)start, read back through the runtime API: each backend's
    /// servers and the routes map.
    pub fn load(&mut self) -> Result<(), RuntimeError> {
        let mut servers = self.runtime.servers()?;
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
        self.routes = self.runtime.map_entries(&self.map_path)?;
        Ok(())
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
