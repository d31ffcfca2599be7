//! `--certs DIR` followed: every `*.pem` file in it (names starting with `.` aside, symbolic
//! links followed, as Docker secrets and configs and Kubernetes-style mounts make them) is
//! read and checked ([`super::certs::inspect`]) when the directory changes (inotify: a file
//! written, moved in or out, removed), and once a minute besides (a certificate that became
//! valid or expired, a directory replaced under its name). What it finds goes to the main loop
//! only when it differs from what was sent last; a file that cannot be served is logged once
//! per version of the file. While nothing changes this thread sleeps in `poll`.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::certs::{Found, MAX_FILE, inspect};

/// A look at the directory is taken at least this often.
const RESCAN: Duration = Duration::from_secs(60);

/// After a change is seen, this long for the rest of it (a file written in several steps, a
/// directory swapped) before the look.
const SETTLE: Duration = Duration::from_millis(100);

/// The directory and what was last found in it.
pub struct CertDir {
    dir: PathBuf,
    /// What was last sent: each file's verdict.
    last: Found,
    /// The last error reading the directory itself (logged once).
    dir_error: Option<String>,
}

impl CertDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            last: Found::new(),
            dir_error: None,
        }
    }

    /// Reads and checks every file; what was found if it differs from the last look (files
    /// that cannot be served are logged here, once per change). `None` also when the
    /// directory cannot be read: what is served stays.
    pub fn look(&mut self) -> Option<Found> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => {
                self.dir_error = None;
                e
            }
            Err(e) => {
                let text = e.to_string();
                if self.dir_error.as_ref() != Some(&text) {
                    log::warn!(
                        "--certs {}: {text}; the certificates loaded stay",
                        self.dir.display()
                    );
                    self.dir_error = Some(text);
                }
                return None;
            }
        };
        let now = super::certs::unix_now();
        let mut found = Found::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".pem") {
                continue;
            }
            let verdict = read_file(&entry.path()).and_then(|data| inspect(&data, now));
            if let Err(e) = &verdict
                && self.last.get(&name) != Some(&verdict)
            {
                log::warn!(
                    "certificate {}: {e}; not served (what served its names before still does)",
                    entry.path().display()
                );
            }
            found.insert(name, verdict);
        }
        if found == self.last {
            return None;
        }
        for name in self.last.keys().filter(|n| !found.contains_key(*n)) {
            log::info!("certificate {name}: removed");
        }
        self.last = found.clone();
        Some(found)
    }

    /// Follows the directory until `tell` returns false (the main loop is gone).
    pub fn run(mut self, tell: impl Fn(Found) -> bool) {
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
            Ok(i) => Some(i),
            Err(e) => {
                log::warn!(
                    "--certs {}: cannot follow it ({e}); looking every {} s",
                    self.dir.display(),
                    RESCAN.as_secs()
                );
                None
            }
        };
        let mut watched = None;
        loop {
            if let Some(i) = &inotify {
                watched = self.watch(i, watched);
            }
            let changed = match &inotify {
                Some(i) => wait(i, RESCAN),
                None => {
                    std::thread::sleep(RESCAN);
                    true
                }
            };
            if changed {
                std::thread::sleep(SETTLE);
                if let Some(i) = &inotify {
                    // Whatever else came in meanwhile is covered by the look below.
                    while i.read_events().is_ok_and(|e| !e.is_empty()) {}
                }
            }
            if let Some(found) = self.look()
                && !tell(found)
            {
                return;
            }
        }
    }

    /// Watches the directory (again, if it was replaced: the watch is on the inode); the
    /// inode watched.
    fn watch(&self, inotify: &Inotify, watched: Option<u64>) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&self.dir).ok()?.ino();
        if watched == Some(ino) {
            return watched;
        }
        let flags = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        match inotify.add_watch(&self.dir, flags) {
            Ok(_) => Some(ino),
            Err(e) => {
                log::warn!("--certs {}: cannot follow it ({e})", self.dir.display());
                None
            }
        }
    }
}

/// Waits up to `timeout` for an inotify event; whether one came.
fn wait(inotify: &Inotify, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

/// A file's contents, at most [`MAX_FILE`] bytes (a FIFO named *.pem cannot hang the thread:
/// see [`crate::file::read_bounded`]).
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    crate::file::read_bounded(path, MAX_FILE).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file over the bound, a device that never ends, a directory and a FIFO named like
    /// certificates: each an error, read no further than the bound, never a hang.
    #[test]
    fn files_that_are_not_certificates_are_refused_within_the_bound() {
        let dir = std::env::temp_dir().join(format!("hecd-certdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        std::fs::write(&big, vec![b'x'; MAX_FILE as usize + 1]).unwrap();
        assert!(read_file(&big).unwrap_err().starts_with("larger than"));
        let endless = dir.join("zero.pem");
        let _ = std::fs::remove_file(&endless);
        std::os::unix::fs::symlink("/dev/zero", &endless).unwrap();
        assert_eq!(read_file(&endless).unwrap_err(), "not a regular file");
        let sub = dir.join("sub.pem");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(read_file(&sub).unwrap_err(), "not a regular file");
        let fifo = dir.join("fifo.pem");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(read_file(&fifo).unwrap_err(), "not a regular file");
        // And a look at the directory finds all four, each with its reason.
        let found = CertDir::new(&dir).look().unwrap();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found.values().all(Result::is_err));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
