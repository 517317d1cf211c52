//! Reading the files a config names: policies, API key files, keys, JWKS files, certificates,
//! CAs, secrets.
//!
//! Contract: a file is read only if it is a regular file (links followed), and only up to
//! [`MAX_BYTES`]. A pipe, a socket or a device is an error at once, never a read that waits
//! for a writer; a larger file is an error, never read whole. Every read of a named file, by
//! the running gateway's reloads and by `check`, goes through [`read`].
//!
//! Why: a secret file replaced by a pipe (`rm hs.secret; mkfifo hs.secret`) blocked the reload
//! thread in `open` for good: no later reload applied (a rule turned to deny kept answering
//! 200), nothing said why, `POST /reload` never answered and `check` hung.
//! Regression: tests::a_pipe_is_refused_at_once, tests (it) reload::a_pipe_in_place_of_a_secret_file_never_stops_reloads

use std::io::{self, Read as _};
use std::path::Path;

/// The largest file read.
pub const MAX_BYTES: u64 = 16 << 20;

/// A regular file's bytes, at most [`MAX_BYTES`] of them.
pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking: opening a pipe for reading waits for a writer otherwise. A regular
    // file's reads ignore the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path.as_ref())?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, a pipe, a socket or a device): not read",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} MiB: not read", MAX_BYTES >> 20),
        ));
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    String::from_utf8(read(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("secret");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = read(&fifo).expect_err("a pipe is not read");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(read_to_string(&fifo).is_err());
    }

    #[test]
    fn a_regular_file_is_read_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = vec![b'a'; usize::try_from(MAX_BYTES).unwrap()];
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap().len(), bytes.len());
        bytes.push(b'a');
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).expect_err("over the limit");
        assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
        assert!(read(dir.path().join("none")).is_err());
        assert!(read(dir.path()).is_err(), "a directory");
    }
}
