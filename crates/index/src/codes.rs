//! A cluster's codes: bytes the index owns, or a range of bytes held by another owner (the facade maps
//! its stored index's codes section instead of copying it at every open: the codes are most of the
//! index's hot part). Read as a byte slice; the first change to a borrowed range copies it (copy on
//! write), so inserts and deletes work on either.
//!
//! What it does not do: read files (m2m-index does no IO: the owner is any `AsRef<[u8]>`).

use std::ops::{Deref, Range};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The owner of bytes that codes can borrow a range of (a mapped file section, or a `Vec` in tests).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A cluster's codes (see the module's docs).
#[derive(Clone)]
pub struct Codes(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    Shared { owner: SharedBytes, range: Range<usize> },
}

impl Codes {
    /// Codes that borrow `range` of `owner`'s bytes; `None` when the range lies outside them.
    pub fn shared(owner: SharedBytes, range: Range<usize>) -> Option<Codes> {
        let len = (*owner).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(Codes(Repr::Shared { owner, range }))
    }

    /// Whether the codes are a borrowed range (not yet copied by a change).
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared { .. })
    }

    /// The codes to change: a borrowed range is copied first.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        if let Repr::Shared { owner, range } = &self.0 {
            let copy = (**owner).as_ref()[range.clone()].to_vec();
            self.0 = Repr::Owned(copy);
        }
        match &mut self.0 {
            Repr::Owned(v) => v,
            Repr::Shared { .. } => unreachable!("a borrowed range was just copied"),
        }
    }

    /// Bytes these codes hold on the heap (none for a borrowed range).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Owned(v) => v.capacity(),
            Repr::Shared { .. } => 0,
        }
    }
}

impl Default for Codes {
    fn default() -> Codes {
        Codes(Repr::Owned(Vec::new()))
    }
}

impl From<Vec<u8>> for Codes {
    fn from(v: Vec<u8>) -> Codes {
        Codes(Repr::Owned(v))
    }
}

impl Deref for Codes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(v) => v,
            // In bounds: checked by `shared`, and the owner's bytes do not change.
            Repr::Shared { owner, range } => &(**owner).as_ref()[range.clone()],
        }
    }
}

impl AsRef<[u8]> for Codes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Codes {
    fn eq(&self, other: &Codes) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Codes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_shared() { "shared" } else { "owned" };
        write!(f, "Codes({} bytes, {kind})", self.len())
    }
}

// As a `Vec<u8>` (a sequence of bytes), so that stored parts read and write as before.
impl Serialize for Codes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Codes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Codes, D::Error> {
        Vec::<u8>::deserialize(d).map(Codes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A borrowed range reads as its bytes, a change copies it and leaves the owner as it was, and the
    /// serialised form is a `Vec<u8>`'s. Mutations caught: a range read off by its start, a change
    /// written through to the owner's bytes (impossible here: they are behind `AsRef`), `to_mut`
    /// dropping the bytes, a range past the owner accepted.
    #[test]
    fn a_borrowed_range_reads_and_copies_on_change() {
        let owner: SharedBytes = Arc::new((0..100u8).collect::<Vec<u8>>());
        assert!(Codes::shared(Arc::clone(&owner), 90..101).is_none(), "a range past the bytes");
        let mut c = Codes::shared(Arc::clone(&owner), 10..20).unwrap();
        assert!(c.is_shared() && c.heap_bytes() == 0);
        assert_eq!(&*c, &(10..20u8).collect::<Vec<u8>>()[..]);
        let as_vec = postcard::to_allocvec(&(10..20u8).collect::<Vec<u8>>()).unwrap();
        assert_eq!(postcard::to_allocvec(&c).unwrap(), as_vec, "serialised as a Vec<u8>");
        assert_eq!(postcard::from_bytes::<Codes>(&as_vec).unwrap(), c);
        c.to_mut().push(7);
        c.to_mut()[0] = 99;
        assert!(!c.is_shared());
        assert_eq!(&*c, &[99, 11, 12, 13, 14, 15, 16, 17, 18, 19, 7][..]);
        assert_eq!((*owner).as_ref()[10], 10, "the owner's bytes are not changed");
    }
}
