//! The etcd side of hecd-haproxy, on a thread of its own: read every key under the prefix
//! (page by page, at one revision), then follow them with a v3 watch from the next revision.
//! A watch that is lost, canceled or compacted away, or a stream that breaks or sends garbage,
//! means reading everything again and watching from there. Only what passes validation is
//! sent on: a bad key is logged and is not a server.
//!
//! etcd unreachable or answering garbage: nothing is sent (the backend keeps what it has), the
//! outage is logged once with the endpoints and causes, and reads are retried with capped
//! backoff and jitter, through the endpoints in turn.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::Input;
use crate::etcd::v3::{self, Event, WatchMessage};
use crate::etcd::{Backoff, Client, EtcdError};
use crate::haproxy::{Addr, server_name};

/// What the follower tells the main loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Update {
    /// Every valid server under the prefix, read at one revision: the whole truth.
    Snapshot(BTreeMap<String, Addr>),
    /// Changes since the last update, in order: a server's new address, or `None` (gone).
    Changes(Vec<(String, Option<Addr>)>),
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
    /// Normalised prefix (`/app/servers`); keys are `PREFIX/NAME`.
    pub prefix: String,
    pub tx: Sender<Input>,
}

impl Follower {
    /// Runs until the main loop is gone.
    pub fn run(mut self) {
        let key = format!("{}/", self.prefix).into_bytes();
        let end = v3::prefix_end(&key);
        let seed = u64::from(std::process::id()) ^ Instant::now().elapsed().as_nanos() as u64;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5), seed);
        let mut outage: Option<Instant> = None;
        loop {
            let failure = match self.read_all(&key, &end) {
                Ok((servers, revision)) => {
                    if let Some(since) = outage.take() {
                        log::info!(
                            "etcd answers again after {} ms; read {} servers under {}/",
                            since.elapsed().as_millis(),
                            servers.len(),
                            self.prefix
                        );
                    } else {
                        log::info!("read {} servers under {}/", servers.len(), self.prefix);
                    }
                    if self
                        .tx
                        .send(Input::Etcd(Update::Snapshot(servers)))
                        .is_err()
                    {
                        return;
                    }
                    backoff.reset();
                    match self.watch(&key, &end, revision + 1) {
                        Ok(why) => {
                            log::info!("{why}; reading {}/ again", self.prefix);
                            continue;
                        }
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

    /// Reads every key of `[key, end)` at one revision; returns the valid servers and that
    /// revision.
    fn read_all(
        &mut self,
        key: &[u8],
        end: &[u8],
    ) -> Result<(BTreeMap<String, Addr>, i64), String> {
        let mut servers = BTreeMap::new();
        let mut from = key.to_vec();
        let mut revision = 0;
        let mut limit = PAGE;
        loop {
            let deadline = Instant::now() + CALL;
            match self
                .client
                .range(&from, end, revision, limit, false, deadline)
            {
                Ok(page) => {
                    if revision == 0 {
                        revision = page.revision;
                    }
                    let more = page.more;
                    let mut last = None;
                    for kv in page.kvs {
                        if let Some((name, addr)) = self.validate(&kv.key, &kv.value) {
                            servers.insert(name, addr);
                        }
                        last = Some(kv.key);
                    }
                    match last {
                        Some(mut k) if more => {
                            k.push(0);
                            from = k;
                            limit = PAGE;
                        }
                        _ => return Ok((servers, revision)),
                    }
                }
                Err(EtcdError::TooBig) if limit > 1 => limit = (limit / 2).max(1),
                Err(EtcdError::TooBig) => {
                    // One key over the limit on its own: learn its name and skip it.
                    let page = self
                        .client
                        .range(&from, end, revision, 1, true, deadline)
                        .map_err(|e| e.to_string())?;
                    let Some(kv) = page.kvs.into_iter().next() else {
                        return Ok((servers, revision));
                    };
                    log::warn!(
                        "skipping key {:?}: its value is over 1 MiB, not HOST:PORT",
                        String::from_utf8_lossy(&kv.key)
                    );
                    from = kv.key;
                    from.push(0);
                    limit = PAGE;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Watches from `start` until the watch must be replaced by a new read (`Ok` says why), or
    /// fails. Streams that reach their life are renewed from the next revision.
    fn watch(&mut self, key: &[u8], end: &[u8], start: i64) -> Result<String, String> {
        let mut next = start;
        loop {
            let opened = Instant::now();
            let mut created = false;
            let mut reread: Option<String> = None;
            let mut changes_sent = true;
            let prefix = self.prefix.clone();
            let tx = self.tx.clone();
            let result =
                self.client.watch(
                    key,
                    end,
                    next,
                    WATCH_LIFE,
                    opened + CALL,
                    |message| match message {
                        WatchMessage::Created => {
                            created = true;
                            true
                        }
                        WatchMessage::Events(events) => {
                            let mut changes = Vec::new();
                            for event in events {
                                let (k, rev, value) = match &event {
                                    Event::Put(kv) => {
                                        (&kv.key, kv.mod_revision, Some(kv.value.as_slice()))
                                    }
                                    Event::Delete(k, rev) => (k, *rev, None),
                                };
                                next = next.max(rev + 1);
                                if let Some(change) = change_of(&prefix, k, value) {
                                    changes.push(change);
                                }
                            }
                            if !changes.is_empty() {
                                changes_sent =
                                    tx.send(Input::Etcd(Update::Changes(changes))).is_ok();
                            }
                            changes_sent
                        }
                        WatchMessage::Canceled {
                            compact_revision,
                            reason,
                        } => {
                            reread = Some(match compact_revision {
                                Some(r) => format!(
                                    "the watch's revision {next} was compacted (oldest left: {r})"
                                ),
                                None => format!("etcd canceled the watch ({reason})"),
                            });
                            false
                        }
                    },
                );
            if !changes_sent {
                // The main loop is gone: nothing left to do.
                return Ok("shutting down".into());
            }
            result.map_err(|e| e.to_string())?;
            if let Some(why) = reread {
                return Ok(why);
            }
            if !created {
                return Err("the watch stream ended before etcd confirmed it".into());
            }
            // A stream that ends well before its life is a member going away (or something
            // that is not etcd): read again, through the backoff of a failure.
            if opened.elapsed() < WATCH_LIFE / 2 {
                return Err(format!(
                    "the watch stream ended after {} ms",
                    opened.elapsed().as_millis()
                ));
            }
        }
    }

    /// A key and value from a range read: the server, or `None` (logged) when invalid.
    fn validate(&self, key: &[u8], value: &[u8]) -> Option<(String, Addr)> {
        match change_of(&self.prefix, key, Some(value)) {
            Some((name, Some(addr))) => Some((name, addr)),
            _ => None,
        }
    }
}

/// What a put (`Some(value)`) or delete of `key` means for the backend: `(name, Some(addr))`
/// a server at that address, `(name, None)` no server of that name (deleted, or its value is
/// not `HOST:PORT`: logged), `None` not a server key at all (logged).
fn change_of(prefix: &str, key: &[u8], value: Option<&[u8]>) -> Option<(String, Option<Addr>)> {
    let name = match server_name(prefix, key) {
        Ok(n) => n,
        Err(why) => {
            if value.is_some() {
                log::warn!("skipping {why}");
            }
            return None;
        }
    };
    let Some(value) = value else {
        return Some((name, None));
    };
    let parsed = std::str::from_utf8(value)
        .map_err(|_| "value is not UTF-8".to_owned())
        .and_then(Addr::parse);
    match parsed {
        Ok(addr) => Some((name, Some(addr))),
        Err(why) => {
            log::warn!("skipping key {}/{name}: {why}", prefix);
            Some((name, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_validated() {
        let p = "/app/servers";
        let v = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            change_of(p, b"/app/servers/a", Some(&v("10.0.0.1:80"))),
            Some(("a".into(), Some(Addr::parse("10.0.0.1:80").unwrap())))
        );
        assert_eq!(
            change_of(p, b"/app/servers/a", None),
            Some(("a".into(), None))
        );
        // A bad value takes the server out; a bad name is no server at all.
        assert_eq!(
            change_of(p, b"/app/servers/a", Some(&v("10.0.0.1:80 backup"))),
            Some(("a".into(), None))
        );
        assert_eq!(
            change_of(p, b"/app/servers/a b", Some(&v("10.0.0.1:80"))),
            None
        );
        assert_eq!(change_of(p, b"/app/servers/x/y", None), None);
    }
}
