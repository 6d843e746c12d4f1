//! Revisions and group ids.
//!
//! A revision is etcd's `(main, sub)` pair: `main` is bumped once per write request that
//! changes something, `sub` numbers the changes inside that request from 0. Clients only see
//! `main` (an `i64` on etcd's wire, hence [`Revision`] = `i64`); `sub` orders keys inside
//! the `events` and `gone` column families.
//!
//! Invariants: `main >= 1` and `sub >= 0` for every stored change (revision 1 is the empty
//! store, so the first change has `main == 2`).

/// etcd's main revision. An empty group is at revision 1; the first write makes it 2.
pub type Revision = i64;

/// A Raft group (one tenant keyspace). Every RocksDB key starts with its big-endian bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GroupId(pub u64);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "group-{}", self.0)
    }
}

/// A full revision: the request's `main` revision and the change's `sub` index in it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevisionPair {
    pub main: Revision,
    pub sub: i64,
}

impl RevisionPair {
    /// Width of [`RevisionPair::to_bytes`].
    pub const ENCODED_LEN: usize = 16;

    pub fn new(main: Revision, sub: i64) -> RevisionPair {
        assert!(main >= 0 && sub >= 0, "revision pair must be non-negative: ({main}, {sub})");
        RevisionPair { main, sub }
    }

    /// Big-endian `main | sub`: byte order equals revision order.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    /// `!main | !sub`: byte order is the reverse of revision order (newest first).
    pub fn to_inverted_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&(!(self.main as u64)).to_be_bytes());
        out[8..].copy_from_slice(&(!(self.sub as u64)).to_be_bytes());
        out
    }

    /// Inverse of [`RevisionPair::to_bytes`]; `None` on a wrong length or a negative value.
    pub fn from_bytes(b: &[u8]) -> Option<RevisionPair> {
        if b.len() != 16 {
            return None;
        }
        let main = u64::from_be_bytes(b[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(b[8..].try_into().ok()?) as i64;
        (main >= 0 && sub >= 0).then_some(RevisionPair { main, sub })
    }

    /// Inverse of [`RevisionPair::to_inverted_bytes`].
    pub fn from_inverted_bytes(b: &[u8]) -> Option<RevisionPair> {
        if b.len() != 16 {
            return None;
        }
        let main = !u64::from_be_bytes(b[..8].try_into().ok()?) as i64;
        let sub = !u64::from_be_bytes(b[8..].try_into().ok()?) as i64;
        (main >= 0 && sub >= 0).then_some(RevisionPair { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encodings_round_trip_and_keep_order(a in (0i64..i64::MAX, 0i64..1000), b in (0i64..i64::MAX, 0i64..1000)) {
            let (ra, rb) = (RevisionPair::new(a.0, a.1), RevisionPair::new(b.0, b.1));
            prop_assert_eq!(RevisionPair::from_bytes(&ra.to_bytes()), Some(ra));
            prop_assert_eq!(RevisionPair::from_inverted_bytes(&ra.to_inverted_bytes()), Some(ra));
            prop_assert_eq!(ra.cmp(&rb), ra.to_bytes().cmp(&rb.to_bytes()));
            prop_assert_eq!(ra.cmp(&rb), rb.to_inverted_bytes().cmp(&ra.to_inverted_bytes()));
        }
    }
}
