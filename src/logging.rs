//! Logging: env_logger with the `HECD_LOG` filter (or `-v`), one line per event on stderr,
//! prefixed with the program's name (`hecd-init:`, `hecd-haproxy:`). Stdout belongs to the app, so nothing here ever writes there.
//!
//! Logging never blocks the caller and never fails loudly: env_logger formats the line and
//! hands it to `Spool`, which queues it for a writer thread, started at the first line (a
//! silent pure init starts none). When the reader of stderr is slow or gone, lines are dropped
//! (and counted) instead of stalling the supervisor, and the EPIPE/SIGPIPE of a closed stderr
//! land on the writer thread, whose signals nobody reads, never on the supervisor.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Lines queued for stderr at most; beyond that new lines are dropped.
const QUEUE: usize = 256;

/// Checks an env_logger-style filter such as `info` or `hecd_init=debug`.
pub fn check_filter(filter: &str) -> Result<(), String> {
    env_filter::Builder::new()
        .try_parse(filter)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Installs the logger for hecd-init.
pub fn init(filter: &str) {
    init_as("hecd-init", filter);
}

/// The prefix of every line: the program's name.
static PROGRAM: OnceLock<&'static str> = OnceLock::new();

fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("hecd-init")
}

/// Installs the logger, lines prefixed `PROGRAM: `.
pub fn init_as(name: &'static str, filter: &str) {
    let _ = PROGRAM.set(name);
    let result = env_logger::Builder::new()
        .parse_filters(filter)
        // Whatever the filter says, the HTTP and TLS crates log warnings only: their debug and
        // trace lines print request headers, which carry the etcd auth token.
        .filter_module("ureq", log::LevelFilter::Warn)
        .filter_module("ureq_proto", log::LevelFilter::Warn)
        .filter_module("rustls", log::LevelFilter::Warn)
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Info => "",
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                log::Level::Debug => "debug: ",
                log::Level::Trace => "trace: ",
            };
            writeln!(buf, "{}: {level}{}", program(), record.args())
        })
        .target(env_logger::Target::Pipe(Box::new(Spool::default())))
        .try_init();
    if let Err(e) = result {
        // Only possible if a logger was installed before, which main never does.
        eprintln!("{}: cannot set up logging: {e}", program());
    }
}

/// Waits up to `bound` for the queued lines to reach stderr (call before exiting).
pub fn flush(bound: Duration) {
    let Some(Some(writer)) = WRITER.get() else {
        return;
    };
    let deadline = Instant::now() + bound;
    while writer.queued.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
}

/// The writer thread's queue, shared by every logging thread.
struct Writer {
    lines: Mutex<SyncSender<Vec<u8>>>,
    queued: AtomicU64,
}

static WRITER: OnceLock<Option<Writer>> = OnceLock::new();

/// What env_logger writes into: whole formatted lines (env_logger writes each record with one
/// `write_all` and then flushes), queued without blocking.
#[derive(Default)]
struct Spool {
    line: Vec<u8>,
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            send(std::mem::take(&mut self.line));
        }
        Ok(())
    }
}

fn send(line: Vec<u8>) {
    let writer = WRITER.get_or_init(start_writer);
    let Some(writer) = writer else {
        // No writer thread could be started: write here, dropping the line on any error.
        let _dropped = io::stderr().lock().write_all(&line);
        return;
    };
    let Ok(lines) = writer.lines.lock() else {
        return;
    };
    writer.queued.fetch_add(1, Ordering::AcqRel);
    match lines.try_send(line) {
        Ok(()) => {}
        // Full (stderr is not keeping up) or the writer is gone: the line is dropped.
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            writer.queued.fetch_sub(1, Ordering::AcqRel);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lines dropped because stderr did not take them in time.
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn start_writer() -> Option<Writer> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    crate::sys::spawn_thread("log", move || write_lines(&rx)).ok()?;
    Some(Writer {
        lines: Mutex::new(tx),
        queued: AtomicU64::new(0),
    })
}

fn write_lines(rx: &Receiver<Vec<u8>>) {
    let mut told = 0;
    for line in rx {
        let dropped = DROPPED.load(Ordering::Relaxed);
        let mut err = io::stderr().lock();
        if dropped > told {
            let note = format!(
                "{}: warning: {} log lines dropped\n",
                program(),
                dropped - told
            );
            // A closed stderr: nothing to tell and nobody to tell it to.
            let _dropped = err.write_all(note.as_bytes());
            told = dropped;
        }
        let _dropped = err.write_all(&line);
        drop(err);
        if let Some(Some(w)) = WRITER.get() {
            w.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
