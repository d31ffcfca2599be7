//! The supervisor: owns the app from spawn to exit. One thread blocks on a signalfd until a
//! signal arrives or the nearest lifecycle deadline passes (no fixed tick), turns what it reads
//! into lifecycle events, and carries out the actions `lifecycle::step` returns. It is the only
//! code of hecd-init that spawns or waits for processes, and it never does network I/O:
//! registration news reaches it as events on a pipe it polls, so nothing slow can sit between a
//! signal and its forwarding.

pub mod reap;
pub mod signals;
pub mod spawn;

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::Config;
use crate::exit as status;
use crate::lifecycle::{self, Action, Event, Phase, Settings};
use crate::registrar::{self, News, Plan};
use crate::signal;
use crate::sys::{self, InheritedSignals};
use signals::{Forwarder, Meaning};

/// How long the app's leftover process group gets between SIGTERM and SIGKILL after the app
/// has exited (and again after SIGKILL before hecd-init stops waiting).
pub const GROUP_GRACE: Duration = Duration::from_secs(2);

/// Longest wait for deregistration (key delete and lease revoke) on a stop or exit.
pub const DEREGISTER_BOUND: Duration = Duration::from_secs(2);

struct Supervisor {
    signals: SignalFd,
    forwarder: Forwarder,
    settings: Settings,
    phase: Phase,
    /// TTY hand-off signals still to be dropped once each.
    ignore_once: Vec<i32>,
    /// The registration thread, while it runs.
    registrar: Option<registrar::Handle>,
    /// Events made by carrying out actions, handled before waiting again.
    pending: VecDeque<Event>,
    /// hecd-init's own pid (1 in a container), to tell signals it raised on itself.
    own_pid: u32,
    /// The key is deleted: the registrar's thread ends after the drain's confirmations.
    deregistered: bool,
    /// The drain in progress, if any.
    drain: Option<Drain>,
}

/// A drain, and what the load balancers have said so far.
struct Drain {
    since: Instant,
    /// (confirmed ids, silent ids); `None` while none has been heard of (a fixed drain).
    said: Option<(Vec<String>, Vec<String>)>,
}

/// Runs the app under supervision and returns hecd-init's exit status.
pub fn run(
    config: Config,
    inherited: &InheritedSignals,
    plan: Option<Plan>,
    identity: Option<sys::Identity>,
) -> u8 {
    let signals = match setup_signals() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot set up signal handling: {e}");
            return status::FAILED;
        }
    };
    if std::process::id() != 1 {
        // As PID 1 the kernel already re-parents orphans to us; otherwise ask for them.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            log::warn!(
                "cannot become a child subreaper ({e}); orphans of the app will not be reaped here"
            );
        }
    }
    // --single-child keeps the app in our session, terminal and all (dumb-init -c).
    let tty = if config.single_child {
        spawn::TtyHandoff::default()
    } else {
        spawn::hand_off_tty()
    };
    let session = if config.single_child {
        spawn::Session::Shared
    } else {
        spawn::Session::New {
            take_tty: tty.take_tty,
        }
    };
    let app = spawn::App {
        command: config.command.clone(),
        env: config.app_env.clone(),
        identity,
        no_new_privileges: config.no_new_privileges,
    };
    let pid = match spawn::spawn(&app, inherited, session) {
        Ok(pid) => pid,
        Err(e) => {
            log::error!("{e}");
            return e.status();
        }
    };
    log::info!(
        "started {:?} as pid {pid}",
        config.command.join(std::ffi::OsStr::new(" "))
    );
    // Hold no directory busy: the app keeps the working directory it was started in.
    if let Err(e) = nix::unistd::chdir("/") {
        log::debug!("cannot change directory to /: {e}");
    }
    // Started after the app, so nothing network-related delays it; after the signal mask,
    // so the thread inherits it and every signal still comes to the signalfd.
    let registrar = plan.and_then(|plan| match registrar::start(plan, pid, config.drain) {
        Ok(handle) => Some(handle),
        Err(e) => {
            log::error!("cannot start the registrar thread ({e}); running as a plain init");
            None
        }
    });
    let mut sup = Supervisor {
        signals,
        forwarder: Forwarder {
            pid,
            single_child: config.single_child,
            rewrites: config.rewrites,
        },
        settings: Settings {
            registering: registrar.is_some(),
            drain: config.drain,
            stop_timeout: config.stop_timeout,
            single_child: config.single_child,
            deregister_bound: DEREGISTER_BOUND,
            group_grace: GROUP_GRACE,
        },
        phase: lifecycle::start(),
        ignore_once: tty.ignore_once,
        registrar,
        pending: VecDeque::new(),
        own_pid: std::process::id(),
        deregistered: false,
        drain: None,
    };
    sup.run_loop()
}

/// Blocks every signal number and opens the signalfd that reads them, 32 to 34 included (see
/// `sys::block_all_signals`). Must run before any thread starts so every thread inherits the
/// mask.
fn setup_signals() -> std::io::Result<SignalFd> {
    sys::make_sigchld_default()?;
    sys::block_all_signals()?;
    let fd = SignalFd::with_flags(
        &SigSet::all(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?;
    sys::signalfd_read_all(fd.as_fd())?;
    Ok(fd)
}

impl Supervisor {
    fn run_loop(&mut self) -> u8 {
        loop {
            self.wait(lifecycle::deadline(&self.phase));
            // News first: a stop signal must see a registration that happened before it.
            for event in self.read_news() {
                self.apply(event);
            }
            for event in self.read_signals() {
                self.apply(event);
            }
            while let Some(event) = self.pending.pop_front() {
                self.apply(event);
            }
            if matches!(
                self.phase,
                Phase::Exiting {
                    group_empty: false,
                    ..
                }
            ) && !self.group_alive()
            {
                self.apply(Event::GroupEmpty);
            }
            self.apply(Event::Tick);
            if let Phase::Done(ended) = self.phase {
                return reap::exit_status(ended);
            }
        }
    }

    /// Sleeps until the signalfd is readable or `deadline` passes.
    fn wait(&self, deadline: Option<Instant>) {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so we never wake a hair before the deadline and spin.
                let ms = left
                    .as_millis()
                    .saturating_add(u128::from(left.subsec_nanos() % 1_000_000 != 0));
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(r) = &self.registrar {
            fds.push(PollFd::new(r.wake_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, timeout) {
            // EINTR cannot happen with every signal blocked, but would only mean "look again".
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => log::warn!("poll failed: {e}"),
        }
    }

    /// Reads every pending signal, forwarding or reaping at once, and returns the lifecycle
    /// events they make, in arrival order.
    fn read_signals(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let info = match self.signals.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("reading the signalfd failed: {e}");
                    break;
                }
            };
            let sig = info.ssi_signo as i32;

            if let Some(i) = self.ignore_once.iter().position(|s| *s == sig) {
                self.ignore_once.remove(i);
                log::debug!(
                    "dropping SIG{} from the terminal hand-off",
                    signal::name(sig)
                );
                continue;
            }
            if signals::raised_by_self(&info, self.own_pid) {
                // A SIGPIPE from a write of our own (stderr's reader gone), or any other
                // signal hecd-init raised on itself (checked after the hand-off signals, which
                // the kernel also sends in our name): not the app's business. Not logged
                // either, since a log line could raise the next one.
                continue;
            }
            log::debug!("received SIG{}", signal::name(sig));
            match signals::meaning(sig) {
                Meaning::Reap => {
                    if let Some(ended) = reap::reap_all(self.forwarder.pid) {
                        events.push(Event::AppExited(ended));
                    }
                }
                Meaning::Stop => events.push(Event::StopSignal(sig)),
                Meaning::Suspend => {
                    self.forwarder.forward(sig);
                    // Job control as in dumb-init: stop ourselves too, so the shell that
                    // started us sees the job as stopped; SIGCONT resumes and is passed on.
                    if let Err(e) = sys::stop_self() {
                        log::warn!("cannot stop on SIG{}: {e}", signal::name(sig));
                    }
                }
                Meaning::Forward => self.forwarder.forward(sig),
            }
        }
        events
    }

    /// Turns the registrar's news into lifecycle events; notices when it has ended.
    fn read_news(&mut self) -> Vec<Event> {
        let Some(r) = &self.registrar else {
            return Vec::new();
        };
        let (news, alive) = r.take_news();
        let mut events = Vec::new();
        for n in news {
            match n {
                News::Registered(present) => events.push(Event::Registration(present)),
                News::Deregistered(had_key) => {
                    self.deregistered = true;
                    events.push(Event::Deregistered(had_key));
                }
                News::RegistrarFailed => log::error!(
                    "the registrar stopped by a bug; no more registration (a stop still deregisters)"
                ),
                News::DrainWaiting { confirmed, silent } => {
                    if let Some(drain) = &mut self.drain {
                        drain.said = Some((confirmed, silent));
                    }
                }
                News::DrainConfirmed {
                    confirmed,
                    of,
                    gone,
                } => {
                    if self.is_draining()
                        && let Some(Drain { since, .. }) = &self.drain
                    {
                        let gone = if gone.is_empty() {
                            String::new()
                        } else {
                            format!("; gone: {}", gone.join(", "))
                        };
                        log::info!(
                            "drained in {}ms ({confirmed} of {of} load balancers confirmed{gone})",
                            since.elapsed().as_millis()
                        );
                    }
                    events.push(Event::DrainConfirmed);
                }
            }
        }
        if !alive {
            if !self.deregistered {
                log::error!("the registrar stopped unexpectedly; continuing as a plain init");
                events.push(Event::Deregistered(false));
            }
            // After the key is gone, the threads end once the drain's confirmations are in
            // (or its bound passed): nothing more will come.
            self.registrar = None;
        }
        events
    }

    fn is_draining(&self) -> bool {
        matches!(self.phase, Phase::Draining { .. })
    }

    fn apply(&mut self, event: Event) {
        let was_draining = self.is_draining();
        for action in lifecycle::step(&mut self.phase, event, Instant::now(), &self.settings) {
            if was_draining && action_is_pass_on(action) && event == Event::Tick {
                self.log_drain_bound();
            }
            self.perform(action);
        }
        if let Phase::Draining { signal, .. } = self.phase
            && !was_draining
        {
            self.drain = Some(Drain {
                since: Instant::now(),
                said: None,
            });
            log::info!(
                "draining for {}ms at most before passing SIG{} on",
                self.settings.drain.as_millis(),
                signal::name(self.forwarder.rewrites.map(signal))
            );
        }
    }

    /// The drain ran its full length: say what the load balancers did, if any announced.
    fn log_drain_bound(&self) {
        let Some(Drain {
            since,
            said: Some((confirmed, silent)),
        }) = &self.drain
        else {
            return;
        };
        let of = confirmed.len() + silent.len();
        log::warn!(
            "drain bound reached after {}ms ({} of {of} confirmed: {} silent)",
            since.elapsed().as_millis(),
            confirmed.len(),
            silent.join(", ")
        );
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::PassOn(sig) => {
                log::info!(
                    "passing SIG{} on to the app",
                    signal::name(self.forwarder.rewrites.map(sig))
                );
                self.forwarder.forward(sig);
            }
            Action::KillApp => {
                log::warn!("app still running after --stop-timeout; sending SIGKILL");
                self.forwarder.kill_app();
            }
            Action::TermGroup => self.signal_leftovers(libc::SIGTERM),
            Action::KillGroup => self.signal_leftovers(libc::SIGKILL),
            Action::Deregister(deadline) => {
                let asked = self
                    .registrar
                    .as_ref()
                    .is_some_and(|r| r.deregister(deadline));
                if !asked {
                    // No registrar (any more): nothing is registered, so nothing to wait for.
                    self.pending.push_back(Event::Deregistered(false));
                }
            }
        }
    }

    fn signal_leftovers(&self, sig: i32) {
        match self.forwarder.signal_group(sig) {
            Ok(true) => log::debug!(
                "sent SIG{} to what is left of process group {}",
                signal::name(sig),
                self.forwarder.pid
            ),
            // ESRCH: nothing is left of the group.
            Ok(false) => {}
            Err(e) => log::warn!("cannot signal process group {}: {e}", self.forwarder.pid),
        }
    }

    fn group_alive(&self) -> bool {
        match sys::group_exists(self.forwarder.pid) {
            Ok(alive) => alive,
            Err(e) => {
                log::warn!("cannot check process group {}: {e}", self.forwarder.pid);
                false
            }
        }
    }
}

fn action_is_pass_on(action: Action) -> bool {
    matches!(action, Action::PassOn(_))
}
