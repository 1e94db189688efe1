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

impl DirLock {
    /// Takes the directory's writer lock, or fails with [`Error::Locked`] when another handle or process
    /// holds it. It retries for at most [`LOCK_PATIENCE`]: a process that forks (to spawn a program) holds
    /// copies of every descriptor until its child calls `exec`, so a lock just released can look held for
    /// an instant. It never waits longer.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
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
