//! Newtypes for the numbers that must never be mixed up: which group, which log position,
//! which term, which node.

use std::fmt;

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }
    };
}

newtype_u64!(
    /// A Raft group (one tenant's replicated log, or the system group 0).
    GroupId
);
newtype_u64!(
    /// A position in one group's Raft log (1-based; 0 means "before the first entry").
    LogIndex
);
newtype_u64!(
    /// A Raft term.
    Term
);
newtype_u64!(
    /// A Raft node (replica) id; 0 means "no node".
    NodeId
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn newtypes_order_hash_and_display() {
        assert!(LogIndex(1) < LogIndex(2));
        assert_eq!(Term(7).to_string(), "7");
        assert_eq!(format!("{:?}", GroupId(3)), "GroupId(3)");
        let set: HashSet<NodeId> = [NodeId(1), NodeId(1), NodeId(2)].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(u64::from(LogIndex::from(9)), 9);
    }
}
