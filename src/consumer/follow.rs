//! The etcd side of hecd-haproxy, on a thread of its own: read every key under the prefix
//! (page by page, at one revision), then follow them with a v3 watch from the next revision.
//! A watch that is lost, canceled or compacted away, or a stream that breaks or sends garbage,
//! means reading everything again and watching from there. Only what passes validation is
//! sent on: a bad key is logged and is not a server.
//!
//! etcd unreachable or answering garbage: nothing is sent (the backend keeps what it has), the
//! outage is logged once with the endpoints and causes, and reads are retried with capped
//! backoff and jitter, through the endpoints in the order `--lb-id` gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::Input;
use crate::contract::{self, Route};
use crate::etcd::v3::{self, Event, Kv, WatchMessage};
use crate::etcd::{Backoff, Client, EtcdError};
use crate::haproxy::Addr;

/// One instance's route declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    pub routes: Vec<Route>,
    /// The revision its key was created at: the older claim of a route wins.
    pub revision: i64,
}

/// What the follower tells the main loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Update {
    /// Everything, read at one revision: the servers of each followed service (the default
    /// one and every one a declaration names) and every valid declaration by (prefix, name).
    Snapshot {
        services: BTreeMap<String, BTreeMap<String, Addr>>,
        declarations: BTreeMap<(String, String), Declaration>,
    },
    /// A service followed from now on (a declaration named it), with all its servers.
    Service(String, BTreeMap<String, Addr>),
    /// A service no longer followed: no declaration names it any more.
    Unfollow(String),
    /// Changes since the last update, in order.
    Changes(Vec<Change>),
}

/// One change seen by the watch.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// A server's new address, or `None` (its key went, or its value is not valid).
    Server {
        prefix: String,
        name: String,
        addr: Option<Addr>,
    },
    /// An instance's declaration, or `None` (its key went, or its value is not valid).
    Route {
        prefix: String,
        name: String,
        declaration: Option<Declaration>,
    },
}

/// Keys per range page. A page over the HTTP body limit (1 MiB) is read again in halves.
const PAGE: u32 = 256;

/// A watch stream is replaced after this long, without losing events: the new watch starts
/// from the next revision. It bounds how long a member can hold the watch while it sees no
/// changes: a member cut off from the rest of its cluster keeps the stream open and silent
/// until it notices it has no leader (one to two election timeouts) and then, since every
/// stream is opened requiring a leader, etcd cancels it about three election timeouts later.
/// Opening the next stream on it fails at once ("no leader"), so with a one-second life a
/// cut-off member costs at most its own election timeout plus a second (issue 18). It costs
/// one watch request a second, and a hung member that keeps the connection open is left
/// within that second too.
const WATCH_LIFE: Duration = Duration::from_secs(1);

/// Deadline of each etcd call (range page, opening a watch).
const CALL: Duration = Duration::from_secs(5);

pub struct Follower {
    pub client: Client,
    /// `--prefix`, normalised: the default service, always followed.
    pub prefix: String,
    /// `--lb-prefix`: the declarations are under `LB_PREFIX/routes/`.
    pub lb_prefix: String,
    /// `--max-services`: most services followed at once (the default one included).
    /// Declarations are written by anything with write access to `LB_PREFIX/routes/`: one that
    /// names a service beyond this is skipped with a warning, so hostile declarations cannot
    /// make hecd-haproxy watch, and HAProxy hold backends for, any number of prefixes.
    pub max_services: usize,
    /// Seeds the retry jitter ([`crate::etcd::jitter_seed`] of `--lb-id`).
    pub seed: u64,
    pub tx: Sender<Input>,
}

/// Where the watches are: each followed prefix with the revision its watch goes on from.
struct Watching {
    routes_next: i64,
    /// prefix → next revision.
    services: BTreeMap<String, i64>,
    /// prefix → names with a valid declaration.
    declared: BTreeMap<String, BTreeSet<String>>,
    /// Services refused for [`MAX_SERVICES`], warned about once.
    refused: BTreeSet<String>,
}

impl Watching {
    /// Takes a declaration's change into account; false when it is not passed on (its service
    /// was refused, or would be one over `max`). A declaration naming a service not followed
    /// yet adds it to `new`.
    fn admit(&mut self, change: &Change, new: &mut BTreeSet<String>, max: usize) -> bool {
        let Change::Route {
            prefix,
            name,
            declaration,
        } = change
        else {
            return true;
        };
        if self.refused.contains(prefix) {
            return false;
        }
        let unfollowed = !self.services.contains_key(prefix);
        if declaration.is_some()
            && unfollowed
            && !new.contains(prefix)
            && self.services.len() + new.len() >= max
        {
            if self.refused.insert(prefix.clone()) {
                log::warn!(
                    "not following {prefix}/: --max-services {max} services are followed already"
                );
            }
            return false;
        }
        let names = self.declared.entry(prefix.clone()).or_default();
        if declaration.is_some() {
            names.insert(name.clone());
            if unfollowed {
                new.insert(prefix.clone());
            }
        } else {
            names.remove(name);
        }
        true
    }
}

/// Why a watch ended without failing.
enum Ended {
    /// Read everything again (compacted, canceled).
    Reread(String),
    /// The main loop is gone.
    Shutdown,
}

impl Follower {
    /// Runs until the main loop is gone.
    pub fn run(mut self) {
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
            self.seed,
        );
        let mut outage: Option<Instant> = None;
        loop {
            let failure = match self.read_everything() {
                Ok((update, watching)) => {
                    let (servers, services) = match &update {
                        Update::Snapshot { services, .. } => (
                            services.values().map(BTreeMap::len).sum::<usize>(),
                            services.len(),
                        ),
                        _ => (0, 0),
                    };
                    let what = format!("{servers} servers of {services} services");
                    if let Some(since) = outage.take() {
                        log::info!(
                            "etcd answers again after {} ms; read {what}",
                            since.elapsed().as_millis()
                        );
                    } else {
                        log::info!("read {what}");
                    }
                    if !self.tell(update) {
                        return;
                    }
                    backoff.reset();
                    match self.watch(watching) {
                        Ok(Ended::Reread(why)) => {
                            log::info!("{why}; reading everything again");
                            continue;
                        }
                        Ok(Ended::Shutdown) => return,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if outage.is_none() {
                log::warn!(
                    "etcd: {failure}; keeping the servers HAProxy has, retrying with backoff"
                );
                outage = Some(Instant::now());
            } else {
                log::debug!("etcd still failing: {failure}");
            }
            std::thread::sleep(backoff.next_delay());
        }
    }

    /// Sends `update` to the main loop; false when the main loop is gone.
    fn tell(&self, update: Update) -> bool {
        self.tx.send(Input::Etcd(update)).is_ok()
    }

    /// Reads every declaration, then the servers of the default service and of every service
    /// declared, all at one revision.
    fn read_everything(&mut self) -> Result<(Update, Watching), String> {
        let routes = contract::routes_dir(&self.lb_prefix);
        let mut declarations = BTreeMap::new();
        let lb_prefix = self.lb_prefix.clone();
        let revision = self
            .read_range(routes.as_bytes(), 0, |kv| {
                if let Some(Change::Route {
                    prefix,
                    name,
                    declaration: Some(d),
                }) = route_change(&lb_prefix, &kv.key, Some(&kv))
                {
                    declarations.insert((prefix, name), d);
                }
            })
            .map_err(|e| e.to_string())?;
        // Over the limit: the services declared first (lowest revision) are followed.
        let mut first: BTreeMap<&str, i64> = BTreeMap::new();
        for ((p, _), d) in &declarations {
            let r = first.entry(p.as_str()).or_insert(d.revision);
            *r = (*r).min(d.revision);
        }
        let mut by_age: Vec<(i64, &str)> = first.into_iter().map(|(p, r)| (r, p)).collect();
        by_age.sort();
        let mut prefixes: BTreeSet<String> = BTreeSet::new();
        prefixes.insert(self.prefix.clone());
        let mut refused = BTreeSet::new();
        for (_, p) in by_age {
            if prefixes.len() < self.max_services || prefixes.contains(p) {
                prefixes.insert(p.to_owned());
            } else {
                refused.insert(p.to_owned());
            }
        }
        if !refused.is_empty() {
            log::warn!(
                "{} services declared beyond --max-services {}; not routed: {}",
                refused.len(),
                self.max_services,
                refused
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            declarations.retain(|(p, _), _| prefixes.contains(p));
        }
        let mut services = BTreeMap::new();
        for prefix in &prefixes {
            match self.read_service(prefix, revision) {
                Ok((servers, _)) => {
                    services.insert(prefix.clone(), servers);
                }
                Err(e @ EtcdError::Failed { .. }) if *prefix != self.prefix => {
                    // etcd answered but refused (no read permission, say): that service is
                    // not routed; the others are followed as usual.
                    log::warn!("cannot read {prefix}/: {e}; its routes are not served");
                    refused.insert(prefix.clone());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        prefixes.retain(|p| !refused.contains(p));
        declarations.retain(|(p, _), _| prefixes.contains(p));
        let mut declared: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (p, n) in declarations.keys() {
            declared.entry(p.clone()).or_default().insert(n.clone());
        }
        let watching = Watching {
            routes_next: revision + 1,
            services: prefixes.into_iter().map(|p| (p, revision + 1)).collect(),
            declared,
            refused,
        };
        Ok((
            Update::Snapshot {
                services,
                declarations,
            },
            watching,
        ))
    }

    /// The valid servers under `prefix` at `revision` (0: the latest), and that revision.
    fn read_service(
        &mut self,
        prefix: &str,
        revision: i64,
    ) -> Result<(BTreeMap<String, Addr>, i64), EtcdError> {
        let mut servers = BTreeMap::new();
        let key = format!("{prefix}/");
        let revision = self.read_range(key.as_bytes(), revision, |kv| {
            if let Some(Change::Server {
                name,
                addr: Some(addr),
                ..
            }) = server_change(prefix, &kv.key, Some(&kv.value))
            {
                servers.insert(name, addr);
            }
        })?;
        Ok((servers, revision))
    }

    /// Reads every key starting with `key` at `revision` (0: the latest), page by page,
    /// handing each to `each`; returns the revision read at.
    fn read_range(
        &mut self,
        key: &[u8],
        mut revision: i64,
        mut each: impl FnMut(Kv),
    ) -> Result<i64, EtcdError> {
        let end = v3::prefix_end(key);
        let mut from = key.to_vec();
        let mut limit = PAGE;
        loop {
            let deadline = Instant::now() + CALL;
            match self
                .client
                .range(&from, &end, revision, limit, false, deadline)
            {
                Ok(page) => {
                    if revision == 0 {
                        revision = page.revision;
                    }
                    let more = page.more;
                    let mut last = None;
                    for kv in page.kvs {
                        last = Some(kv.key.clone());
                        each(kv);
                    }
                    match last {
                        Some(mut k) if more => {
                            k.push(0);
                            from = k;
                            limit = PAGE;
                        }
                        _ => return Ok(revision),
                    }
                }
                Err(EtcdError::TooBig) if limit > 1 => limit = (limit / 2).max(1),
                Err(EtcdError::TooBig) => {
                    // One key over the limit on its own: learn its name and skip it.
                    let page = self
                        .client
                        .range(&from, &end, revision, 1, true, deadline)?;
                    let Some(kv) = page.kvs.into_iter().next() else {
                        return Ok(revision);
                    };
                    log::warn!(
                        "skipping key {:?}: its value is over 1 MiB",
                        String::from_utf8_lossy(&kv.key)
                    );
                    from = kv.key;
                    from.push(0);
                    limit = PAGE;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Watches the declarations and every followed service on one stream, renewed every
    /// [`WATCH_LIFE`] from where each watch got. A declaration naming a service not followed
    /// yet ends the stream at once: that service is read whole and watched from the revision
    /// read. A service no declaration names any more is dropped at the next renewal.
    fn watch(&mut self, mut w: Watching) -> Result<Ended, String> {
        let routes_key = contract::routes_dir(&self.lb_prefix).into_bytes();
        let routes_end = v3::prefix_end(&routes_key);
        loop {
            let prefixes: Vec<String> = w.services.keys().cloned().collect();
            let keys: Vec<(Vec<u8>, Vec<u8>)> = prefixes
                .iter()
                .map(|p| {
                    let k = format!("{p}/").into_bytes();
                    let e = v3::prefix_end(&k);
                    (k, e)
                })
                .collect();
            let mut specs: Vec<(&[u8], &[u8], i64)> =
                vec![(&routes_key, &routes_end, w.routes_next)];
            for (p, (k, e)) in prefixes.iter().zip(&keys) {
                specs.push((k, e, w.services[p]));
            }
            let opened = Instant::now();
            let mut created = 0;
            let mut reread: Option<String> = None;
            let mut sent = true;
            let mut new_services: BTreeSet<String> = BTreeSet::new();
            let lb_prefix = self.lb_prefix.clone();
            let max_services = self.max_services;
            let tx = self.tx.clone();
            let result =
                self.client
                    .watch_many(
                        &specs,
                        WATCH_LIFE,
                        opened + CALL,
                        |index, message| match message {
                            WatchMessage::Created => {
                                created += 1;
                                true
                            }
                            WatchMessage::Events(events) => {
                                let mut changes = Vec::new();
                                for event in events {
                                    let (key, rev, kv) = match &event {
                                        Event::Put(kv) => (&kv.key, kv.mod_revision, Some(kv)),
                                        Event::Delete(k, rev) => (k, *rev, None),
                                    };
                                    if index == 0 {
                                        w.routes_next = w.routes_next.max(rev + 1);
                                        let change = route_change(&lb_prefix, key, kv);
                                        if let Some(change) = change
                                            .filter(|c| w.admit(c, &mut new_services, max_services))
                                        {
                                            changes.push(change);
                                        }
                                    } else {
                                        let prefix = &prefixes[index - 1];
                                        if let Some(next) = w.services.get_mut(prefix) {
                                            *next = (*next).max(rev + 1);
                                        }
                                        let value = kv.map(|kv| kv.value.as_slice());
                                        changes.extend(server_change(prefix, key, value));
                                    }
                                }
                                if !changes.is_empty() {
                                    sent = tx.send(Input::Etcd(Update::Changes(changes))).is_ok();
                                }
                                sent && new_services.is_empty()
                            }
                            WatchMessage::Canceled {
                                compact_revision,
                                reason,
                            } => {
                                reread = Some(match compact_revision {
                                    Some(r) => format!(
                                        "a watched revision was compacted (oldest left: {r})"
                                    ),
                                    None => format!("etcd canceled a watch ({reason})"),
                                });
                                false
                            }
                        },
                    );
            if !sent {
                return Ok(Ended::Shutdown);
            }
            result.map_err(|e| e.to_string())?;
            if let Some(why) = reread {
                return Ok(Ended::Reread(why));
            }
            let ended_early = opened.elapsed() < WATCH_LIFE / 2;
            for prefix in &new_services {
                let (servers, revision) = match self.read_service(prefix, 0) {
                    Ok(read) => read,
                    Err(e @ EtcdError::Failed { .. }) => {
                        // etcd refused (no read permission, say): not routed, not asked again
                        // until the next full read; the declarations already passed on go.
                        log::warn!("cannot read {prefix}/: {e}; its routes are not served");
                        w.refused.insert(prefix.clone());
                        w.declared.remove(prefix);
                        if !self.tell(Update::Unfollow(prefix.clone())) {
                            return Ok(Ended::Shutdown);
                        }
                        continue;
                    }
                    Err(e) => return Err(e.to_string()),
                };
                log::info!(
                    "following {prefix}/: a route declaration names it; {} servers",
                    servers.len()
                );
                if !self.tell(Update::Service(prefix.clone(), servers)) {
                    return Ok(Ended::Shutdown);
                }
                w.services.insert(prefix.clone(), revision + 1);
            }
            let unfollowed: Vec<String> = w
                .services
                .keys()
                .filter(|p| **p != self.prefix && w.declared.get(*p).is_none_or(BTreeSet::is_empty))
                .cloned()
                .collect();
            for prefix in unfollowed {
                log::info!("no longer following {prefix}/: no route declaration names it");
                w.services.remove(&prefix);
                w.declared.remove(&prefix);
                if !self.tell(Update::Unfollow(prefix)) {
                    return Ok(Ended::Shutdown);
                }
            }
            if !new_services.is_empty() {
                continue;
            }
            if created < specs.len() {
                return Err("the watch stream ended before etcd confirmed every watch".into());
            }
            // A stream that ends well before its life is a member going away (or something
            // that is not etcd): read again, through the backoff of a failure.
            if ended_early {
                return Err(format!(
                    "the watch stream ended after {} ms",
                    opened.elapsed().as_millis()
                ));
            }
        }
    }
}

/// What a put (`Some(value)`) or delete of `key` means for the service `prefix`: a server at
/// an address, or `None` (deleted, or its value is not `HOST:PORT`: logged); no change at all
/// for a key that is not a server's (logged).
fn server_change(prefix: &str, key: &[u8], value: Option<&[u8]>) -> Option<Change> {
    let name = match contract::server_name(prefix, key) {
        Ok(n) => n,
        Err(why) => {
            if value.is_some() {
                log::warn!("skipping {why}");
            }
            return None;
        }
    };
    let addr = value.and_then(|value| {
        let parsed = std::str::from_utf8(value)
            .map_err(|_| "value is not UTF-8".to_owned())
            .and_then(Addr::parse);
        parsed
            .map_err(|why| log::warn!("skipping key {prefix}/{name}: {why}"))
            .ok()
    });
    Some(Change::Server {
        prefix: prefix.to_owned(),
        name,
        addr,
    })
}

/// What a put (`Some(kv)`) or delete of a key under `LB_PREFIX/routes/` means: a declaration,
/// or `None` (deleted, or not valid: logged); no change for a key that names no instance.
fn route_change(lb_prefix: &str, key: &[u8], kv: Option<&Kv>) -> Option<Change> {
    let (prefix, name) = match contract::parse_route_key(lb_prefix, key) {
        Ok(pn) => pn,
        Err(why) => {
            if kv.is_some() {
                log::warn!("skipping route declaration: {why}");
            }
            return None;
        }
    };
    let declaration = kv.and_then(|kv| {
        let parsed = std::str::from_utf8(&kv.value)
            .map_err(|_| "its value is not UTF-8".to_owned())
            .and_then(contract::parse_routes);
        match parsed {
            Ok(routes) => Some(Declaration {
                routes,
                revision: kv.create_revision,
            }),
            Err(why) => {
                log::warn!("skipping route declaration of {prefix}/{name}: {why}");
                None
            }
        }
    });
    Some(Change::Route {
        prefix,
        name,
        declaration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_validated() {
        let p = "/app/servers";
        let server = |name: &str, addr: Option<&str>| Change::Server {
            prefix: p.into(),
            name: name.into(),
            addr: addr.map(|a| Addr::parse(a).unwrap()),
        };
        assert_eq!(
            server_change(p, b"/app/servers/a", Some(b"10.0.0.1:80")),
            Some(server("a", Some("10.0.0.1:80")))
        );
        assert_eq!(
            server_change(p, b"/app/servers/a", None),
            Some(server("a", None))
        );
        // A bad value takes the server out; a bad name is no server at all.
        assert_eq!(
            server_change(p, b"/app/servers/a", Some(b"10.0.0.1:80 backup")),
            Some(server("a", None))
        );
        assert_eq!(
            server_change(p, b"/app/servers/a b", Some(b"10.0.0.1:80")),
            None
        );
        assert_eq!(server_change(p, b"/app/servers/x/y", None), None);
        let kv = |value: &[u8]| Kv {
            key: b"/hecd/routes/app/api/a-1".to_vec(),
            value: value.to_vec(),
            mod_revision: 9,
            create_revision: 7,
        };
        let route = |declaration| Change::Route {
            prefix: "/app/api".into(),
            name: "a-1".into(),
            declaration,
        };
        assert_eq!(
            route_change(
                "/hecd",
                b"/hecd/routes/app/api/a-1",
                Some(&kv(b"api.example.com"))
            ),
            Some(route(Some(Declaration {
                routes: vec![Route::parse("api.example.com").unwrap()],
                revision: 7
            })))
        );
        assert_eq!(
            route_change("/hecd", b"/hecd/routes/app/api/a-1", Some(&kv(b"bad host"))),
            Some(route(None))
        );
        assert_eq!(
            route_change("/hecd", b"/hecd/routes/a-1", Some(&kv(b"a.com"))),
            None
        );
    }
}
