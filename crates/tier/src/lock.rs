//! One writer per database directory: an exclusive lock on the file `LOCK`.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Name of the lock file inside a database directory.
pub const LOCK_FILE: &str = "LOCK";

/// How long [`DirLock::acquire`] retries a held lock before reporting [`Error::Locked`].
pub const LOCK_PATIENCE: Duration = Duration::from_millis(250);

/// The writer's hold on a directory; released when dropped (or when the process dies, by the kernel).
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

/// `O_NOFOLLOW`: the value differs between systems, and this crate does not depend on `libc`.
#[cfg(any(target_os = "linux", target_os = "android"))]
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
const NOFOLLOW: i32 = 0x100; // macOS and the BSDs

fn not_a_plain_file(path: &Path) -> Error {
    Error::Occupied { path: path.to_path_buf(), what: "the lock file (a plain file)".into() }
}

impl DirLock {
    /// Takes the directory's writer lock, or fails with [`Error::Locked`] when another handle or process
    /// holds it. It retries for at most [`LOCK_PATIENCE`]: a process that forks (to spawn a program) holds
    /// copies of every descriptor until its child calls `exec`, so a lock just released can look held for
    /// an instant. It never waits longer.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        // A `LOCK` that is a link is not followed: it would make us create or lock a file outside the
        // database.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, NOFOLLOW);
        let file = match options.open(&path) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
            Ok(_) => return Err(not_a_plain_file(&path)),
            Err(_) if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) => {
                return Err(not_a_plain_file(&path));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { path, _file: file }),
                Err(TryLockError::WouldBlock) if start.elapsed() < LOCK_PATIENCE => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => return Err(Error::Locked { path }),
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
