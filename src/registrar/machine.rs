//! The registrar's decisions as a pure state machine, in the style of [`crate::lifecycle`]:
//! [`Machine::next`] says what is due at a given time, [`Machine::step`] takes what came of it
//! (`(state, event, now) → (state, actions)`). It never performs I/O or reads the clock: the
//! registrar thread (`super::Registrar`) carries out the actions and feeds back the results.
//!
//! States (`../shared/STYLE.md`): Discovering → WaitingReady → Ready (the put is due, now or
//! after a backoff) → Registered ⇄ Unhealthy; a lost lease goes back to Ready with a new
//! grant. Checks run on their own deadline in every state but Discovering; two failures in a
//! row make a healthy instance Unhealthy (its key removed), one pass makes it healthy again.

use std::time::{Duration, Instant};

use crate::etcd::{Backoff, Lease};

/// How often discovery is tried, and the check run, before the app has passed it once.
pub const READINESS_POLL: Duration = Duration::from_millis(100);

/// The fixed knobs, from the validated config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A check is configured (`--check` is not `none`).
    pub has_check: bool,
    pub check_interval: Duration,
    /// `--ttl`: keepalives every third of it.
    pub ttl: Duration,
}

/// Where the registration is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Looking for the name and address; again at `at`.
    Discovering { at: Instant },
    /// Found; the app has not passed its check yet.
    WaitingReady,
    /// Healthy and not registered: the put is due at `at` (now, or after a backoff).
    Ready { at: Instant },
    /// The key is in etcd; the next keepalive is due at `keepalive`.
    Registered { keepalive: Instant },
    /// Two checks failed in a row after the app had passed one: the key was removed. A pass
    /// makes it Ready again (the put due at `at`).
    Unhealthy { at: Instant },
}

/// What the registrar carries out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Look for the name and address; answer [`Event::Found`] or [`Event::NotFound`].
    Discover,
    /// Run the check; answer [`Event::CheckPassed`] or [`Event::CheckFailed`].
    Probe,
    /// Grant a lease if there is none (`None`), then put the key (and the route declaration)
    /// under it; answer [`Event::Put`] or [`Event::PutFailed`].
    Register(Option<Lease>),
    /// Renew the lease; answer [`Event::KeptAlive`], [`Event::LeaseGone`] or
    /// [`Event::KeepaliveFailed`].
    Keepalive(Lease),
    /// Delete the key and revoke the lease (the app is unhealthy); no answer.
    Remove(Lease),
    /// The lease is gone: the stop path must no longer count on it.
    ForgetLease,
    /// Tell the supervisor the key is now present (true) or absent (false).
    Notify(bool),
}

/// What came of an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Found,
    NotFound,
    CheckPassed,
    CheckFailed,
    /// The key is in etcd under this lease.
    Put(Lease),
    /// The put (or the grant) failed; `lease` is the lease to use next time, if it is still
    /// good (`None` after a failed grant, or when etcd said the lease is gone).
    PutFailed {
        lease: Option<Lease>,
    },
    KeptAlive,
    /// etcd no longer has the lease (expired, revoked, lost): register again.
    LeaseGone,
    KeepaliveFailed,
}

/// The registrar's state and its deadlines.
#[derive(Debug)]
pub struct Machine {
    pub state: State,
    settings: Settings,
    /// A lease granted and not known to be gone (it may carry no key yet).
    lease: Option<Lease>,
    /// Checks failed in a row.
    failures: u32,
    next_check: Instant,
    backoff: Backoff,
}

impl Machine {
    pub fn new(settings: Settings, backoff: Backoff, now: Instant) -> Self {
        Self {
            state: State::Discovering { at: now },
            settings,
            lease: None,
            failures: 0,
            next_check: now,
            backoff,
        }
    }

    /// The lease in use, if any.
    pub fn lease(&self) -> Option<Lease> {
        self.lease
    }

    /// Whether the app counts as healthy now (registered or to be).
    pub fn healthy(&self) -> bool {
        matches!(self.state, State::Ready { .. } | State::Registered { .. })
    }

    /// The earliest time something is due.
    pub fn deadline(&self) -> Instant {
        let check = self.settings.has_check.then_some(self.next_check);
        let own = match self.state {
            State::Discovering { at } => return at,
            State::Ready { at } => Some(at),
            State::Registered { keepalive } => Some(keepalive),
            State::WaitingReady | State::Unhealthy { .. } => None,
        };
        [check, own]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.next_check)
    }

    /// What is due at `now`, in order: discovery, then the check, then the keepalive or the
    /// put. Call again after each answer until nothing is due.
    pub fn next(&self, now: Instant) -> Option<Action> {
        match self.state {
            State::Discovering { at } => return (now >= at).then_some(Action::Discover),
            _ if self.settings.has_check && now >= self.next_check => return Some(Action::Probe),
            State::Registered { keepalive } if now >= keepalive => {
                return self.lease.map(Action::Keepalive);
            }
            State::Ready { at } if now >= at => return Some(Action::Register(self.lease)),
            _ => {}
        }
        None
    }

    /// Takes what came of an action at `now`; the actions that follow from it.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let third = self.settings.ttl / 3;
        let mut actions = Vec::new();
        match (self.state.clone(), event) {
            (State::Discovering { .. }, Event::Found) => {
                self.next_check = now;
                self.state = if self.settings.has_check {
                    State::WaitingReady
                } else {
                    State::Ready { at: now }
                };
            }
            (State::Discovering { .. }, Event::NotFound) => {
                self.state = State::Discovering {
                    at: now + READINESS_POLL,
                };
            }
            (state, Event::CheckPassed) => {
                self.failures = 0;
                self.state = match state {
                    State::WaitingReady => State::Ready { at: now },
                    State::Unhealthy { at } => State::Ready { at },
                    other => other,
                };
                self.next_check = now + self.settings.check_interval;
            }
            (state, Event::CheckFailed) => {
                self.failures = self.failures.saturating_add(1);
                // Until the app first passes, look more often, so a fresh instance takes
                // traffic soon after it listens rather than up to a whole interval later.
                let every = if state == State::WaitingReady {
                    self.settings.check_interval.min(READINESS_POLL)
                } else {
                    self.settings.check_interval
                };
                self.next_check = now + every;
                if self.failures == 2 && self.healthy() {
                    let at = match state {
                        State::Ready { at } => at,
                        _ => now,
                    };
                    self.state = State::Unhealthy { at };
                    if let Some(lease) = self.lease.take() {
                        actions.push(Action::Notify(false));
                        actions.push(Action::Remove(lease));
                    }
                }
            }
            (State::Ready { .. }, Event::Put(lease)) => {
                self.lease = Some(lease);
                self.backoff.reset();
                self.state = State::Registered {
                    keepalive: now + third,
                };
                actions.push(Action::Notify(true));
            }
            (State::Ready { .. }, Event::PutFailed { lease }) => {
                self.lease = lease;
                self.state = State::Ready {
                    at: now + self.backoff.next_delay(),
                };
            }
            (State::Registered { .. }, Event::KeptAlive) => {
                self.backoff.reset();
                self.state = State::Registered {
                    keepalive: now + third,
                };
            }
            (State::Registered { .. }, Event::KeepaliveFailed) => {
                self.state = State::Registered {
                    keepalive: now + self.backoff.next_delay().min(third),
                };
            }
            (State::Registered { .. }, Event::LeaseGone) => {
                self.lease = None;
                self.state = State::Ready { at: now };
                actions.push(Action::ForgetLease);
                actions.push(Action::Notify(false));
            }
            // An answer that does not fit the state (it cannot happen: each answer follows its
            // own action) changes nothing.
            _ => {}
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(has_check: bool, t0: Instant) -> Machine {
        let settings = Settings {
            has_check,
            check_interval: Duration::from_secs(2),
            ttl: Duration::from_secs(9),
        };
        let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3), 7);
        Machine::new(settings, backoff, t0)
    }

    /// Feeds `event` and returns the actions, for the walk-throughs below.
    fn answer(m: &mut Machine, event: Event, now: Instant) -> Vec<Action> {
        m.step(event, now)
    }

    #[test]
    fn discover_wait_ready_register_keep_alive() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut m = machine(true, t0);
        assert_eq!(m.next(t0), Some(Action::Discover));
        answer(&mut m, Event::NotFound, t0);
        assert_eq!(
            m.state,
            State::Discovering {
                at: t0 + READINESS_POLL
            }
        );
        assert_eq!(m.next(t0 + ms(50)), None);
        assert_eq!(m.deadline(), t0 + READINESS_POLL);
        let t1 = t0 + READINESS_POLL;
        assert_eq!(m.next(t1), Some(Action::Discover));
        answer(&mut m, Event::Found, t1);
        assert_eq!(m.state, State::WaitingReady);
        // Not ready yet: probed every 100 ms, nothing registered.
        assert_eq!(m.next(t1), Some(Action::Probe));
        assert!(answer(&mut m, Event::CheckFailed, t1).is_empty());
        assert_eq!(m.deadline(), t1 + READINESS_POLL);
        assert!(answer(&mut m, Event::CheckFailed, t1 + READINESS_POLL).is_empty());
        assert_eq!(
            m.state,
            State::WaitingReady,
            "two failures before the first pass remove nothing"
        );
        let t2 = t1 + ms(300);
        assert_eq!(m.next(t2), Some(Action::Probe));
        answer(&mut m, Event::CheckPassed, t2);
        assert_eq!(m.state, State::Ready { at: t2 });
        // The check's own interval from now on; the put is due at once.
        assert_eq!(m.next(t2), Some(Action::Register(None)));
        assert_eq!(
            answer(&mut m, Event::Put(Lease::V3(5)), t2),
            [Action::Notify(true)]
        );
        assert_eq!(
            m.state,
            State::Registered {
                keepalive: t2 + Duration::from_secs(3)
            }
        );
        assert_eq!(
            m.deadline(),
            t2 + Duration::from_secs(2),
            "the next check comes first"
        );
        let t3 = t2 + Duration::from_secs(3);
        assert_eq!(m.next(t3), Some(Action::Probe));
        answer(&mut m, Event::CheckPassed, t3);
        assert_eq!(m.next(t3), Some(Action::Keepalive(Lease::V3(5))));
        assert!(answer(&mut m, Event::KeptAlive, t3).is_empty());
        assert_eq!(m.next(t3), None);
    }

    #[test]
    fn two_failures_remove_the_key_and_one_pass_brings_it_back() {
        let t0 = Instant::now();
        let mut m = machine(true, t0);
        answer(&mut m, Event::Found, t0);
        answer(&mut m, Event::CheckPassed, t0);
        answer(&mut m, Event::Put(Lease::V3(5)), t0);
        let s = Duration::from_secs;
        // One failure is tolerated.
        assert!(answer(&mut m, Event::CheckFailed, t0 + s(2)).is_empty());
        assert!(matches!(m.state, State::Registered { .. }));
        // The second removes the key (the supervisor told first).
        assert_eq!(
            answer(&mut m, Event::CheckFailed, t0 + s(4)),
            [Action::Notify(false), Action::Remove(Lease::V3(5))]
        );
        assert!(matches!(m.state, State::Unhealthy { .. }));
        assert_eq!(m.lease(), None);
        assert_eq!(
            m.next(t0 + s(5)),
            None,
            "no keepalive, no put while unhealthy"
        );
        // More failures: nothing more to remove.
        assert!(answer(&mut m, Event::CheckFailed, t0 + s(6)).is_empty());
        // One pass: registered again, under a new lease.
        answer(&mut m, Event::CheckPassed, t0 + s(8));
        assert!(m.healthy());
        assert_eq!(m.next(t0 + s(8)), Some(Action::Register(None)));
    }

    #[test]
    fn failed_puts_back_off_keeping_a_good_lease_and_a_lost_one_is_granted_again() {
        let t0 = Instant::now();
        let mut m = machine(false, t0);
        answer(&mut m, Event::Found, t0);
        assert_eq!(m.state, State::Ready { at: t0 }, "no check: ready at once");
        assert_eq!(m.next(t0), Some(Action::Register(None)));
        // The grant worked, the put did not: the lease is kept for the next try.
        answer(
            &mut m,
            Event::PutFailed {
                lease: Some(Lease::V3(8)),
            },
            t0,
        );
        let State::Ready { at: first } = m.state else {
            panic!("{:?}", m.state)
        };
        assert!(first > t0 && first <= t0 + Duration::from_millis(200));
        assert_eq!(m.next(t0), None, "backing off");
        assert_eq!(m.next(first), Some(Action::Register(Some(Lease::V3(8)))));
        // etcd said the lease is gone: granted anew next time, after a longer wait.
        answer(&mut m, Event::PutFailed { lease: None }, first);
        let State::Ready { at: second } = m.state else {
            panic!("{:?}", m.state)
        };
        assert!(second - first > Duration::from_millis(100));
        assert_eq!(m.next(second), Some(Action::Register(None)));
        answer(&mut m, Event::Put(Lease::V3(9)), second);
        // A keepalive that fails is tried again within a third of the TTL; a lease etcd lost
        // is forgotten, the supervisor told, and the key put again at once.
        let State::Registered { keepalive } = m.state else {
            panic!("{:?}", m.state)
        };
        answer(&mut m, Event::KeepaliveFailed, keepalive);
        let State::Registered { keepalive: retry } = m.state else {
            panic!("{:?}", m.state)
        };
        assert!(retry > keepalive && retry <= keepalive + Duration::from_secs(3));
        assert_eq!(
            answer(&mut m, Event::LeaseGone, retry),
            [Action::ForgetLease, Action::Notify(false)]
        );
        assert_eq!(m.next(retry), Some(Action::Register(None)));
        // v2: the lease is only a TTL; the same walk.
        answer(&mut m, Event::Put(Lease::V2), retry);
        assert_eq!(m.lease(), Some(Lease::V2));
        let State::Registered { keepalive } = m.state else {
            panic!("{:?}", m.state)
        };
        assert_eq!(m.next(keepalive), Some(Action::Keepalive(Lease::V2)));
    }

    #[test]
    fn answers_that_do_not_fit_the_state_change_nothing() {
        let t0 = Instant::now();
        let mut m = machine(true, t0);
        for e in [
            Event::Put(Lease::V3(1)),
            Event::KeptAlive,
            Event::LeaseGone,
            Event::Found,
        ] {
            let before = m.state.clone();
            if e == Event::Found {
                continue;
            }
            assert!(answer(&mut m, e, t0).is_empty());
            assert_eq!(m.state, before);
        }
    }
}
