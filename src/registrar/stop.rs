//! The stop path: a thread that waits, idle, for the supervisor's deregistration request and
//! then deletes the key and revokes the lease at once, over a connection of its own. It never
//! waits for the registrar thread: whatever that one has in flight (a probe of a slow app, a
//! keepalive to a slow etcd, a Docker call, a backoff wait) is abandoned. Why that is safe is
//! in the module comment of `registrar`.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{News, Notifier, Shared, lock};
use crate::http::Http;

pub(super) struct Stopper {
    pub shared: Arc<Mutex<Shared>>,
    /// Its own agent: no pooled connection or lock shared with the registrar's requests.
    pub http: Http,
    pub ttl: Duration,
    pub notifier: Notifier,
    /// `--lb-prefix` and `--drain`: after the delete, wait (at most the drain) for the load
    /// balancers' confirmations. `None` without a drain.
    pub confirm: Option<(String, Duration)>,
}

impl Stopper {
    pub fn run(self, requests: &Receiver<Instant>) {
        // One request per process life; a closed channel means the supervisor is gone.
        let Ok(deadline) = requests.recv() else {
            return;
        };
        let (had_key, key, lease, mut client) = {
            let mut shared = lock(&self.shared);
            shared.stopping = true;
            (
                shared.maybe_present,
                shared.key.clone(),
                shared.lease,
                shared.client.fork(self.http.clone()),
            )
        };
        let Some(lease) = lease.filter(|_| had_key) else {
            // Nothing was put (or the last delete was confirmed): nothing to remove.
            self.notifier.send(News::Deregistered(false));
            return;
        };
        let work = std::panic::AssertUnwindSafe(|| client.deregister(lease, &key, deadline));
        let revision = match std::panic::catch_unwind(work) {
            Ok(Ok(revision)) => {
                log::info!("deregistered {key} (revoked {lease})");
                revision
            }
            Ok(Err(e)) => {
                log::warn!(
                    "cannot deregister {key}: {e}; etcd drops it when the lease expires (within {}s)",
                    self.ttl.as_secs()
                );
                None
            }
            // The panic hook has printed the bug; the lease runs out by itself.
            Err(_) => None,
        };
        self.notifier.send(News::Deregistered(true));
        // The drain starts now on the supervisor's clock; the confirmations are awaited here
        // until it ends (v3 only: v2 gives no revision to count from).
        if let (Some(revision), Some((lb_prefix, drain))) = (revision, &self.confirm) {
            let deadline = Instant::now() + *drain;
            let (prefix, name) = key.rsplit_once('/').unwrap_or(("", &key));
            let keys = super::confirm::Keys::new(lb_prefix, prefix, name);
            let work = std::panic::AssertUnwindSafe(|| {
                super::confirm::wait(&mut client, &keys, revision, deadline, &self.notifier);
            });
            let _ = std::panic::catch_unwind(work);
        }
    }
}
