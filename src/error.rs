//! The errors that end hecd-init (or hecd-haproxy) before the app or HAProxy runs; the exit
//! statuses are [`crate::exit`]'s. `Display` of each error is the one line the user sees after
//! `hecd-init: `; nothing here prints or exits.

use std::fmt;

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

/// Collects every usage error instead of stopping at the first.
#[derive(Default)]
pub struct Errors(pub Vec<UsageError>);

impl Errors {
    pub fn take<T>(&mut self, result: Result<T, UsageError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }

    /// The errors, when a section came out empty: never an empty list (a section is empty
    /// only because of an error it reported; should that ever not hold, the user still
    /// learns that the options were refused).
    pub fn into_errors(mut self) -> Vec<UsageError> {
        if self.0.is_empty() {
            self.0.push(UsageError::new(
                "options",
                "refused without a reason (a bug: please report it)",
            ));
        }
        self.0
    }
}

/// At most `max` characters of `text` (with `…` when cut), for messages that quote what a peer
/// or a user sent.
pub fn clip(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
