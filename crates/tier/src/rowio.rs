//! Batched row reads: the rows of one query's re-rank that the warm cache does not hold, read from the
//! section's file in one submission to the kernel (io_uring, Linux 5.6 and later), so that the process
//! makes one system call for them instead of one per row, and the disk receives them together (on a
//! virtual disk: one notification of the device per batch, not one per row).
//!
//! Each thread has its own ring, made at its first batch: a ring is driven by the thread that made it,
//! which lets the kernel run the completions when that thread waits for them (`DEFER_TASKRUN`, Linux 6.1)
//! rather than interrupt it; older kernels get a plain ring. Where io_uring is missing (other systems,
//! older kernels) or refused (a seccomp filter, `kernel.io_uring_disabled`), [`read`] says so and the
//! caller reads the rows one by one, as it does for any read a batch could not complete.
//!
//! What it does not do: cache rows, choose them, or check their values (the warm cache's and the
//! caller's jobs).

use std::fs::File;

/// Most reads in one submission (a ring's size); a longer batch is submitted in parts.
#[cfg_attr(not(target_os = "linux"), allow(dead_code, reason = "the ring exists on Linux only"))]
const ENTRIES: usize = 128;

/// Whether batched reads can be made on this thread (on Linux: its ring exists or can be made).
pub(crate) fn available() -> bool {
    imp::available()
}

/// Alignment of direct reads' offsets, lengths and buffers: a page, a multiple of every block size
/// Linux's `O_DIRECT` asks for on the devices it runs on.
#[cfg_attr(not(target_os = "linux"), allow(dead_code, reason = "the ring exists on Linux only"))]
const ALIGN: usize = 4096;

/// Reads `reads` (each a byte offset in `file` and a number of f32 values) and calls `each(i, values)`
/// for every read `i` that completed whole, in any order. Returns the reads that did not (an error, a
/// short read), for the caller to read another way; `None` when batched reads are not available (then
/// nothing was read and `each` was not called). `direct`: `file` was opened with `O_DIRECT`, so each
/// read is widened to the pages around its row.
pub(crate) fn read(
    file: &File,
    direct: bool,
    reads: &[(u64, usize)],
    each: &mut dyn FnMut(usize, &[f32]),
) -> Option<Vec<usize>> {
    imp::read(file, direct, reads, each)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::cell::RefCell;
    use std::fs::File;
    use std::io::ErrorKind;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    use io_uring::{IoUring, opcode, types};

    use super::{ALIGN, ENTRIES};

    /// Set once the kernel refused a ring, or a ring was lost (see `Ring::read_part`): every later batch
    /// is read row by row, without asking again.
    static REFUSED: AtomicBool = AtomicBool::new(false);

    thread_local! {
        static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
    }

    /// A ring and the buffer its reads land in (owned together: see `Ring::read_part`). The buffer only
    /// grows (a query's reads are not worth zeroing again), and reads land from its first page-aligned
    /// byte on.
    struct Ring {
        ring: IoUring,
        buf: Vec<u8>,
    }

    /// Where one read of a part lands: at `at` in the buffer (from its aligned start), `len` bytes from
    /// file offset `offset`, the row `skip` bytes in.
    struct Slot {
        at: usize,
        offset: u64,
        len: usize,
        skip: usize,
    }

    /// The ring lost track of reads in flight: its buffer may still be written by the kernel.
    struct Lost;

    fn new_ring() -> Option<Ring> {
        let n = ENTRIES as u32;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(n)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().build(n))
            .or_else(|_| IoUring::new(n))
            .ok()?;
        Some(Ring { ring, buf: Vec::new() })
    }

    /// Runs `f` on this thread's ring, made if needed; `None` when there is none to be had (refused, or
    /// the ring is in use further up this thread's stack).
    fn with_ring<T>(f: impl FnOnce(&mut Option<Ring>) -> T) -> Option<T> {
        if REFUSED.load(Ordering::Relaxed) {
            return None;
        }
        RING.try_with(|cell| {
            let mut slot = cell.try_borrow_mut().ok()?;
            if slot.is_none() {
                match new_ring() {
                    Some(ring) => *slot = Some(ring),
                    None => {
                        REFUSED.store(true, Ordering::Relaxed);
                        return None;
                    }
                }
            }
            Some(f(&mut slot))
        })
        .ok()
        .flatten()
    }

    pub(super) fn available() -> bool {
        with_ring(|_| ()).is_some()
    }

    pub(super) fn read(
        file: &File,
        direct: bool,
        reads: &[(u64, usize)],
        each: &mut dyn FnMut(usize, &[f32]),
    ) -> Option<Vec<usize>> {
        let fd = types::Fd(file.as_raw_fd());
        with_ring(|slot| {
            let mut failed = Vec::new();
            for (p, part) in reads.chunks(ENTRIES).enumerate() {
                let base = p * ENTRIES;
                let Some(ring) = slot.as_mut() else {
                    failed.extend(base..base + part.len());
                    continue;
                };
                match ring.read_part(fd, direct, part) {
                    Ok(slots) => {
                        let start = ring.buf.as_ptr().align_offset(ALIGN);
                        for (j, (&(_, len), slot)) in part.iter().zip(slots).enumerate() {
                            let row = slot.and_then(|s| {
                                let from = start + s.at + s.skip;
                                bytemuck::try_cast_slice::<u8, f32>(ring.buf.get(from..from + len * 4)?).ok()
                            });
                            match row {
                                Some(row) => each(base + j, row),
                                None => failed.push(base + j),
                            }
                        }
                    }
                    Err(Lost) => {
                        // Reads may still be in flight into the ring's buffer: the ring and its buffer
                        // are leaked (never freed, so never reused), and no ring is made again.
                        std::mem::forget(slot.take());
                        REFUSED.store(true, Ordering::Relaxed);
                        failed.extend(base..base + part.len());
                    }
                }
            }
            failed
        })
    }

    impl Ring {
        /// Submits the reads of `part` (at most a ring's size) into `buf`, one after another (each
        /// widened to whole pages when `direct`), and waits for all of them; where each row landed, for
        /// the reads that completed whole. `Err(Lost)` when the ring failed in a way that leaves reads
        /// possibly in flight.
        fn read_part(&mut self, fd: types::Fd, direct: bool, part: &[(u64, usize)]) -> Result<Vec<Option<Slot>>, Lost> {
            debug_assert!(part.len() <= ENTRIES);
            let align = if direct { ALIGN } else { 4 };
            let mut at = 0usize;
            let slots: Vec<Slot> = part
                .iter()
                .map(|&(offset, len)| {
                    let (from, to) = (
                        offset / align as u64 * align as u64,
                        (offset + len as u64 * 4).next_multiple_of(align as u64),
                    );
                    let slot = Slot { at, offset: from, len: (to - from) as usize, skip: (offset - from) as usize };
                    at += slot.len.next_multiple_of(align);
                    slot
                })
                .collect();
            if self.buf.len() < at + ALIGN {
                self.buf.resize(at + ALIGN, 0);
            }
            let start = self.buf.as_ptr().align_offset(ALIGN);
            let mut ok = vec![false; part.len()];
            let mut pushed = 0usize;
            {
                let mut sq = self.ring.submission();
                for (j, slot) in slots.iter().enumerate() {
                    let dst = &mut self.buf[start + slot.at..start + slot.at + slot.len];
                    // A read the kernel's length field cannot express is left to the caller.
                    let Ok(bytes) = u32::try_from(slot.len) else { continue };
                    let entry =
                        opcode::Read::new(fd, dst.as_mut_ptr(), bytes).offset(slot.offset).build().user_data(j as u64);
                    // SAFETY: `dst` is inside `self.buf`, which is neither resized nor freed until every
                    // pushed read has completed (this function waits for them all), or, if the ring
                    // loses track of them, never (the caller leaks the ring and the buffer together).
                    // The fd belongs to a file the caller holds open for the call; the kernel holds
                    // its own reference to the file for each read anyway.
                    if unsafe { sq.push(&entry) }.is_err() {
                        // Cannot happen (the queue is empty and `part` fits it), but the entries
                        // already pushed are in the queue: the ring is not reused.
                        return Err(Lost);
                    }
                    pushed += 1;
                }
            }
            let mut done = 0usize;
            let mut retries = 0u32;
            while done < pushed {
                match self.ring.submit_and_wait(pushed - done) {
                    Ok(_) => {}
                    // A signal, or the kernel short of memory for a moment, or completions to reap.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::ResourceBusy
                        ) && retries < 1_000 =>
                    {
                        retries += 1;
                    }
                    Err(_) => return Err(Lost),
                }
                for cqe in self.ring.completion() {
                    done += 1;
                    let j = cqe.user_data() as usize;
                    if let (Some(&(_, len)), Some(slot)) = (part.get(j), slots.get(j)) {
                        // A direct read may end short at the end of the file, past the row.
                        ok[j] = usize::try_from(cqe.result()).is_ok_and(|n| n >= slot.skip + len * 4);
                    }
                }
            }
            let slots = slots.into_iter().zip(ok).map(|(slot, ok)| ok.then_some(slot)).collect();
            Ok(slots)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::fs::File;

    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn read(_: &File, _: bool, _: &[(u64, usize)], _: &mut dyn FnMut(usize, &[f32])) -> Option<Vec<usize>> {
        None
    }
}
