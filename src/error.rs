//! Exit statuses and the errors that end hecd-init before the app runs. `Display` of each error
//! is the one line the user sees after `hecd-init: `; nothing here prints or exits.

use std::fmt;

/// hecd-init's exit statuses, the only ones it uses (README "Exit status"):
///
/// - the app's own exit code when it exits;
/// - `128 + N` when the app was killed by signal N (the shell convention);
/// - [`CANNOT_EXECUTE`] (126) when the command exists but cannot be executed;
/// - [`NOT_FOUND`] (127) when the command does not exist;
/// - [`USAGE`] (2) for a bad option, value or missing command;
/// - [`INTERNAL`] (1) for a failure of hecd-init itself before the app was started (or, should
///   it ever happen, a bug that ends the supervisor).
pub mod status {
    /// Bad command line or `HECD_*` variable.
    pub const USAGE: u8 = 2;
    /// hecd-init could not set itself up (signalfd, signal mask) before spawning.
    pub const INTERNAL: u8 = 1;
    /// The command was found but could not be executed (permissions, not a binary, …).
    pub const CANNOT_EXECUTE: u8 = 126;
    /// The command was not found.
    pub const NOT_FOUND: u8 = 127;
    /// Added to a signal number when the app died of that signal.
    pub const SIGNAL_BASE: u8 = 128;
}

/// A bad option or variable: names where the value came from and the form expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError {
    /// `--ttl`, `HECD_TTL`, or a word such as `COMMAND`.
    pub source: String,
    /// What was wrong, e.g. `expected a duration such as 10s, got "ten"`.
    pub message: String,
}

impl UsageError {
    /// An error about `source` (an option, a variable, or `COMMAND`).
    pub fn new(source: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

impl std::error::Error for UsageError {}

/// At most `max` characters of `text` (with `…` when cut), for messages that quote what a peer
/// or a user sent.
pub fn clip(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
