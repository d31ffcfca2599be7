//! The shutdown sequence as a pure state machine: `(phase, event) → actions`. It decides the
//! order SPEC's "Lifecycle" demands (deregister, drain, pass the stop signal on, wait, clean up
//! the group, exit) and the deadlines of each step. It never performs I/O, sends signals or reads
//! the clock: the supervisor feeds it events with the current time and carries out its actions,
//! so every ordering guarantee is unit-tested here without a process.

use std::time::{Duration, Instant};

use crate::sys::Ended;

/// The fixed knobs of the sequence, taken from the validated config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A registrar is running (`--etcd` given), so stops deregister first.
    pub registering: bool,
    /// `--drain`: wait after deregistering before passing the stop signal on.
    pub drain: Duration,
    /// `--stop-timeout`: SIGKILL the app this long after passing the stop signal on.
    pub stop_timeout: Option<Duration>,
    /// `--single-child`: leave the app's process group alone when the app exits.
    pub single_child: bool,
    /// Longest wait for the registrar to delete the key and revoke the lease.
    pub deregister_bound: Duration,
    /// After the app exits: how long its leftover group gets between SIGTERM and SIGKILL, and
    /// again between SIGKILL and giving up on processes that do not die (stuck in D state).
    pub group_grace: Duration,
}

/// Where the supervisor is in the app's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The app runs; `registered` mirrors the registrar's last news.
    Running { registered: bool },
    /// A stop signal arrived; the key is being deleted (at most until `until`). `registered`
    /// is what the last news said, used only if the registrar does not answer in time;
    /// `hurry` is set by a second stop signal.
    Deregistering {
        signal: i32,
        registered: bool,
        hurry: bool,
        until: Instant,
    },
    /// The key is gone; load balancers are given `--drain` to stop sending traffic.
    Draining { signal: i32, until: Instant },
    /// The stop signal was passed on; waiting for the app (SIGKILL at `kill_at`).
    Stopping { kill_at: Option<Instant> },
    /// The app has exited; deregistering and clearing out its process group.
    Exiting {
        status: Ended,
        deregistered: bool,
        deregister_until: Instant,
        group_empty: bool,
        group_deadline: Instant,
        group_killed: bool,
    },
    /// Nothing left to do: exit with the app's status.
    Done(Ended),
}

/// What happened, as the supervisor saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM or SIGINT arrived (the number received, before any rewrite).
    StopSignal(i32),
    /// The app's direct child was reaped.
    AppExited(Ended),
    /// No process of the app's group is left (checked after the app exited).
    GroupEmpty,
    /// The registrar reports the key as present (true) or absent (false).
    Registration(bool),
    /// The registrar finished deleting the key and revoking the lease (or gave up); true
    /// when there was a key to delete, so load balancers may still be sending traffic.
    Deregistered(bool),
    /// Every load balancer registered at the delete has confirmed that the backend is out of
    /// rotation and idle: the drain can end now.
    DrainConfirmed,
    /// Time passed; deadlines at or before `now` are due.
    Tick,
}

/// What the supervisor must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask the registrar to delete the key and revoke the lease, within the given deadline.
    Deregister(Instant),
    /// Pass this received stop signal on to the app (the supervisor applies `--rewrite`).
    PassOn(i32),
    /// `--stop-timeout` elapsed: SIGKILL the app.
    KillApp,
    /// The app exited: SIGTERM what is left of its process group.
    TermGroup,
    /// The leftover group outlived its grace: SIGKILL it.
    KillGroup,
}

/// The starting phase.
pub fn start() -> Phase {
    Phase::Running { registered: false }
}

/// The earliest deadline of a phase, so the supervisor can sleep exactly until then.
pub fn deadline(phase: &Phase) -> Option<Instant> {
    match phase {
        Phase::Running { .. } | Phase::Done(_) => None,
        Phase::Deregistering { until, .. } | Phase::Draining { until, .. } => Some(*until),
        Phase::Stopping { kill_at } => *kill_at,
        Phase::Exiting {
            deregistered,
            deregister_until,
            group_empty,
            group_deadline,
            ..
        } => {
            let d = (!deregistered).then_some(*deregister_until);
            let g = (!group_empty).then_some(*group_deadline);
            d.into_iter().chain(g).min()
        }
    }
}

/// Advances the machine by one event at time `now`, returning the actions to run in order.
pub fn step(phase: &mut Phase, event: Event, now: Instant, s: &Settings) -> Vec<Action> {
    let mut actions = Vec::new();
    let next = match (phase.clone(), event) {
        (Phase::Running { .. }, Event::Registration(registered)) => Phase::Running { registered },
        (Phase::Running { registered }, Event::StopSignal(signal)) => {
            on_stop_signal(registered, signal, now, s, &mut actions)
        }
        (Phase::Running { .. }, Event::AppExited(status)) => {
            on_app_exit(status, s.registering, now, s, &mut actions)
        }
        (
            Phase::Deregistering {
                signal,
                registered,
                until,
                ..
            },
            Event::StopSignal(_),
        ) => {
            // A second stop signal: no drain once the key is gone.
            Phase::Deregistering {
                signal,
                registered,
                hurry: true,
                until,
            }
        }
        (
            Phase::Deregistering {
                signal,
                registered,
                hurry,
                until,
            },
            ev,
        ) if matches!(ev, Event::Deregistered(_)) || (ev == Event::Tick && now >= until) => {
            // The registrar's answer says whether there was a key; without one (it hung),
            // the last news decides.
            let had_key = match ev {
                Event::Deregistered(had_key) => had_key,
                _ => registered,
            };
            if had_key && !hurry && !s.drain.is_zero() {
                Phase::Draining {
                    signal,
                    until: now + s.drain,
                }
            } else {
                pass_on(signal, now, s, &mut actions)
            }
        }
        (Phase::Deregistering { .. }, Event::AppExited(status)) => {
            on_app_exit(status, true, now, s, &mut actions)
        }
        // A second stop signal, or the load balancers' confirmations, end the drain early.
        (Phase::Draining { signal, .. }, Event::StopSignal(_) | Event::DrainConfirmed) => {
            pass_on(signal, now, s, &mut actions)
        }
        (Phase::Draining { signal, until }, Event::Tick) if now >= until => {
            pass_on(signal, now, s, &mut actions)
        }
        (Phase::Draining { .. } | Phase::Stopping { .. }, Event::AppExited(status)) => {
            on_app_exit(status, false, now, s, &mut actions)
        }
        (Phase::Stopping { kill_at }, Event::StopSignal(signal)) => {
            // Repeated stop signals keep being passed on, as under tini and dumb-init.
            actions.push(Action::PassOn(signal));
            Phase::Stopping { kill_at }
        }
        (Phase::Stopping { kill_at: Some(at) }, Event::Tick) if now >= at => {
            actions.push(Action::KillApp);
            Phase::Stopping { kill_at: None }
        }
        (Phase::Exiting { .. }, ev) => on_exiting(phase, ev, now, s, &mut actions),
        (unchanged, _) => unchanged,
    };
    *phase = finish(next);
    actions
}

fn on_stop_signal(
    registered: bool,
    signal: i32,
    now: Instant,
    s: &Settings,
    actions: &mut Vec<Action>,
) -> Phase {
    if !s.registering {
        return pass_on(signal, now, s, actions);
    }
    let until = now + s.deregister_bound;
    actions.push(Action::Deregister(until));
    Phase::Deregistering {
        signal,
        registered,
        hurry: false,
        until,
    }
}

fn pass_on(signal: i32, now: Instant, s: &Settings, actions: &mut Vec<Action>) -> Phase {
    actions.push(Action::PassOn(signal));
    Phase::Stopping {
        kill_at: s.stop_timeout.map(|t| now + t),
    }
}

fn on_app_exit(
    status: Ended,
    must_deregister: bool,
    now: Instant,
    s: &Settings,
    actions: &mut Vec<Action>,
) -> Phase {
    // The registrar may already be deleting the key (stop during Deregistering): asking again
    // is harmless, and the deadline below bounds the wait either way.
    let deregister_until = now + s.deregister_bound;
    if must_deregister {
        actions.push(Action::Deregister(deregister_until));
    }
    if !s.single_child {
        actions.push(Action::TermGroup);
    }
    Phase::Exiting {
        status,
        deregistered: !must_deregister,
        deregister_until,
        group_empty: s.single_child,
        group_deadline: now + s.group_grace,
        group_killed: false,
    }
}

fn on_exiting(
    phase: &Phase,
    event: Event,
    now: Instant,
    s: &Settings,
    actions: &mut Vec<Action>,
) -> Phase {
    let Phase::Exiting {
        status,
        mut deregistered,
        deregister_until,
        mut group_empty,
        mut group_deadline,
        mut group_killed,
    } = phase.clone()
    else {
        return phase.clone();
    };
    match event {
        Event::Deregistered(_) => deregistered = true,
        Event::GroupEmpty => group_empty = true,
        Event::Tick => {
            if now >= deregister_until {
                deregistered = true;
            }
            if !group_empty && now >= group_deadline {
                if group_killed {
                    // SIGKILL did not empty the group (uninterruptible sleep): stop waiting.
                    group_empty = true;
                } else {
                    actions.push(Action::KillGroup);
                    group_killed = true;
                    group_deadline = now + s.group_grace;
                }
            }
        }
        _ => {}
    }
    Phase::Exiting {
        status,
        deregistered,
        deregister_until,
        group_empty,
        group_deadline,
        group_killed,
    }
}

/// Collapses a finished exit into `Done`.
fn finish(phase: Phase) -> Phase {
    match phase {
        Phase::Exiting {
            status,
            deregistered: true,
            group_empty: true,
            ..
        } => Phase::Done(status),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: i32 = 15;
    const INT: i32 = 2;

    fn settings(registering: bool) -> Settings {
        Settings {
            registering,
            drain: Duration::from_secs(2),
            stop_timeout: Some(Duration::from_secs(10)),
            single_child: false,
            deregister_bound: Duration::from_secs(2),
            group_grace: Duration::from_secs(2),
        }
    }

    /// Feeds `(seconds after t0, event)` pairs and records every action with its time.
    fn run(s: &Settings, phase: &mut Phase, script: &[(u64, Event)]) -> Vec<(u64, Action)> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (at, ev) in script {
            for a in step(phase, *ev, t0 + Duration::from_secs(*at), s) {
                out.push((*at, a));
            }
        }
        out
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn pure_init_passes_the_stop_signal_on_at_once() {
        let s = settings(false);
        let mut p = start();
        let acts = run(&s, &mut p, &[(0, Event::StopSignal(TERM))]);
        assert_eq!(acts, [(0, Action::PassOn(TERM))]);
        assert!(matches!(p, Phase::Stopping { kill_at: Some(_) }));
    }

    #[test]
    fn registered_stop_deregisters_then_drains_then_passes_on() {
        let s = settings(true);
        let mut p = start();
        let t0 = Instant::now();
        let mut acts = Vec::new();
        acts.extend(step(&mut p, Event::Registration(true), t0, &s));
        acts.extend(step(&mut p, Event::StopSignal(TERM), t0, &s));
        assert_eq!(
            acts,
            [Action::Deregister(at(t0, 2))],
            "nothing is passed on before the key is gone"
        );
        // Deregistered after 1 s: drain starts then, 2 s long.
        assert_eq!(step(&mut p, Event::Deregistered(true), at(t0, 1), &s), []);
        assert_eq!(deadline(&p), Some(at(t0, 3)));
        assert_eq!(
            step(&mut p, Event::Tick, at(t0, 2), &s),
            [],
            "drain not over yet"
        );
        assert_eq!(
            step(&mut p, Event::Tick, at(t0, 3), &s),
            [Action::PassOn(TERM)]
        );
        assert_eq!(
            p,
            Phase::Stopping {
                kill_at: Some(at(t0, 13))
            }
        );
        assert_eq!(step(&mut p, Event::Tick, at(t0, 13), &s), [Action::KillApp]);
        assert_eq!(
            step(&mut p, Event::AppExited(Ended::Signaled(9)), at(t0, 13), &s),
            [Action::TermGroup]
        );
        assert_eq!(step(&mut p, Event::GroupEmpty, at(t0, 13), &s), []);
        assert_eq!(p, Phase::Done(Ended::Signaled(9)));
    }

    #[test]
    fn unregistered_stop_skips_the_drain() {
        let s = settings(true);
        let mut p = start();
        let acts = run(
            &s,
            &mut p,
            &[
                (0, Event::StopSignal(TERM)),
                (0, Event::Deregistered(false)),
            ],
        );
        assert_eq!(
            acts.iter()
                .map(|(_, a)| *a)
                .filter(|a| *a == Action::PassOn(TERM))
                .count(),
            1
        );
        assert!(matches!(p, Phase::Stopping { .. }));
    }

    #[test]
    fn the_registrars_answer_decides_the_drain() {
        // The stop came before the news of the registration: the registrar knows better.
        let s = settings(true);
        let mut p = Phase::Running { registered: false };
        let t0 = Instant::now();
        step(&mut p, Event::StopSignal(TERM), t0, &s);
        assert_eq!(step(&mut p, Event::Deregistered(true), t0, &s), []);
        assert!(matches!(p, Phase::Draining { .. }));
        // And the other way round: news said registered, but the key was already gone.
        let mut p = Phase::Running { registered: true };
        step(&mut p, Event::StopSignal(TERM), t0, &s);
        assert_eq!(
            step(&mut p, Event::Deregistered(false), t0, &s),
            [Action::PassOn(TERM)]
        );
    }

    #[test]
    fn hung_deregistration_is_bounded() {
        let s = settings(true);
        let mut p = Phase::Running { registered: true };
        let t0 = Instant::now();
        step(&mut p, Event::StopSignal(TERM), t0, &s);
        assert_eq!(step(&mut p, Event::Tick, at(t0, 1), &s), []);
        // The bound passes with no answer: drain as if deregistered, then pass on.
        assert_eq!(step(&mut p, Event::Tick, at(t0, 2), &s), []);
        assert!(matches!(p, Phase::Draining { .. }));
        assert_eq!(
            step(&mut p, Event::Tick, at(t0, 4), &s),
            [Action::PassOn(TERM)]
        );
    }

    #[test]
    fn second_stop_signal_cuts_the_drain_short() {
        let s = settings(true);
        let mut p = Phase::Running { registered: true };
        let t0 = Instant::now();
        step(&mut p, Event::StopSignal(TERM), t0, &s);
        step(&mut p, Event::Deregistered(true), t0, &s);
        assert!(matches!(p, Phase::Draining { .. }));
        assert_eq!(
            step(&mut p, Event::StopSignal(INT), at(t0, 1), &s),
            [Action::PassOn(TERM)]
        );
        // And a second one during deregistration means no drain at all.
        let mut p = Phase::Running { registered: true };
        step(&mut p, Event::StopSignal(TERM), t0, &s);
        assert_eq!(step(&mut p, Event::StopSignal(TERM), t0, &s), []);
        assert_eq!(
            step(&mut p, Event::Deregistered(true), t0, &s),
            [Action::PassOn(TERM)]
        );
    }

    #[test]
    fn confirmations_end_the_drain_and_count_nowhere_else() {
        let s = settings(true);
        let t0 = Instant::now();
        let mut p = Phase::Running { registered: true };
        assert_eq!(step(&mut p, Event::DrainConfirmed, t0, &s), []);
        step(&mut p, Event::StopSignal(TERM), t0, &s);
        // Before the key is gone, a confirmation means nothing.
        assert_eq!(step(&mut p, Event::DrainConfirmed, t0, &s), []);
        assert!(matches!(p, Phase::Deregistering { .. }));
        step(&mut p, Event::Deregistered(true), t0, &s);
        assert_eq!(
            step(&mut p, Event::DrainConfirmed, at(t0, 1), &s),
            [Action::PassOn(TERM)]
        );
        assert!(matches!(p, Phase::Stopping { .. }));
        assert_eq!(step(&mut p, Event::DrainConfirmed, at(t0, 1), &s), []);
    }

    #[test]
    fn repeated_stop_signals_keep_being_passed_on() {
        let s = settings(false);
        let mut p = start();
        let acts = run(
            &s,
            &mut p,
            &[(0, Event::StopSignal(TERM)), (1, Event::StopSignal(INT))],
        );
        assert_eq!(acts, [(0, Action::PassOn(TERM)), (1, Action::PassOn(INT))]);
    }

    #[test]
    fn app_exit_deregisters_and_clears_the_group() {
        let s = settings(true);
        let mut p = Phase::Running { registered: true };
        let t0 = Instant::now();
        let acts = step(&mut p, Event::AppExited(Ended::Exited(3)), t0, &s);
        assert_eq!(acts, [Action::Deregister(at(t0, 2)), Action::TermGroup]);
        assert_eq!(step(&mut p, Event::GroupEmpty, t0, &s), []);
        assert!(matches!(p, Phase::Exiting { .. }), "still deregistering");
        assert_eq!(step(&mut p, Event::Deregistered(true), t0, &s), []);
        assert_eq!(p, Phase::Done(Ended::Exited(3)));
    }

    #[test]
    fn leftover_group_gets_sigkill_after_the_grace_then_is_given_up() {
        let s = settings(false);
        let mut p = start();
        let t0 = Instant::now();
        assert_eq!(
            step(&mut p, Event::AppExited(Ended::Exited(0)), t0, &s),
            [Action::TermGroup]
        );
        assert_eq!(deadline(&p), Some(at(t0, 2)));
        assert_eq!(step(&mut p, Event::Tick, at(t0, 1), &s), []);
        assert_eq!(
            step(&mut p, Event::Tick, at(t0, 2), &s),
            [Action::KillGroup]
        );
        assert_eq!(step(&mut p, Event::Tick, at(t0, 3), &s), []);
        // Processes SIGKILL cannot end (uninterruptible sleep) do not keep hecd-init forever.
        assert_eq!(step(&mut p, Event::Tick, at(t0, 4), &s), []);
        assert_eq!(p, Phase::Done(Ended::Exited(0)));
    }

    #[test]
    fn single_child_exit_is_immediate() {
        let s = Settings {
            single_child: true,
            ..settings(false)
        };
        let mut p = start();
        assert_eq!(
            step(
                &mut p,
                Event::AppExited(Ended::Exited(5)),
                Instant::now(),
                &s
            ),
            []
        );
        assert_eq!(p, Phase::Done(Ended::Exited(5)));
    }

    #[test]
    fn app_exit_during_drain_ends_without_passing_on() {
        let s = settings(true);
        let mut p = Phase::Running { registered: true };
        let t0 = Instant::now();
        step(&mut p, Event::StopSignal(TERM), t0, &s);
        step(&mut p, Event::Deregistered(true), t0, &s);
        let acts = step(&mut p, Event::AppExited(Ended::Exited(0)), at(t0, 1), &s);
        assert_eq!(
            acts,
            [Action::TermGroup],
            "already deregistered: no second delete"
        );
        step(&mut p, Event::GroupEmpty, at(t0, 1), &s);
        assert_eq!(p, Phase::Done(Ended::Exited(0)));
    }

    #[test]
    fn no_deadline_while_running() {
        assert_eq!(deadline(&start()), None);
    }
}
