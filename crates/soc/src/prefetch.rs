//! Software prefetch of the rows a later chain will read, paced: a few cache lines at a time between
//! the current chain's steps. A neighbourhood of 17 rows of 640 floats is 680 lines, and a core tracks
//! only a dozen or two outstanding misses: asked for in one burst, the hints wait for those buffers
//! and stall the core (12% of a lake epoch's samples sat on the burst's prefetch instructions), while
//! spread over the current chain's arithmetic they overlap it. A hint only: nothing on other
//! architectures, and no result depends on it.

/// Floats per 64-byte cache line.
const LINE: usize = 16;

/// Rows to bring into cache, issued a few lines at a time ([`LineQueue::pump`]).
#[derive(Debug, Default)]
pub(crate) struct LineQueue<'a> {
    rows: Vec<&'a [f32]>,
    /// The next row and the next line within it.
    row: usize,
    line: usize,
}

impl<'a> LineQueue<'a> {
    /// Empties the queue (what was not issued is dropped).
    pub(crate) fn clear(&mut self) {
        self.rows.clear();
        self.row = 0;
        self.line = 0;
    }

    /// Queues `row`'s lines.
    pub(crate) fn push(&mut self, row: &'a [f32]) {
        self.rows.push(row);
    }

    /// Lines queued and not issued yet.
    pub(crate) fn lines_left(&self) -> usize {
        let all: usize = self.rows.get(self.row..).unwrap_or(&[]).iter().map(|r| r.len().div_ceil(LINE)).sum();
        all - self.line
    }

    /// Issues up to `n` of the queued lines.
    #[inline]
    pub(crate) fn pump(&mut self, mut n: usize) {
        while n > 0 {
            let Some(row) = self.rows.get(self.row) else { return };
            let lines = row.len().div_ceil(LINE);
            let take = n.min(lines - self.line);
            for l in self.line..self.line + take {
                prefetch_line(&row[l * LINE..]);
            }
            n -= take;
            self.line += take;
            if self.line == lines {
                self.row += 1;
                self.line = 0;
            }
        }
    }

    /// Issues a `1 / parts` share of what is left (rounded up): called `parts`, `parts - 1`, ..., 1
    /// times in turn, it spreads the queue evenly over that many calls.
    #[inline]
    pub(crate) fn pump_share(&mut self, parts: usize) {
        if self.row < self.rows.len() {
            self.pump(self.lines_left().div_ceil(parts.max(1)));
        }
    }

    /// Issues everything left.
    pub(crate) fn drain(&mut self) {
        self.pump(usize::MAX);
    }
}

/// Prefetches the cache line holding `at[0]` into L2 (a hint; `at` must not be empty).
#[inline(always)]
fn prefetch_line(at: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, and the pointer is that of a live, non-empty slice.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(at.as_ptr().cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::LineQueue;

    /// Shares issue every line exactly once whatever the split (a queue that lost or repeated lines
    /// would end with lines left, or run past its rows and panic on the slice).
    #[test]
    fn shares_issue_every_line_once() {
        let (a, b) = (vec![0f32; 640], vec![0f32; 17]);
        let mut q = LineQueue::default();
        q.push(&a);
        q.push(&b);
        assert_eq!(q.lines_left(), 40 + 2);
        for parts in (1..=9).rev() {
            let before = q.lines_left();
            q.pump_share(parts);
            assert_eq!(before - q.lines_left(), before.div_ceil(parts), "share of {parts}");
        }
        assert_eq!(q.lines_left(), 0);
        q.drain();
        q.clear();
        q.push(&b);
        q.pump(1);
        assert_eq!(q.lines_left(), 1);
        q.drain();
        assert_eq!(q.lines_left(), 0);
    }
}
