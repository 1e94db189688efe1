//! One writer per directory.

use m2m_tier::{DirLock, Error, LOCK_FILE};

#[test]
fn a_second_writer_is_refused_at_once_and_the_lock_is_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let first = DirLock::acquire(dir.path()).unwrap();
    assert_eq!(first.path(), dir.path().join(LOCK_FILE));
    let t = std::time::Instant::now();
    match DirLock::acquire(dir.path()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path().join(LOCK_FILE)),
        other => panic!("expected Locked, got {other:?}"),
    }
    // Refused after at most LOCK_PATIENCE of retrying (the issue asks for well under a second).
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
    drop(first);
    DirLock::acquire(dir.path()).unwrap();
}

#[test]
fn a_missing_directory_is_an_io_error_naming_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    match DirLock::acquire(&dir.path().join("nope")) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with(LOCK_FILE)),
        other => panic!("expected Io, got {other:?}"),
    }
}
