//! Confirmed drain, the balancer's side, on a thread of its own: hecd-haproxy keeps a key of
//! its own, `LB_PREFIX/lbs/LB_ID`, under a lease it keeps alive (so an instance that stops knows
//! which balancers to wait for, and a balancer that dies drops out when its lease ends), and,
//! for each server whose key was deleted, once HAProxy has it out of rotation with no
//! connection in use, writes `LB_PREFIX/drained/PREFIX/NAME/LB_ID` under a short lease: "this
//! balancer sends PREFIX/NAME no new request and has none in flight". On a stop, the
//! announcement is revoked first, so instances stopping meanwhile do not wait for a balancer
//! that is going away.
//!
//! etcd failing here changes nothing for HAProxy: the announcement is put back when etcd
//! answers, and a confirmation that cannot be written only makes the instance wait its full
//! `--drain`.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::contract;
use crate::etcd::{Backoff, Client, Lease};

/// What the main loop tells the announcer.
pub enum Message {
    /// The server `(prefix, name)` is drained and removed (or was never there).
    Drained(String, String),
    /// hecd-haproxy stops: delete the announcement and revoke its lease (bounded), then say so.
    Stop(Sender<()>),
}

/// The announcement's lease: a balancer that dies drops out of the waits this long after.
pub const ANNOUNCE_TTL: u64 = 5;

/// Confirmations live this long (they matter only during the instance's drain).
const CONFIRM_TTL: u64 = 10;

/// A confirmation lease is shared by the confirmations written within this long of its grant.
const CONFIRM_LEASE_REUSE: Duration = Duration::from_secs(4);

const CALL: Duration = Duration::from_secs(2);

pub struct Announcer {
    pub client: Client,
    pub lb_prefix: String,
    pub lb_id: String,
    /// The announcement's value: where this balancer listens.
    pub value: String,
    pub messages: Receiver<Message>,
}

impl Announcer {
    pub fn run(mut self) {
        let key = contract::lb_key(&self.lb_prefix, &self.lb_id);
        let keepalive = Duration::from_secs(ANNOUNCE_TTL) / 3;
        let seed = crate::etcd::jitter_seed(&self.lb_id).rotate_left(17);
        let mut backoff = Backoff::new(Duration::from_millis(200), keepalive, seed);
        let mut lease: Option<Lease> = None;
        let mut confirm_lease: Option<(Lease, Instant)> = None;
        let mut failing = false;
        let mut next_keepalive = Instant::now();
        loop {
            if Instant::now() >= next_keepalive {
                let ok = match lease {
                    Some(l) => self
                        .client
                        .keepalive(l, &key, ANNOUNCE_TTL, Instant::now() + CALL)
                        .map_err(|e| e.to_string()),
                    None => self.announce(&key).map(|l| {
                        lease = Some(l);
                        log::info!("announced as load balancer {key}");
                    }),
                };
                match ok {
                    Ok(()) => {
                        failing = false;
                        backoff.reset();
                        next_keepalive = Instant::now() + keepalive;
                    }
                    Err(e) => {
                        if !failing {
                            log::warn!("cannot keep {key} in etcd: {e}; retrying");
                            failing = true;
                        }
                        lease = None;
                        next_keepalive = Instant::now() + backoff.next_delay();
                    }
                }
            }
            let wait = next_keepalive.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(wait) {
                Ok(Message::Drained(prefix, name)) => {
                    self.confirm(&prefix, &name, &mut confirm_lease);
                }
                Ok(Message::Stop(done)) => {
                    if let Some(l) = lease {
                        let deadline = Instant::now() + CALL;
                        match self.client.deregister(l, &key, deadline) {
                            Ok(_) => log::info!(
                                "withdrew {key}: instances no longer wait for this balancer"
                            ),
                            Err(e) => log::warn!(
                                "cannot withdraw {key}: {e}; it ends with its lease ({ANNOUNCE_TTL}s)"
                            ),
                        }
                    }
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Grants the announcement's lease and puts the key under it.
    fn announce(&mut self, key: &str) -> Result<Lease, String> {
        let deadline = Instant::now() + CALL;
        let lease = self
            .client
            .grant(ANNOUNCE_TTL, deadline)
            .map_err(|e| e.to_string())?;
        self.client
            .put(key, &self.value, lease, ANNOUNCE_TTL, deadline)
            .map_err(|e| e.to_string())?;
        Ok(lease)
    }

    /// Writes `LB_PREFIX/drained/PREFIX/NAME/LB_ID`, under a short lease shared with the other
    /// confirmations of the last few seconds.
    fn confirm(&mut self, prefix: &str, name: &str, shared: &mut Option<(Lease, Instant)>) {
        let key = contract::drained_key(&self.lb_prefix, prefix, name, &self.lb_id);
        let deadline = Instant::now() + CALL;
        let reuse = shared.filter(|(_, granted)| granted.elapsed() < CONFIRM_LEASE_REUSE);
        let mut result = Err(crate::etcd::EtcdError::Gone);
        // A shared lease may have been lost (etcd restarted): once more with a new one.
        for l in [reuse.map(|(l, _)| l), None] {
            let lease = match l {
                Some(l) => Ok(l),
                None => self.client.grant(CONFIRM_TTL, deadline).inspect(|l| {
                    *shared = Some((*l, Instant::now()));
                }),
            };
            result = lease.and_then(|l| self.client.put(&key, "drained", l, CONFIRM_TTL, deadline));
            if !matches!(result, Err(crate::etcd::EtcdError::Gone)) || l.is_none() {
                break;
            }
        }
        match result {
            Ok(()) => log::debug!("confirmed {key}"),
            Err(e) => {
                *shared = None;
                log::warn!("cannot confirm {key}: {e}; that instance waits its full drain");
            }
        }
    }
}
