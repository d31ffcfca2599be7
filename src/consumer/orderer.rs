//! The ACME orderer, on a thread of its own so that an order (seconds, a CA that hangs) never
//! delays routing, the confirmed drain or another host's certificate being loaded. The main
//! loop sends it the hosts that are due ([`crate::acme::plan`]); it takes them one at a time:
//!
//! 1. a lease of its own ([`LOCK_TTL`]) and the host's lock, `CERT_PREFIX/locks/HOST`, created
//!    only if absent: another balancer holding it orders that host, this one goes on;
//! 2. the store's certificate read again: another balancer may have just stored a new one;
//! 3. the order ([`crate::acme::client`]), its challenges published under the same lease at
//!    `CERT_PREFIX/challenges/TOKEN` (every balancer answers them), the lease kept alive
//!    between steps;
//! 4. the chain and key checked as a file would be, then stored at `CERT_PREFIX/certs/HOST`
//!    (no lease: it is the store), every balancer loading it from there;
//! 5. the lock deleted and the lease revoked (which takes the challenges too).
//!
//! A balancer that dies mid-order frees the lock within [`LOCK_TTL`]. A failed order is logged
//! once and tried again later with capped backoff, for that host alone.

use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustls::pki_types::UnixTime;

use crate::acme::client::{Acme, AcmeError, Hooks};
use crate::acme::jws::AccountKey;
use crate::acme::{keys, plan};
use crate::consumer::certs::unix_now;
use crate::etcd::{Client, EtcdError, Lease};
use crate::http::Http;

/// The lock's lease: a balancer that dies mid-order frees the host this long after.
pub const LOCK_TTL: u64 = 15;

/// The lease is renewed when this long has passed since the last renewal.
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// A host another balancer is ordering is looked at again this long after.
const LOCKED_WAIT: Duration = Duration::from_secs(3);

/// Deadline of each etcd call.
const CALL: Duration = Duration::from_secs(5);

/// How long a published challenge may take to be answered by this balancer before the CA is
/// told to look anyway (the store's watch and one runtime command: milliseconds).
const ANSWER_WAIT: Duration = Duration::from_secs(5);

pub struct Orderer {
    pub client: Client,
    /// For the CA (`--acme-cacert`'s roots).
    pub http: Http,
    pub directory: String,
    pub email: Option<String>,
    pub cert_prefix: String,
    pub lb_id: String,
    pub renew_before: Duration,
    /// The hosts due, from the main loop; each list replaces the last.
    pub due: Receiver<Vec<String>>,
    /// The challenge tokens this balancer's HAProxy answers, from the main loop whenever they
    /// change; each set replaces the last.
    pub answered: Receiver<BTreeSet<String>>,
}

/// What one host's turn came to.
enum Turn {
    Stored,
    /// Another balancer holds the lock, or the store's certificate is good now.
    Nothing(&'static str),
}

/// The hooks of one order: the challenges under the lock's lease, which is kept alive.
struct LeaseHooks<'a> {
    client: &'a mut Client,
    lease: i64,
    prefix: &'a str,
    renewed: Instant,
    answered: &'a Receiver<BTreeSet<String>>,
    /// The last set of answered tokens received.
    served: BTreeSet<String>,
}

impl Hooks for LeaseHooks<'_> {
    fn publish(&mut self, token: &str, answer: &str) -> Result<(), String> {
        let key = keys::challenge(self.prefix, token);
        self.client
            .put(
                &key,
                answer,
                Lease::V3(self.lease),
                LOCK_TTL,
                Instant::now() + CALL,
            )
            .map_err(|e| format!("cannot publish the challenge: {e}"))?;
        // The CA may look the moment it is told to, and the name may well point at this
        // balancer: it answers first (its store follower sees the key, its main loop sets the
        // map entry). Bounded: a balancer that cannot answer still lets the CA try the others.
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            while let Ok(set) = self.answered.try_recv() {
                self.served = set;
            }
            if self.served.contains(token) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "ACME: this balancer does not answer the challenge {} s after publishing it; asking the CA to look anyway",
                    ANSWER_WAIT.as_secs()
                );
                return Ok(());
            }
            match self.answered.recv_timeout(left) {
                Ok(set) => self.served = set,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    fn unpublish(&mut self, token: &str) {
        let key = keys::challenge(self.prefix, token);
        let _ = self.client.delete_key(&key, Instant::now() + CALL);
    }

    fn alive(&mut self) -> Result<(), String> {
        if self.renewed.elapsed() < RENEW_EVERY {
            return Ok(());
        }
        self.client
            .keepalive(Lease::V3(self.lease), "", LOCK_TTL, Instant::now() + CALL)
            .map_err(|e| format!("the lock's lease: {e}"))?;
        self.renewed = Instant::now();
        Ok(())
    }
}

impl Orderer {
    /// Takes due hosts until the main loop is gone.
    pub fn run(mut self) {
        let mut due: Vec<String> = Vec::new();
        let mut retries = plan::Retries::default();
        let mut acme: Option<Acme> = None;
        loop {
            let wait = retries
                .next()
                .map_or(Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(Instant::now())
                })
                .max(Duration::from_millis(10));
            match self.due.recv_timeout(wait) {
                Ok(list) => due = list,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(list) = self.due.try_recv() {
                due = list;
            }
            retries.keep(&due.iter().cloned().collect());
            for host in due.clone() {
                if !retries.ready(&host, Instant::now()) {
                    continue;
                }
                let result = self.account(&mut acme).and_then(|acme| {
                    Self::turn(
                        &mut self.client,
                        acme,
                        &self.cert_prefix,
                        &self.lb_id,
                        self.renew_before,
                        &host,
                        &self.answered,
                    )
                });
                match result {
                    Ok(Turn::Stored) => {
                        retries.succeeded(&host);
                        log::info!("ACME: a certificate for {host} is stored for every balancer");
                    }
                    Ok(Turn::Nothing(why)) => {
                        // Looked at again soon: the lock's holder may die, or the store
                        // change.
                        retries.later(&host, Instant::now(), LOCKED_WAIT);
                        log::debug!("ACME: {host}: {why}");
                    }
                    Err(e) => {
                        let wait = retries.failed(&host, Instant::now());
                        log::warn!("ACME: {host}: {e}; trying again in {} s", wait.as_secs());
                        if matches!(e, AcmeError::Ca(_)) {
                            // The CA may have lost the account's nonce or the directory moved.
                            acme = None;
                        }
                    }
                }
                // A newer list wins: hosts no longer due are not ordered.
                if let Ok(list) = self.due.try_recv() {
                    due = list;
                    break;
                }
            }
        }
    }

    /// The account: its key from the store (made and stored by the first balancer that
    /// needs it), registered with the CA.
    fn account<'a>(&mut self, acme: &'a mut Option<Acme>) -> Result<&'a mut Acme, AcmeError> {
        if acme.is_none() {
            let key = self.account_key()?;
            let mut client = Acme::new(self.http.clone(), &self.directory, key);
            client.register(self.email.as_deref())?;
            *acme = Some(client);
        }
        acme.as_mut()
            .ok_or_else(|| AcmeError::Local("no account".into()))
    }

    fn account_key(&mut self) -> Result<AccountKey, AcmeError> {
        let key = keys::account(&self.cert_prefix);
        let etcd = |e: EtcdError| AcmeError::Local(format!("the account key in etcd: {e}"));
        if let Some(value) = get(&mut self.client, &key).map_err(etcd)? {
            return parse_account(&value);
        }
        let fresh = AccountKey::generate().map_err(AcmeError::Local)?;
        let value =
            serde_json::json!({ "key": crate::etcd::v3::base64(fresh.pkcs8()) }).to_string();
        if self
            .client
            .put_if_absent(&key, &value, 0, Instant::now() + CALL)
            .map_err(etcd)?
        {
            log::info!("ACME: a new account key is stored for every balancer");
            return Ok(fresh);
        }
        // Another balancer stored one first: that one.
        let value = get(&mut self.client, &key)
            .map_err(etcd)?
            .ok_or_else(|| AcmeError::Local("the account key vanished".into()))?;
        parse_account(&value)
    }

    /// One host: lock, look again, order, store, unlock.
    fn turn(
        client: &mut Client,
        acme: &mut Acme,
        prefix: &str,
        lb_id: &str,
        renew_before: Duration,
        host: &str,
        answered: &Receiver<BTreeSet<String>>,
    ) -> Result<Turn, AcmeError> {
        let etcd = |e: EtcdError| AcmeError::Local(format!("etcd: {e}"));
        let lease = match client
            .grant(LOCK_TTL, Instant::now() + CALL)
            .map_err(etcd)?
        {
            Lease::V3(id) => id,
            Lease::V2 => return Err(AcmeError::Local("the store needs etcd's v3 API".into())),
        };
        let release = |client: &mut Client| {
            let _ = client.delete_key(&keys::lock(prefix, host), Instant::now() + CALL);
            let _ = client.revoke(lease, Instant::now() + CALL);
        };
        if !client
            .put_if_absent(
                &keys::lock(prefix, host),
                lb_id,
                lease,
                Instant::now() + CALL,
            )
            .map_err(etcd)?
        {
            let _ = client.revoke(lease, Instant::now() + CALL);
            return Ok(Turn::Nothing("another balancer is ordering it"));
        }
        let result = (|| {
            let stored = get(client, &keys::cert(prefix, host)).map_err(etcd)?;
            let stored = stored.and_then(|v| String::from_utf8(v).ok());
            if !plan::due(host, stored.as_deref(), unix_now(), renew_before) {
                return Ok(Turn::Nothing("the store has a good certificate now"));
            }
            log::info!("ACME: ordering a certificate for {host}");
            let mut hooks = LeaseHooks {
                client,
                lease,
                prefix,
                renewed: Instant::now(),
                answered,
                served: BTreeSet::new(),
            };
            let issued = acme.order(host, &mut hooks)?;
            let text = format!(
                "{}{}\n{}",
                plan::ordered_line(unix_now(), lb_id),
                issued.chain.trim_end_matches('\n'),
                issued.key
            );
            let cert = crate::consumer::certs::inspect(text.as_bytes(), unix_now())
                .map_err(|e| AcmeError::Ca(format!("the certificate issued: {e}")))?;
            if !plan::names_cover(&cert.names, host) {
                return Err(AcmeError::Ca(format!(
                    "the certificate issued names {}, not {host}",
                    cert.names.join(", ")
                )));
            }
            hooks.alive().map_err(AcmeError::Local)?;
            client
                .put_forever(&keys::cert(prefix, host), &text, Instant::now() + CALL)
                .map_err(etcd)?;
            let later = UnixTime::since_unix_epoch(
                Duration::from_secs(unix_now().as_secs()) + plan::MIN_REORDER,
            );
            if plan::due(host, Some(&text), later, renew_before) {
                log::warn!(
                    "ACME: the certificate for {host} is due for renewal as soon as it is issued: --acme-renew-before is longer than the CA's certificates live; it is ordered again every {} s",
                    plan::MIN_REORDER.as_secs()
                );
            }
            Ok(Turn::Stored)
        })();
        release(client);
        result
    }
}

fn parse_account(value: &[u8]) -> Result<AccountKey, AcmeError> {
    let bad = |why: &str| AcmeError::Local(format!("the stored account key is unusable: {why}"));
    let v: serde_json::Value = serde_json::from_slice(value).map_err(|_| bad("not JSON"))?;
    let der = v["key"]
        .as_str()
        .and_then(crate::etcd::v3::unbase64)
        .ok_or_else(|| bad("no key"))?;
    AccountKey::from_pkcs8(&der).map_err(|e| bad(&e))
}

/// The value of one key, if it exists.
fn get(client: &mut Client, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
    let page = client.range(key.as_bytes(), &[], 0, 1, false, Instant::now() + CALL)?;
    Ok(page
        .kvs
        .into_iter()
        .find(|kv| kv.key == key.as_bytes())
        .map(|kv| kv.value))
}
