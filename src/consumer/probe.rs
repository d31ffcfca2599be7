//! The leader probe of the follower's watch stream. The stream lives as long as etcd keeps it
//! open (nothing is re-created while nothing changes), so something else must notice when the
//! member it is on stops serving: a member cut off from its peers keeps a watch open and
//! silent, and one that hangs keeps the connection. Once a second, a thread of its own sends
//! that member one `maintenance/status` call, requiring a leader (a leaderless member refuses
//! at once); when the call fails, names no leader, or takes over [`TIMEOUT`], it ends the
//! stream (the follower then reads again through the next member). One request a second,
//! whatever the number of services watched. A stream whose watches etcd has not all confirmed
//! within [`CONFIRM_WAIT`] is ended the same way.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::etcd::{Canceller, Client, Watch};

/// How often the member is asked.
pub const EVERY: Duration = Duration::from_secs(1);

/// Longest wait for its answer.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// A stream whose every watch etcd has not confirmed this long after it opened is ended too:
/// a watch never created would leave its service unfollowed for as long as the stream lives.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// The stream being read, as the probe thread sees it.
struct Watched {
    endpoint: String,
    prefix: &'static str,
    cancel: Canceller,
    /// Which stream this is: a verdict on an older one ends nothing.
    generation: u64,
    opened: Instant,
    /// etcd confirmed every watch of the stream.
    confirmed: bool,
}

#[derive(Default)]
struct Slot {
    watched: Option<Watched>,
    generation: u64,
    /// Why the probe ended the current stream, if it did.
    verdict: Option<String>,
}

/// The follower's side: it says which stream it reads; dropping it ends the probe thread
/// (within [`EVERY`]).
pub struct Probe {
    slot: Arc<Mutex<Slot>>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Probe {
    /// Starts the probe thread with a client of its own.
    pub fn start(client: Client) -> std::io::Result<Probe> {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let weak = Arc::downgrade(&slot);
        crate::sys::spawn_thread("probe", move || run(client, &weak))?;
        Ok(Probe { slot })
    }

    /// From now on `watch` is the stream to keep an eye on.
    pub fn watching(&self, watch: &Watch) {
        let mut s = lock(&self.slot);
        s.generation += 1;
        s.verdict = None;
        s.watched = Some(Watched {
            endpoint: watch.endpoint().to_owned(),
            prefix: watch.api_prefix(),
            cancel: watch.canceller(),
            generation: s.generation,
            opened: Instant::now(),
            confirmed: false,
        });
    }

    /// etcd has confirmed every watch of the current stream.
    pub fn confirmed(&self) {
        if let Some(w) = &mut lock(&self.slot).watched {
            w.confirmed = true;
        }
    }

    /// The stream is over: returns why the probe ended it, if it did.
    pub fn done(&self) -> Option<String> {
        let mut s = lock(&self.slot);
        s.watched = None;
        s.verdict.take()
    }
}

fn run(mut client: Client, slot: &Weak<Mutex<Slot>>) {
    loop {
        std::thread::sleep(EVERY);
        let Some(shared) = slot.upgrade() else {
            return; // the follower is gone
        };
        let target = lock(&shared).watched.as_ref().map(|w| {
            let unconfirmed = !w.confirmed && w.opened.elapsed() >= CONFIRM_WAIT;
            let target = (w.endpoint.clone(), w.prefix, w.cancel.clone());
            (target, w.generation, unconfirmed)
        });
        drop(shared);
        let Some(((endpoint, prefix, cancel), generation, unconfirmed)) = target else {
            continue;
        };
        let verdict = if unconfirmed {
            Err(format!(
                "etcd did not confirm every watch within {} s",
                CONFIRM_WAIT.as_secs()
            ))
        } else {
            client.probe(&endpoint, prefix, TIMEOUT)
        };
        let Err(why) = verdict else {
            continue;
        };
        let Some(shared) = slot.upgrade() else {
            return;
        };
        let mut s = lock(&shared);
        if s.watched
            .as_ref()
            .is_some_and(|w| w.generation == generation)
        {
            s.verdict = Some(format!("{endpoint} does not serve ({why})"));
            cancel.cancel();
        }
    }
}
