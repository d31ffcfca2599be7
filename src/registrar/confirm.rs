//! Confirmed drain, on the stop path after the delete: which load balancers were announced
//! under `LB_PREFIX/lbs/` at the delete's revision, and a watch of `LB_PREFIX/` from the next
//! revision for their confirmations (`LB_PREFIX/drained/PREFIX/NAME/LB_ID`, written when a balancer
//! has the server out of rotation and idle) and for their announcements ending (a balancer that
//! died: its lease ran out). When every balancer of the delete's moment has confirmed or gone,
//! the supervisor is told and ends the drain; `--drain` stays the bound (the supervisor's own
//! deadline, whatever happens here). No balancer announced, v2, or etcd failing: nothing is
//! sent, and the drain is the fixed one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{News, Notifier};
use crate::contract;
use crate::etcd::Client;
use crate::etcd::v3::{self, Event, WatchMessage};

/// Where the balancers' keys are, under `--lb-prefix`.
pub struct Keys {
    /// `LB_PREFIX/lbs/`: one leased key per balancer, its id last.
    pub lbs: String,
    /// `LB_PREFIX/drained/NAME/`: one confirmation per balancer, its id last.
    pub drained: String,
    /// `LB_PREFIX/`: what the watch covers.
    pub all: String,
}

impl Keys {
    /// The keys for the instance `PREFIX/NAME` (see [`crate::contract`]).
    pub fn new(lb_prefix: &str, prefix: &str, name: &str) -> Keys {
        Keys {
            lbs: contract::lbs_dir(lb_prefix),
            drained: contract::drained_dir(lb_prefix, prefix, name),
            all: format!("{lb_prefix}/"),
        }
    }
}

/// The id at the end of `key` when it is `prefix` + one segment.
fn id_under(prefix: &str, key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    let id = key.strip_prefix(prefix)?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

/// Waits (until `deadline`) for the confirmations of the balancers announced at `revision`,
/// the delete's; tells the supervisor what it sees.
pub fn wait(
    client: &mut Client,
    keys: &Keys,
    revision: i64,
    deadline: Instant,
    notifier: &Notifier,
) {
    let started = Instant::now();
    let lbs_end = v3::prefix_end(keys.lbs.as_bytes());
    let call = deadline.min(Instant::now() + Duration::from_secs(2));
    let expected: BTreeSet<String> =
        match client.range(keys.lbs.as_bytes(), &lbs_end, revision, 10_000, true, call) {
            Ok(page) => page
                .kvs
                .iter()
                .filter_map(|kv| id_under(&keys.lbs, &kv.key))
                .collect(),
            Err(e) => {
                log::info!(
                    "cannot read the load balancers under {}: {e}; fixed drain",
                    keys.lbs
                );
                return;
            }
        };
    if expected.is_empty() {
        log::debug!("no load balancer announced under {}; fixed drain", keys.lbs);
        return;
    }
    log::debug!(
        "waiting for {} load balancers to confirm: {}",
        expected.len(),
        expected.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    let mut confirmed = BTreeSet::new();
    let mut gone = BTreeSet::new();
    notifier.send(progress(&expected, &confirmed, &gone));
    let all_end = v3::prefix_end(keys.all.as_bytes());
    let mut next = revision + 1;
    let mut done = false;
    while !done && Instant::now() < deadline {
        let life = deadline.saturating_duration_since(Instant::now());
        let opened = client.open_watch(
            &[(keys.all.as_bytes(), &all_end, next)],
            Some(life),
            deadline.min(Instant::now() + Duration::from_secs(2)),
        );
        let mut watch = match opened {
            Ok(w) => w,
            Err(e) => {
                log::debug!("watching the confirmations: {e}");
                std::thread::sleep(Duration::from_millis(50).min(life));
                continue;
            }
        };
        for message in &mut watch {
            let events = match message {
                Ok((_, WatchMessage::Events(events))) => events,
                Ok((_, WatchMessage::Created)) => continue,
                // Canceled (compacted): read no further.
                Ok((_, WatchMessage::Canceled { .. })) => break,
                Err(e) => {
                    log::debug!("watching the confirmations: {e}");
                    std::thread::sleep(Duration::from_millis(50).min(life));
                    break;
                }
            };
            let before = (confirmed.len(), gone.len());
            for event in events {
                match event {
                    Event::Put(kv) => {
                        next = next.max(kv.mod_revision + 1);
                        if let Some(id) = id_under(&keys.drained, &kv.key)
                            && expected.contains(&id)
                        {
                            gone.remove(&id);
                            confirmed.insert(id);
                        }
                    }
                    Event::Delete(key, rev) => {
                        next = next.max(rev + 1);
                        if let Some(id) = id_under(&keys.lbs, &key)
                            && expected.contains(&id)
                            && !confirmed.contains(&id)
                        {
                            gone.insert(id);
                        }
                    }
                }
            }
            if confirmed.len() + gone.len() >= expected.len() {
                done = true;
                break;
            }
            if (confirmed.len(), gone.len()) != before {
                notifier.send(progress(&expected, &confirmed, &gone));
            }
        }
        client.finish_watch(watch);
    }
    if done {
        log::debug!(
            "every load balancer confirmed {} ms after the delete",
            started.elapsed().as_millis()
        );
        notifier.send(News::DrainConfirmed {
            confirmed: confirmed.len(),
            of: expected.len(),
            gone: gone.into_iter().collect(),
        });
    }
}

fn progress(
    expected: &BTreeSet<String>,
    confirmed: &BTreeSet<String>,
    gone: &BTreeSet<String>,
) -> News {
    News::DrainWaiting {
        confirmed: confirmed.iter().cloned().collect(),
        silent: expected
            .iter()
            .filter(|id| !confirmed.contains(*id) && !gone.contains(*id))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_segment_under_the_prefix() {
        let k = Keys::new("/hecd", "/app/servers", "web-1");
        assert_eq!(id_under(&k.lbs, b"/hecd/lbs/lb-a").as_deref(), Some("lb-a"));
        assert_eq!(
            id_under(&k.drained, b"/hecd/drained/app/servers/web-1/lb-a").as_deref(),
            Some("lb-a")
        );
        assert_eq!(
            id_under(&k.drained, b"/hecd/drained/app/servers/web-10/lb-a"),
            None
        );
        // Another service's instance of the same name is not this one.
        assert_eq!(
            id_under(&k.drained, b"/hecd/drained/app/api/web-1/lb-a"),
            None
        );
        assert_eq!(id_under(&k.lbs, b"/hecd/lbs/"), None);
        assert_eq!(id_under(&k.lbs, b"/hecd/lbs/a/b"), None);
        assert_eq!(id_under(&k.lbs, b"/hecd/lbs/\xff"), None);
    }
}
