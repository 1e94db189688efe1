//! Every write, sync, create and rename this crate makes goes through here, so that tests can make any of
//! them fail (see [`fault`], behind the `fault-injection` feature). Without the feature the fault checks
//! compile to nothing.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::Path;

/// Creates a file for writing (and reading): `new` refuses an existing file, otherwise it is truncated.
pub(crate) fn create(path: &Path, new: bool) -> io::Result<File> {
    fault::point()?;
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if new {
        o.create_new(true)
    } else {
        o.create(true).truncate(true)
    };
    o.open(path)
}

/// `fdatasync`.
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    fault::point()?;
    file.sync_data()
}

/// `fsync`.
pub(crate) fn sync_all(file: &File) -> io::Result<()> {
    fault::point()?;
    file.sync_all()
}

/// `rename`.
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fault::point()?;
    std::fs::rename(from, to)
}

/// Makes the entries of `dir` durable (after a create or rename in it). On Unix by fsync of the
/// directory; Windows cannot open a directory as a file without extra flags, and NTFS journals its
/// metadata, so there it only passes the fault point.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fault::point()?;
    sync_dir_entries(dir)
}

#[cfg(unix)]
fn sync_dir_entries(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir_entries(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Drops a read-only file mapping's pages from memory: the mapping's (`madvise(DONTNEED)`, on Unix) and
/// then the kernel's page cache of the file (`posix_fadvise(DONTNEED)`, on Linux, Android and FreeBSD; it
/// skips pages another process maps). Later reads fault the same bytes in from disk. Elsewhere it drops
/// what the platform allows and returns `Ok`.
///
/// The caller's mapping must be a read-only shared map of a file that does not change while mapped
/// (the contract of [`Segment`](crate::Segment) and [`SectionFile`](crate::SectionFile)).
pub(crate) fn release_pages(map: &memmap2::Mmap, path: &Path) -> crate::Result<()> {
    #[cfg(unix)]
    // SAFETY: a read-only shared map of a file that does not change while mapped (the caller's contract),
    // so after MADV_DONTNEED every access faults the same bytes back in from the file: slices borrowed
    // from the mapping keep their contents.
    unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }.map_err(|e| crate::Error::io(path, e))?;
    #[cfg(not(unix))]
    let _ = (map, path);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let file = File::open(path).map_err(|e| crate::Error::io(path, e))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|e| crate::Error::io(path, io::Error::from(e)))?;
    }
    Ok(())
}

/// Drops a read-only file mapping's pages from this process (`madvise(DONTNEED)`, on Unix; nothing
/// elsewhere): the page cache keeps them, so a later read is a minor fault, not a disk read. The
/// caller's contract is [`release_pages`]'s.
pub(crate) fn unmap_pages(map: &memmap2::Mmap, path: &Path) -> crate::Result<()> {
    #[cfg(unix)]
    // SAFETY: as in `release_pages`: a read-only shared map of a file that does not change while mapped.
    unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }.map_err(|e| crate::Error::io(path, e))?;
    #[cfg(not(unix))]
    let _ = (map, path);
    Ok(())
}

/// The directory of `path` ("." for a bare name).
pub(crate) fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A [`Write`] over a file whose every `write` is a fault point.
pub(crate) struct Writer<'a>(pub(crate) &'a File);

impl Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = fault::write_len(buf.len())?;
        (&*self.0).write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes all of `bufs` with `writev`, resuming after short writes.
pub(crate) fn write_all_vectored(file: &File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let allowed = fault::write_len(total)?;
        let written = if allowed < total {
            (&*file).write(&bufs[0][..allowed.min(bufs[0].len())])
        } else {
            (&*file).write_vectored(bufs)
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
mod fault {
    #[inline(always)]
    pub(super) fn point() -> std::io::Result<()> {
        Ok(())
    }

    #[inline(always)]
    pub(super) fn write_len(len: usize) -> std::io::Result<usize> {
        Ok(len)
    }
}

#[cfg(feature = "fault-injection")]
pub(crate) use fault_injection as fault;

/// Storage fault injection for tests (feature `fault-injection`): arm a fault on the current thread and
/// the `n`-th fault point from then on (0-based; every write, sync, create, rename and directory sync is
/// one) fails, and so does every later one until the guard is dropped, as on a full or failing disk.
#[cfg(feature = "fault-injection")]
pub mod fault_injection {
    use std::cell::Cell;
    use std::io;

    /// What the failing operation does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// `ENOSPC`: the disk is full.
        NoSpace,
        /// `EIO`: the device failed.
        Eio,
        /// A write that stores only half of its bytes and reports so; the next point fails with `ENOSPC`.
        ShortWrite,
    }

    #[derive(Clone, Copy)]
    struct Armed {
        at: u64,
        fault: Fault,
    }

    thread_local! {
        static ARMED: Cell<Option<Armed>> = const { Cell::new(None) };
        static SEEN: Cell<u64> = const { Cell::new(0) };
    }

    /// Disarms the fault when dropped.
    #[derive(Debug)]
    #[must_use = "the fault is disarmed when the guard drops"]
    pub struct Guard(());

    impl Drop for Guard {
        fn drop(&mut self) {
            ARMED.with(|a| a.set(None));
        }
    }

    /// Arms `fault` at fault point `at` (counted on this thread from now).
    pub fn arm(at: u64, fault: Fault) -> Guard {
        SEEN.with(|s| s.set(0));
        ARMED.with(|a| a.set(Some(Armed { at, fault })));
        Guard(())
    }

    /// Fault points passed on this thread since the last [`arm`].
    pub fn points() -> u64 {
        SEEN.with(Cell::get)
    }

    /// Whether the armed fault has fired.
    pub fn fired() -> bool {
        ARMED.with(|a| a.get().is_some_and(|armed| points() > armed.at))
    }

    fn error(fault: Fault) -> io::Error {
        match fault {
            Fault::Eio => io::Error::from_raw_os_error(5),
            Fault::NoSpace | Fault::ShortWrite => io::Error::from_raw_os_error(28),
        }
    }

    /// Counts a point; `Some(fault)` when it must fail, with whether it is the first failing one.
    fn next() -> Option<(Fault, bool)> {
        let n = SEEN.with(|s| {
            let n = s.get();
            s.set(n + 1);
            n
        });
        ARMED.with(Cell::get).filter(|a| n >= a.at).map(|a| (a.fault, n == a.at))
    }

    pub(crate) fn point() -> io::Result<()> {
        match next() {
            Some((fault, _)) => Err(error(fault)),
            None => Ok(()),
        }
    }

    pub(crate) fn write_len(len: usize) -> io::Result<usize> {
        match next() {
            Some((Fault::ShortWrite, true)) if len > 1 => Ok(len / 2),
            Some((fault, _)) => Err(error(fault)),
            None => Ok(len),
        }
    }
}
