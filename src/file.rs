//! Reading a file a user or a peer names (a CA bundle, a client key, a password file, a
//! certificate in `--certs`, the image's `/etc/passwd`): bounded and never blocking, so a path
//! such as `/dev/zero` or a FIFO is an error at once, not memory without end or a start that
//! never finishes.

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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
