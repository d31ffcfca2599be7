//! The exit statuses of both programs: one table (README "Exit status", docs/HAPROXY.md
//! "Signals and exit status" say the same, and a test holds them to it).
//!
//! | status | hecd-init | hecd-haproxy |
//! |---|---|---|
//! | [`OK`] (0) | the app exited 0 (otherwise: the app's own code) | stopped by SIGTERM or SIGINT |
//! | [`FAILED`] (1) | could not set itself up before starting the app (or a bug ended the supervisor) | could not set HAProxy up or start it, or its master ended by itself 5 times within a minute |
//! | [`USAGE`] (2) | a bad option, value, variable or file, or no command | a bad option, value, variable or file |
//! | [`CANNOT_EXECUTE`] (126) | the command exists but cannot be executed | |
//! | [`NOT_FOUND`] (127) | the command does not exist | |
//! | [`SIGNAL_BASE`] + N | the app was killed by signal N | |

/// Everything went as asked.
pub const OK: u8 = 0;
/// The program itself failed (set-up, or what it supervises beyond repair).
pub const FAILED: u8 = 1;
/// Bad command line, `HECD_*` variable, or file an option names.
pub const USAGE: u8 = 2;
/// The command was found but could not be executed (permissions, not a program, …).
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;
/// Added to a signal number when the app died of that signal (the shell's convention).
pub const SIGNAL_BASE: u8 = 128;

#[cfg(test)]
mod tests {
    use super::*;

    /// The exit-status tables of the docs have a row for each status of this one.
    #[test]
    fn the_docs_tables_have_every_status() {
        let readme = include_str!("../README.md");
        let table = readme
            .split_once("## Exit status")
            .and_then(|(_, rest)| rest.split_once("\n## "))
            .map(|(t, _)| t)
            .expect("README's Exit status section");
        for row in [
            format!("| {CANNOT_EXECUTE} |"),
            format!("| {NOT_FOUND} |"),
            format!("| {USAGE} |"),
            format!("| {FAILED} |"),
            format!("| {SIGNAL_BASE} + N |"),
        ] {
            assert!(table.contains(&row), "README's exit statuses lack {row}");
        }
        let haproxy = include_str!("../docs/HAPROXY.md");
        let table = haproxy
            .split_once("| exit status | when |")
            .map(|(_, t)| t.split("\n\n").next().unwrap_or(""))
            .expect("HAPROXY.md's exit status table");
        for row in [
            format!("| {OK} |"),
            format!("| {USAGE} |"),
            format!("| {FAILED} |"),
        ] {
            assert!(
                table.contains(&row),
                "HAPROXY.md's exit statuses lack {row}"
            );
        }
        assert_eq!(
            table.matches("\n| ").count(),
            3,
            "a status HAPROXY.md has that this table has not"
        );
    }
}
