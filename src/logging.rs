//! Logging: one line per event on stderr, prefixed `hecd-init:`, filtered by an env_logger-style
//! filter (`HECD_LOG`, or `-v`). Stdout belongs to the app, so nothing here ever writes there.
//! A small `log::Log` of our own on env_filter: env_logger's formatting machinery is not needed
//! for one fixed line format and costs binary size.

use std::io::Write;

use env_filter::Filter;
use log::{Level, Log, Metadata, Record};

struct StderrLogger(Filter);

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.0.matches(record) {
            return;
        }
        let level = match record.level() {
            Level::Info => "",
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        // One write per line, so lines of the registrar thread and the supervisor never mix.
        let line = format!("hecd-init: {level}{}\n", record.args());
        // A closed or full stderr must not take the init down: the line is dropped.
        let _dropped = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Checks an env_logger-style filter such as `info` or `hecd_init=debug`.
pub fn check_filter(filter: &str) -> Result<(), String> {
    env_filter::Builder::new()
        .try_parse(filter)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Installs the logger.
pub fn init(filter: &str) {
    let filter = env_filter::Builder::new().parse(filter).build();
    log::set_max_level(filter.filter());
    if let Err(e) = log::set_boxed_logger(Box::new(StderrLogger(filter))) {
        // Only possible if a logger was installed before, which main never does.
        eprintln!("hecd-init: cannot set up logging: {e}");
    }
}
