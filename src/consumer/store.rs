//! The certificate store in etcd, followed by every balancer on a thread of its own: one
//! range read of `CERT_PREFIX/`, then one watch from the next revision (with its own leader
//! probe, as the follower's stream has), and again after any failure, with capped backoff.
//! What it finds goes to the main loop: each host's certificate (`CERT_PREFIX/certs/HOST`,
//! chain and key) and each pending HTTP-01 challenge (`CERT_PREFIX/challenges/TOKEN`, the key
//! authorization), checked for form and size. The account and the locks are the orderer's
//! business (`super::orderer`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::acme::keys::{self, Item};
use crate::etcd::v3::{self, Event, WatchMessage};
use crate::etcd::{Backoff, Client};

/// What the store holds: host → chain and key (PEM); token → key authorization.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub certs: BTreeMap<String, String>,
    pub challenges: BTreeMap<String, String>,
}

/// What the store follower tells the main loop.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreUpdate {
    /// Everything, read at one revision.
    All(Stored),
    /// One change: a host's certificate (`None`: gone or not valid).
    Cert(String, Option<String>),
    /// One change: a challenge's answer (`None`: gone or not valid).
    Challenge(String, Option<String>),
}

/// Keys per range page (a certificate and key are a few KiB: well within the 1 MiB answer).
const PAGE: u32 = 64;

/// Deadline of each etcd call.
const CALL: Duration = Duration::from_secs(5);

pub struct StoreFollower {
    pub client: Client,
    pub cert_prefix: String,
    pub seed: u64,
    pub probe: super::probe::Probe,
    pub tell: Box<dyn FnMut(StoreUpdate) -> bool + Send>,
}

/// A change of one key, as the main loop gets it (`None` for a key that is not the store's).
fn update_of(prefix: &str, key: &[u8], value: Option<&[u8]>) -> Option<StoreUpdate> {
    let key = std::str::from_utf8(key).ok()?;
    let value = value.and_then(|v| std::str::from_utf8(v).ok());
    match keys::parse(prefix, key)? {
        Item::Cert(host) => Some(StoreUpdate::Cert(
            host,
            value
                .filter(|v| keys::valid_cert_value(v))
                .map(str::to_owned),
        )),
        Item::Challenge(token) => Some(StoreUpdate::Challenge(
            token.clone(),
            value
                .filter(|v| keys::valid_key_authorization(&token, v))
                .map(str::to_owned),
        )),
        Item::Account | Item::Lock(_) => None,
    }
}

impl StoreFollower {
    /// Follows the store until the main loop is gone.
    pub fn run(mut self) {
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(5),
            self.seed,
        );
        let mut failing = false;
        loop {
            let failure = match self.read() {
                Ok((stored, revision)) => {
                    if failing {
                        log::info!("certificate store: etcd answers again");
                        failing = false;
                    }
                    if !(self.tell)(StoreUpdate::All(stored)) {
                        return;
                    }
                    backoff.reset();
                    match self.watch(revision + 1) {
                        Ok(true) => return,
                        Ok(false) => continue,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if !failing {
                log::warn!("certificate store: {failure}; keeping what is loaded, retrying");
                failing = true;
            }
            std::thread::sleep(backoff.next_delay());
        }
    }

    /// Everything under the prefix, page by page at one revision.
    fn read(&mut self) -> Result<(Stored, i64), String> {
        let start = keys::dir(&self.cert_prefix).into_bytes();
        let end = v3::prefix_end(&start);
        let mut from = start.clone();
        let mut revision = 0;
        let mut stored = Stored::default();
        loop {
            let page = self
                .client
                .range(&from, &end, revision, PAGE, false, Instant::now() + CALL)
                .map_err(|e| e.to_string())?;
            if revision == 0 {
                revision = page.revision;
            }
            let mut last = None;
            for kv in page.kvs {
                match update_of(&self.cert_prefix, &kv.key, Some(&kv.value)) {
                    Some(StoreUpdate::Cert(host, Some(pem))) => {
                        stored.certs.insert(host, pem);
                    }
                    Some(StoreUpdate::Challenge(token, Some(answer))) => {
                        stored.challenges.insert(token, answer);
                    }
                    _ => {}
                }
                last = Some(kv.key);
            }
            match last {
                Some(mut k) if page.more => {
                    k.push(0);
                    from = k;
                }
                _ => return Ok((stored, revision)),
            }
        }
    }

    /// Watches from `revision` until the stream ends: `Ok(true)` when the main loop is gone,
    /// `Ok(false)` to read again (a canceled or compacted watch).
    fn watch(&mut self, revision: i64) -> Result<bool, String> {
        let start = keys::dir(&self.cert_prefix).into_bytes();
        let end = v3::prefix_end(&start);
        let mut watch = self
            .client
            .open_watch(&[(&start, &end, revision)], None, Instant::now() + CALL)
            .map_err(|e| e.to_string())?;
        self.probe.watching(&watch);
        let endpoint = watch.endpoint().to_owned();
        let mut outcome = None;
        for item in &mut watch {
            match item {
                Ok((_, WatchMessage::Created)) => self.probe.confirmed(),
                Ok((_, WatchMessage::Events(events))) => {
                    for event in events {
                        let update = match &event {
                            Event::Put(kv) => {
                                update_of(&self.cert_prefix, &kv.key, Some(&kv.value))
                            }
                            Event::Delete(key, _) => update_of(&self.cert_prefix, key, None),
                        };
                        if let Some(update) = update
                            && !(self.tell)(update)
                        {
                            outcome = Some(Ok(true));
                            break;
                        }
                    }
                }
                Ok((_, WatchMessage::Canceled { reason, .. })) => {
                    log::info!("certificate store: the watch ended ({reason}); reading again");
                    outcome = Some(Ok(false));
                }
                Err(e) => outcome = Some(Err(e.to_string())),
            }
            if outcome.is_some() {
                break;
            }
        }
        if let Some(why) = self.probe.done() {
            watch.leave();
            outcome = Some(Err(why));
        }
        self.client.finish_watch(watch);
        outcome.unwrap_or_else(|| Err(format!("{endpoint} ended the watch stream")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever etcd (or whatever answers on its port) holds under the store: only keys of
    /// its layout, with values of the right form and size, reach the main loop.
    #[test]
    fn only_well_formed_store_values_pass() {
        let p = "/hecd-certs";
        let thumb = "b".repeat(43);
        let good = format!("tok.{thumb}");
        assert_eq!(
            update_of(p, b"/hecd-certs/challenges/tok", Some(good.as_bytes())),
            Some(StoreUpdate::Challenge("tok".into(), Some(good.clone())))
        );
        for bad in [
            format!("other.{thumb}"),
            format!("tok.{thumb}\n"),
            "tok.".to_owned(),
            format!("tok.{thumb}; evil"),
        ] {
            assert_eq!(
                update_of(p, b"/hecd-certs/challenges/tok", Some(bad.as_bytes())),
                Some(StoreUpdate::Challenge("tok".into(), None)),
                "{bad:?}"
            );
        }
        let pem = "-----BEGIN CERTIFICATE-----\n";
        assert_eq!(
            update_of(p, b"/hecd-certs/certs/a.test", Some(pem.as_bytes())),
            Some(StoreUpdate::Cert("a.test".into(), Some(pem.into())))
        );
        let huge = format!("{pem}{}", "x".repeat(keys::MAX_CERT));
        for bad in [&b"\xff\xfe"[..], b"garbage", huge.as_bytes()] {
            assert_eq!(
                update_of(p, b"/hecd-certs/certs/a.test", Some(bad)),
                Some(StoreUpdate::Cert("a.test".into(), None))
            );
        }
        // Not the store's keys: nothing.
        for key in [
            &b"/hecd-certs/account"[..],
            b"/hecd-certs/locks/a.test",
            b"/hecd-certs/certs/A B",
            b"/hecd-certs/challenges/a.b",
            b"\xff/hecd-certs/certs/a.test",
            b"/other/certs/a.test",
        ] {
            assert_eq!(update_of(p, key, Some(b"x")), None, "{key:?}");
        }
        assert_eq!(
            update_of(p, b"/hecd-certs/certs/a.test", None),
            Some(StoreUpdate::Cert("a.test".into(), None))
        );
    }
}
