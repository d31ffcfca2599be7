//! Reading a file a user or a peer names (a CA bundle, a client key, a password file, a
//! certificate in `--certs`, the image's `/etc/passwd`) or the kernel's text files under
//! `/proc`: bounded and never blocking, so a path such as `/dev/zero` or a FIFO is an error at
//! once, not memory without end or a start that never finishes.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The contents of the regular file at `path`, at most `max` bytes. It is opened
/// non-blocking, so a FIFO cannot hold the caller (it is then refused as not a regular file,
/// like a device or a directory); reading a regular file is not affected. A file over the
/// bound is an error, read no further than the bound.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {} KiB", max / 1024)));
    }
    Ok(data)
}

/// The most read of a kernel text file hecd-init looks at (`/proc/self/mountinfo` of a host
/// with thousands of mounts is well under it).
pub const PROC_MAX: u64 = 4 << 20;

/// A text file of the kernel's (`/proc/self/mountinfo`, `/proc/net/route`, ...) read as
/// [`read_bounded`] reads, invalid UTF-8 replaced; empty when it cannot be read. A /proc that
/// is not the kernel's (a sandbox's, a FUSE mount over it) is input like any other: an
/// endless or huge file costs at most `max` bytes, a FIFO never holds the caller.
pub fn read_text(path: &Path, max: u64) -> String {
    match read_bounded(path, max) {
        Ok(data) => String::from_utf8_lossy(&data).into_owned(),
        Err(e) => {
            log::debug!("{}: {e}", path.display());
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file over the bound, a device that never ends, a directory and a FIFO: each an
    /// error, read no further than the bound, never a hang; a file at the bound is read.
    #[test]
    fn endless_huge_and_blocking_paths_are_errors_at_once() {
        let dir = std::env::temp_dir().join(format!("hecd-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = dir.join("at");
        std::fs::write(&at, vec![b'x'; 4096]).unwrap();
        assert_eq!(read_bounded(&at, 4096).unwrap().len(), 4096);
        let over = read_bounded(&at, 4095).unwrap_err();
        assert_eq!(over.to_string(), "larger than 3 KiB");
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for path in [Path::new("/dev/zero"), &dir, &fifo] {
            let e = read_bounded(path, 1 << 20).unwrap_err();
            assert_eq!(e.to_string(), "not a regular file", "{path:?}");
        }
        let missing = read_bounded(&dir.join("none"), 10).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        // As text: the kernel's own file whole, anything refused above empty.
        assert!(read_text(Path::new("/proc/self/mountinfo"), PROC_MAX).contains(" / "));
        for path in [Path::new("/dev/zero"), &fifo, &dir.join("none")] {
            assert_eq!(read_text(path, PROC_MAX), "", "{path:?}");
        }
        assert_eq!(read_text(&at, 4095), "");
        std::fs::write(&at, b"ok \xff").unwrap();
        assert_eq!(read_text(&at, 4096), "ok \u{fffd}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
