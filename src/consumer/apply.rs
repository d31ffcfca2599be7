//! The backend as hecd-haproxy keeps it: what etcd wants (`wanted`, once a read succeeded) and
//! what HAProxy has (`servers`), made equal through the runtime API. Level-triggered: every
//! update replaces or edits `wanted`, then [`Backend::reconcile`] walks the difference, so a
//! resync after a lost watch needs no special case.
//!
//! - wanted, absent in HAProxy: `add server` with checks, `enable health`, `enable server`;
//! - wanted at another address: `set server ... addr ... port ...` (open connections finish
//!   where they are; new ones go to the new address);
//! - in HAProxy, no longer wanted: `state drain` (no new requests, open ones finish); deleted
//!   once `show servers conn` shows no connection in use, or after the drain timeout (open
//!   sessions shut first);
//! - draining, wanted again: `state ready`.
//!
//! Until the first successful read, nothing is wanted or removed: HAProxy serves what the
//! config file had. A failed read never changes `wanted`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::follow::Update;
use crate::haproxy::{Addr, Runtime};

/// One server in HAProxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub addr: Addr,
    /// Since when it drains (its key is gone), if it does.
    pub draining: Option<Instant>,
}

pub struct Backend {
    pub runtime: Runtime,
    /// `check ...` options for `add server`.
    pub check: String,
    pub drain_timeout: Duration,
    /// What etcd says; `None` until the first read.
    pub wanted: Option<BTreeMap<String, Addr>>,
    /// What HAProxy has.
    pub servers: BTreeMap<String, Server>,
    /// The runtime API refused a change: only a reload with a rewritten config can apply it.
    pub needs_reload: Option<String>,
    /// Runtime changes applied, for the log and the benchmarks.
    pub applied: u64,
    /// Servers whose key went and that HAProxy no longer has (drained and deleted, or never
    /// there): what this balancer confirms (confirmed drain).
    pub drained: Vec<String>,
}

impl Backend {
    /// Takes an update from etcd into `wanted`.
    pub fn update(&mut self, update: Update) {
        match update {
            Update::Snapshot(all) => self.wanted = Some(all),
            Update::Changes(changes) => {
                let Some(wanted) = &mut self.wanted else {
                    return; // only after a snapshot, which the follower always sends first
                };
                for (name, addr) in changes {
                    match addr {
                        Some(a) => {
                            wanted.insert(name, a);
                        }
                        None => {
                            wanted.remove(&name);
                            // Never a server here: nothing to drain, confirmed at once.
                            if !self.servers.contains_key(&name) {
                                self.drained.push(name);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Makes HAProxy's servers equal to `wanted`; returns whether anything changed (then the
    /// config file is rewritten).
    pub fn reconcile(&mut self) -> bool {
        let Some(wanted) = &self.wanted else {
            return false;
        };
        let mut changed = false;
        for (name, addr) in wanted {
            let result = match self.servers.get(name) {
                None => self.runtime.add(name, addr, &self.check).map(|()| {
                    log::info!("added server {name} {addr}");
                }),
                Some(s) if s.draining.is_none() && &s.addr == addr => continue,
                Some(s) => {
                    let moved = if &s.addr == addr {
                        Ok(())
                    } else {
                        self.runtime.readdress(name, addr)
                    };
                    let back = s.draining.is_some();
                    moved
                        .and_then(|()| {
                            if back {
                                self.runtime.ready(name)
                            } else {
                                Ok(())
                            }
                        })
                        .map(|()| {
                            log::info!(
                                "server {name} {}{addr}",
                                if back {
                                    "back in service at "
                                } else {
                                    "moved to "
                                }
                            );
                        })
                }
            };
            match result {
                Ok(()) => {
                    self.servers.insert(
                        name.clone(),
                        Server {
                            addr: addr.clone(),
                            draining: None,
                        },
                    );
                    self.applied += 1;
                    changed = true;
                }
                Err(e) => {
                    self.needs_reload
                        .get_or_insert(format!("server {name}: {e}"));
                }
            }
        }
        let now = Instant::now();
        for (name, server) in &mut self.servers {
            if server.draining.is_some() || wanted.contains_key(name) {
                continue;
            }
            match self.runtime.drain(name) {
                Ok(()) => {
                    log::info!("draining server {name} {}: its key is gone", server.addr);
                    server.draining = Some(now);
                    self.applied += 1;
                    changed = true;
                }
                Err(e) => {
                    self.needs_reload
                        .get_or_insert(format!("server {name}: {e}"));
                }
            }
        }
        changed
    }

    /// Whether a server drains (then the caller polls [`Backend::finish_drains`] often).
    pub fn draining(&self) -> bool {
        self.servers.values().any(|s| s.draining.is_some())
    }

    /// Deletes the draining servers that are idle, or past the drain timeout; returns whether
    /// any was deleted.
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
        for (name, server) in &self.servers {
            let Some(since) = server.draining else {
                continue;
            };
            let used = connections.get(name).copied().unwrap_or(0);
            let late = since.elapsed() >= self.drain_timeout;
            if used > 0 && !late {
                continue;
            }
            match self.runtime.delete(name, late) {
                Ok(()) => {
                    let ms = since.elapsed().as_millis();
                    if late && used > 0 {
                        log::warn!(
                            "removed server {name} after the drain timeout ({ms} ms), cutting {used} connections"
                        );
                    } else {
                        log::info!("removed server {name}: idle {ms} ms after its key went");
                    }
                    deleted.push(name.clone());
                }
                Err(e) => log::debug!("server {name} not removed yet: {e}"),
            }
        }
        for name in &deleted {
            self.servers.remove(name);
        }
        self.drained.extend(deleted.iter().cloned());
        !deleted.is_empty()
    }

    /// The servers in service (not draining): what the config file lists.
    pub fn in_service(&self) -> BTreeMap<String, Addr> {
        self.servers
            .iter()
            .filter(|(_, s)| s.draining.is_none())
            .map(|(n, s)| (n.clone(), s.addr.clone()))
            .collect()
    }

    /// The servers HAProxy has after a (re)start: read back through the runtime API.
    pub fn load(&mut self) -> Result<(), String> {
        self.servers = self
            .runtime
            .servers()?
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
        Ok(())
    }
}
