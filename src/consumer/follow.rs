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
use std::time::{Duration, Instant};

use crate::contract::{self, Route, overlaps};
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

/// Deadline of each etcd call (range page, opening a watch).
const CALL: Duration = Duration::from_secs(5);

pub struct Follower {
    pub client: Client,
    /// The services always followed, declared or not: the default one (`--prefix`) and each
    /// `--tcp` one.
    pub fixed: Vec<String>,
    /// `--lb-prefix`: the declarations are under `LB_PREFIX/routes/`.
    pub lb_prefix: String,
    /// `--max-services`: most services followed at once (the default one included).
    /// Declarations are written by anything with write access to `LB_PREFIX/routes/`: one that
    /// names a service beyond this is skipped with a warning, so hostile declarations cannot
    /// make hecd-haproxy watch, and HAProxy hold backends for, any number of prefixes.
    pub max_services: usize,
    /// Key prefixes no declared service may overlap (`--cert-prefix`: the certificate
    /// store's private keys are not servers, and must not be read as such).
    pub forbidden: Vec<String>,
    /// Seeds the retry jitter ([`crate::etcd::jitter_seed`] of `--lb-id`).
    pub seed: u64,
    /// Keeps an eye on the member the watch stream is on.
    pub probe: super::probe::Probe,
    /// Where updates go (the main loop); false once nobody takes them.
    pub tell: Box<dyn FnMut(Update) -> bool + Send>,
}

/// Where the watches are: each followed prefix with the revision its watch goes on from.
#[derive(Debug, Default)]
struct Watching {
    /// The services always followed, `--lb-prefix` and `--max-services`.
    fixed: Vec<String>,
    lb_prefix: String,
    max_services: usize,
    /// The prefixes of the open stream's service watches, in order (watch 0 is the
    /// declarations'; watch `i` is `stream[i - 1]`'s).
    stream: Vec<String>,
    routes_next: i64,
    /// prefix → next revision.
    services: BTreeMap<String, i64>,
    /// prefix → names with a valid declaration.
    declared: BTreeMap<String, BTreeSet<String>>,
    /// Services refused for `--max-services`, warned about once.
    refused: BTreeSet<String>,
    /// Prefixes no service may overlap.
    forbidden: Vec<String>,
}

/// What one message of the watch stream means ([`Watching::take`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct Taken {
    /// To pass on to the main loop, in order.
    changes: Vec<Change>,
    /// Services that no declaration names any more: no longer followed.
    unfollowed: Vec<String>,
    /// Services a declaration names that are not followed yet: the stream must end, so they
    /// are read and watched.
    new_services: BTreeSet<String>,
    /// etcd ended a watch (compacted, canceled): read everything again.
    reread: Option<String>,
    /// The message confirmed that its watch exists.
    created: bool,
}

impl Watching {
    /// The stream to open: the declarations and every followed service, each from the
    /// revision it goes on from, as owned `(key, end, start revision)`.
    fn specs(&mut self, routes_key: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        self.stream = self.services.keys().cloned().collect();
        let mut specs = vec![(
            routes_key.to_vec(),
            v3::prefix_end(routes_key),
            self.routes_next,
        )];
        for p in &self.stream {
            let k = format!("{p}/").into_bytes();
            let e = v3::prefix_end(&k);
            specs.push((k, e, self.services[p]));
        }
        specs
    }

    /// Takes one message of watch `index` of the open stream into account: the revisions each
    /// watch goes on from, the declarations and the services followed. Touches nothing but
    /// itself: the caller sends the changes and reads new services.
    fn take(&mut self, index: usize, message: WatchMessage) -> Taken {
        let mut taken = Taken::default();
        let events = match message {
            WatchMessage::Created => {
                taken.created = true;
                return taken;
            }
            WatchMessage::Canceled {
                compact_revision,
                reason,
            } => {
                taken.reread = Some(match compact_revision {
                    Some(r) => format!("a watched revision was compacted (oldest left: {r})"),
                    None => format!("etcd canceled a watch ({reason})"),
                });
                return taken;
            }
            WatchMessage::Events(events) => events,
        };
        for event in events {
            let (key, rev, kv) = match &event {
                Event::Put(kv) => (&kv.key, kv.mod_revision, Some(kv)),
                Event::Delete(k, rev) => (k, *rev, None),
            };
            if index == 0 {
                self.routes_next = self.routes_next.max(rev + 1);
                let max = self.max_services;
                if let Some(change) = route_change(&self.lb_prefix, key, kv)
                    .filter(|c| self.admit(c, &mut taken.new_services, max))
                {
                    taken.changes.push(change);
                }
            } else if let Some(prefix) = self.stream.get(index - 1) {
                // A service no longer followed still has its watch on this stream: skip it.
                let Some(next) = self.services.get_mut(prefix) else {
                    continue;
                };
                *next = (*next).max(rev + 1);
                let value = kv.map(|kv| kv.value.as_slice());
                taken.changes.extend(server_change(prefix, key, value));
            }
        }
        // A service whose last declaration went is dropped now; its watch stays on this
        // stream (unread) until the next one is opened.
        let dropped: Vec<String> = self
            .services
            .keys()
            .filter(|p| {
                !self.fixed.contains(*p) && self.declared.get(*p).is_none_or(BTreeSet::is_empty)
            })
            .cloned()
            .collect();
        for prefix in dropped {
            self.declared.remove(&prefix);
            if self.services.remove(&prefix).is_some() {
                taken.unfollowed.push(prefix);
            }
        }
        taken
    }

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
        if let Some(f) = self.forbidden.iter().find(|f| overlaps(prefix, f)) {
            self.refused.insert(prefix.clone());
            log::warn!("not following {prefix}/: it overlaps the certificate store {f}/");
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
    fn tell(&mut self, update: Update) -> bool {
        (self.tell)(update)
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
        // Never a service in the certificate store.
        let forbidden = &self.forbidden;
        let mut refused = BTreeSet::new();
        declarations.retain(|(p, _), _| {
            let bad = forbidden.iter().any(|f| overlaps(p, f));
            if bad && refused.insert(p.clone()) {
                log::warn!("not following {p}/: it overlaps the certificate store");
            }
            !bad
        });
        // Over the limit: the services declared first (lowest revision) are followed.
        let mut first: BTreeMap<&str, i64> = BTreeMap::new();
        for ((p, _), d) in &declarations {
            let r = first.entry(p.as_str()).or_insert(d.revision);
            *r = (*r).min(d.revision);
        }
        let mut by_age: Vec<(i64, &str)> = first.into_iter().map(|(p, r)| (r, p)).collect();
        by_age.sort();
        let mut prefixes: BTreeSet<String> = BTreeSet::new();
        prefixes.extend(self.fixed.iter().cloned());
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
                Err(e @ EtcdError::Failed { .. }) if !self.fixed.contains(prefix) => {
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
            fixed: self.fixed.clone(),
            lb_prefix: self.lb_prefix.clone(),
            max_services: self.max_services,
            stream: Vec::new(),
            routes_next: revision + 1,
            services: prefixes.into_iter().map(|p| (p, revision + 1)).collect(),
            declared,
            refused,
            forbidden: self.forbidden.clone(),
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

    /// Watches the declarations and every followed service on one stream, for as long as
    /// etcd keeps it open. A declaration naming a service not followed yet ends the stream:
    /// that service is read whole, and the next stream watches it from the revision read.
    ///
    /// The stream is not renewed on a timer, so while nothing changes nothing is re-created,
    /// whatever the number of services (a renewal re-creates every watch, and each new watch
    /// from a past revision costs etcd a catch-up). A member that stops serving is noticed by
    /// the probe ([`super::probe`]), which ends the stream.
    fn watch(&mut self, mut w: Watching) -> Result<Ended, String> {
        let routes_key = contract::routes_dir(&self.lb_prefix).into_bytes();
        loop {
            let specs = w.specs(&routes_key);
            let refs: Vec<(&[u8], &[u8], i64)> = specs
                .iter()
                .map(|(k, e, r)| (k.as_slice(), e.as_slice(), *r))
                .collect();
            let mut watch = self
                .client
                .open_watch(&refs, None, Instant::now() + CALL)
                .map_err(|e| e.to_string())?;
            self.probe.watching(&watch);
            let endpoint = watch.endpoint().to_owned();
            let mut outcome: Option<Result<Ended, String>> = None;
            let mut new_services = BTreeSet::new();
            let mut created = 0;
            for item in &mut watch {
                let taken = match item {
                    Ok((index, message)) => w.take(index, message),
                    Err(e) => {
                        outcome = Some(Err(e.to_string()));
                        break;
                    }
                };
                if taken.created {
                    created += 1;
                    if created == specs.len() {
                        self.probe.confirmed();
                    }
                }
                let sent = taken.changes.is_empty() || self.tell(Update::Changes(taken.changes));
                let sent = sent
                    && taken.unfollowed.into_iter().all(|p| {
                        log::info!("no longer following {p}/: no route declaration names it");
                        self.tell(Update::Unfollow(p))
                    });
                if !sent {
                    outcome = Some(Ok(Ended::Shutdown));
                } else if let Some(why) = taken.reread {
                    outcome = Some(Ok(Ended::Reread(why)));
                } else if !taken.new_services.is_empty() {
                    new_services = taken.new_services;
                } else {
                    continue;
                }
                break;
            }
            if let Some(why) = self.probe.done() {
                watch.leave();
                outcome = Some(Err(why));
            }
            self.client.finish_watch(watch);
            if let Some(outcome) = outcome {
                return outcome;
            }
            if new_services.is_empty() {
                return Err(format!("{endpoint} ended the watch stream"));
            }
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

    fn put(key: &str, value: &str, revision: i64) -> Event {
        Event::Put(Kv {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            mod_revision: revision,
            create_revision: revision,
        })
    }

    fn delete(key: &str, revision: i64) -> Event {
        Event::Delete(key.as_bytes().to_vec(), revision)
    }

    /// Following the default service and /app/api (declared by api-1), at revision 10.
    fn watching() -> Watching {
        let mut w = Watching {
            fixed: vec!["/app/servers".into()],
            lb_prefix: "/hecd".into(),
            max_services: 3,
            routes_next: 11,
            services: [("/app/servers".into(), 11), ("/app/api".into(), 11)].into(),
            declared: [("/app/api".into(), ["api-1".into()].into())].into(),
            ..Watching::default()
        };
        w.specs(b"/hecd/routes/");
        w
    }

    #[test]
    fn the_stream_watches_the_declarations_then_each_service_from_its_revision() {
        let mut w = watching();
        w.services.insert("/app/api".into(), 15);
        let specs = w.specs(b"/hecd/routes/");
        let keys: Vec<(&[u8], i64)> = specs.iter().map(|(k, _, r)| (k.as_slice(), *r)).collect();
        assert_eq!(
            keys,
            [
                (&b"/hecd/routes/"[..], 11),
                (b"/app/api/", 15),
                (b"/app/servers/", 11)
            ]
        );
        assert_eq!(specs[1].1, b"/app/api0");
        assert_eq!(w.stream, ["/app/api", "/app/servers"]);
    }

    #[test]
    fn server_events_become_changes_and_move_the_revision_on() {
        let mut w = watching();
        let taken = w.take(
            2,
            WatchMessage::Events(vec![
                put("/app/servers/a", "10.0.0.1:80", 12),
                delete("/app/servers/b", 13),
                put("/app/servers/bad name", "10.0.0.1:80", 14),
            ]),
        );
        let server = |name: &str, addr: Option<&str>| Change::Server {
            prefix: "/app/servers".into(),
            name: name.into(),
            addr: addr.map(|a| Addr::parse(a).unwrap()),
        };
        assert_eq!(
            taken.changes,
            [server("a", Some("10.0.0.1:80")), server("b", None)]
        );
        assert_eq!(w.services["/app/servers"], 15);
        assert_eq!(w.services["/app/api"], 11, "another watch's revision stays");
        assert!(taken.new_services.is_empty() && taken.unfollowed.is_empty());
        let created = w.take(1, WatchMessage::Created);
        assert!(created.created && created.changes.is_empty());
    }

    #[test]
    fn a_declaration_naming_the_certificate_store_is_never_followed() {
        let mut w = watching();
        w.forbidden = vec!["/hecd-certs".into()];
        for (i, key) in [
            "/hecd/routes/hecd-certs/x",
            "/hecd/routes/hecd-certs/certs/x",
            "/hecd/routes/x",
        ]
        .iter()
        .enumerate()
        {
            let taken = w.take(
                0,
                WatchMessage::Events(vec![put(key, "evil.example.com", 30 + i as i64)]),
            );
            if *key == "/hecd/routes/x" {
                continue; // not a declaration at all (no NAME): skipped elsewhere
            }
            assert!(
                taken.changes.is_empty() && taken.new_services.is_empty(),
                "{key}"
            );
        }
        assert!(!w.services.keys().any(|p| p.starts_with("/hecd-certs")));
        assert!(overlaps("/hecd-certs", "/hecd-certs/certs"));
        assert!(overlaps("/", "/hecd-certs") || !overlaps("/a", "/hecd-certs"));
        assert!(!overlaps("/hecd-certsx", "/hecd-certs"));
    }

    #[test]
    fn a_declaration_of_a_new_service_ends_the_stream_and_the_last_one_gone_unfollows() {
        let mut w = watching();
        let taken = w.take(
            0,
            WatchMessage::Events(vec![put("/hecd/routes/app/web/w-1", "www.example.com", 20)]),
        );
        assert_eq!(taken.new_services, ["/app/web".to_owned()].into());
        assert_eq!(taken.changes.len(), 1);
        assert_eq!(w.routes_next, 21);
        // A fourth service is over --max-services 3 (default, api, web): refused, not passed on.
        w.services.insert("/app/web".into(), 21);
        let taken = w.take(
            0,
            WatchMessage::Events(vec![put("/hecd/routes/app/db/d-1", "db.example.com", 22)]),
        );
        assert!(taken.changes.is_empty() && taken.new_services.is_empty());
        assert!(w.refused.contains("/app/db"));
        // api's only declaration goes: no longer followed; later events of its watch (still on
        // this stream) are skipped.
        let taken = w.take(
            0,
            WatchMessage::Events(vec![delete("/hecd/routes/app/api/api-1", 23)]),
        );
        assert_eq!(taken.unfollowed, ["/app/api".to_owned()]);
        assert!(!w.services.contains_key("/app/api"));
        let api = w.stream.iter().position(|p| p == "/app/api").unwrap() + 1;
        let taken = w.take(
            api,
            WatchMessage::Events(vec![put("/app/api/api-1", "10.0.0.9:80", 24)]),
        );
        assert_eq!(taken, Taken::default());
        // The default service is never unfollowed, declared or not.
        assert!(w.services.contains_key("/app/servers"));
    }

    #[test]
    fn a_canceled_watch_means_reading_everything_again() {
        let mut w = watching();
        let taken = w.take(
            1,
            WatchMessage::Canceled {
                compact_revision: Some(40),
                reason: String::new(),
            },
        );
        assert!(taken.reread.unwrap().contains("oldest left: 40"));
        let taken = w.take(
            1,
            WatchMessage::Canceled {
                compact_revision: None,
                reason: "permission denied".into(),
            },
        );
        assert!(taken.reread.unwrap().contains("permission denied"));
    }

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
