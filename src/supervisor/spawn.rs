//! Starting the app: its own session and process group (or hecd-init's, with `--single-child`),
//! the terminal handed over when stdin is one, the signal state hecd-init inherited, and exec failures mapped to 126/127. Only the
//! supervisor calls this; nothing here waits for the child (reaping is `reap`'s job).

use std::ffi::OsString;
use std::fmt;
use std::process::Command;

use nix::errno::Errno;

use crate::exit as status;
use crate::sys::{self, InheritedSignals};

/// The command could not be started.
#[derive(Debug)]
pub struct SpawnError {
    program: OsString,
    errno: Errno,
}

impl SpawnError {
    /// 127 when the command does not exist, 126 when it exists but cannot be executed
    /// (the shell convention tini and dumb-init follow).
    pub fn status(&self) -> u8 {
        match self.errno {
            Errno::ENOENT | Errno::ENOTDIR => status::NOT_FOUND,
            _ => status::CANNOT_EXECUTE,
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot run {:?}: {}", self.program, self.errno.desc())
    }
}

/// What the terminal hand-off means for the signal loop.
#[derive(Debug, Default)]
pub struct TtyHandoff {
    /// The child should take stdin as its controlling terminal.
    pub take_tty: bool,
    /// Signals the kernel sent us for giving the terminal up, to drop once each (dumb-init #136:
    /// passing that SIGHUP on would hang the app up just after it starts).
    pub ignore_once: Vec<i32>,
}

/// Gives up hecd-init's controlling terminal, if stdin is one, so the app's session can own it
/// and run with working job control (`docker run -it ... bash`).
pub fn hand_off_tty() -> TtyHandoff {
    if !sys::stdin_is_tty() {
        return TtyHandoff::default();
    }
    let leader = nix::unistd::getsid(None).ok() == Some(nix::unistd::getpid());
    let released = sys::release_controlling_tty();
    log::debug!("stdin is a terminal: released={released}, session leader={leader}");
    TtyHandoff {
        take_tty: true,
        ignore_once: if released && leader {
            vec![libc::SIGHUP, libc::SIGCONT]
        } else {
            Vec::new()
        },
    }
}

/// Where the app runs: in a session of its own (the default, dumb-init's setsid mode), taking
/// the terminal when stdin is one; or in hecd-init's own session and process group
/// (`--single-child`, dumb-init's `-c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    New { take_tty: bool },
    Shared,
}

/// The app as it is to be started: its command line, the changes to its environment, and who
/// it runs as.
#[derive(Clone, Debug)]
pub struct App {
    /// The command and its arguments; never empty.
    pub command: Vec<OsString>,
    /// Variables to remove (`None`) or set for the app.
    pub env: Vec<(String, Option<String>)>,
    /// `--user`, resolved.
    pub identity: Option<sys::Identity>,
    /// `--no-new-privileges`.
    pub no_new_privileges: bool,
}

/// Starts the app and returns its pid (with [`Session::New`] also its process group and
/// session id).
pub fn spawn(app: &App, inherited: &InheritedSignals, session: Session) -> Result<i32, SpawnError> {
    let program = app.command.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&program);
    cmd.args(app.command.iter().skip(1));
    for (name, value) in &app.env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let (new_session, take_tty) = match session {
        Session::New { take_tty } => (true, take_tty),
        Session::Shared => (false, false),
    };
    sys::prepare_child(
        &mut cmd,
        sys::ChildSetup {
            new_session,
            take_tty,
            mask: inherited.mask(),
            ignored: inherited.ignored().to_vec(),
            identity: app.identity.clone(),
            no_new_privileges: app.no_new_privileges,
        },
    );
    let child = cmd.spawn().map_err(|e| SpawnError {
        program: program.clone(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    // The Child handle is dropped without waiting: the supervisor reaps with waitpid(-1).
    i32::try_from(child.id()).map_err(|_| SpawnError {
        program,
        errno: Errno::EOVERFLOW,
    })
}
