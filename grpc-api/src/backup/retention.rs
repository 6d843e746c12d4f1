//! Retention: which backups of a manifest to keep. A pure function of the list, so the
//! policy is tested without a target.
//!
//! `keep_fulls = N` keeps the newest N full backups and every delta after the oldest of
//! them (the deltas of each kept chain); everything older goes. Deleting is the caller's:
//! it rewrites the manifest without the dropped entries first, then deletes their objects,
//! so a crash in between leaves unnamed objects, never a manifest naming a missing one.

use super::manifest::{Entry, Kind};

/// A retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Full backups to keep, at least 1.
    pub keep_fulls: usize,
}

impl Retention {
    /// Parses `--backup-retention`: a number of full backups to keep (`7`, or `fulls=7`).
    pub fn parse(flag: &str) -> anyhow::Result<Retention> {
        let n = flag.strip_prefix("fulls=").unwrap_or(flag);
        let keep_fulls: usize =
            n.parse().map_err(|_| anyhow::anyhow!("--backup-retention {flag:?}: expected a number of full backups"))?;
        anyhow::ensure!(keep_fulls >= 1, "--backup-retention must keep at least one full backup");
        Ok(Retention { keep_fulls })
    }

    /// Splits `backups` (oldest first) into (kept, dropped), each in manifest order.
    pub fn apply(&self, backups: &[Entry]) -> (Vec<Entry>, Vec<Entry>) {
        assert!(self.keep_fulls >= 1, "a retention policy keeps at least one full backup");
        let fulls: Vec<usize> =
            backups.iter().enumerate().filter(|(_, e)| e.kind == Kind::Full).map(|(i, _)| i).collect();
        let first_kept = if fulls.len() <= self.keep_fulls {
            // Fewer fulls than the policy keeps: keep everything (deltas before the first
            // full are kept too; `check_continuity` reports them).
            0
        } else {
            fulls[fulls.len() - self.keep_fulls]
        };
        (backups[first_kept..].to_vec(), backups[..first_kept].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::tests::entry;
    use super::*;

    fn names(v: &[Entry]) -> Vec<String> {
        v.iter().map(|e| e.object.clone()).collect()
    }

    #[test]
    fn keeps_the_last_n_fulls_with_their_deltas() {
        let list = vec![
            entry(Kind::Full, 0, 10),
            entry(Kind::Delta, 10, 20),
            entry(Kind::Full, 0, 20),
            entry(Kind::Delta, 20, 30),
            entry(Kind::Delta, 30, 40),
            entry(Kind::Full, 0, 40),
            entry(Kind::Delta, 40, 50),
        ];
        let (kept, dropped) = Retention { keep_fulls: 2 }.apply(&list);
        assert_eq!(names(&kept), ["Full-0-20", "Delta-20-30", "Delta-30-40", "Full-0-40", "Delta-40-50"]);
        assert_eq!(names(&dropped), ["Full-0-10", "Delta-10-20"]);
        let (kept, dropped) = Retention { keep_fulls: 1 }.apply(&list);
        assert_eq!(names(&kept), ["Full-0-40", "Delta-40-50"]);
        assert_eq!(dropped.len(), 5);
        let (kept, dropped) = Retention { keep_fulls: 3 }.apply(&list);
        assert_eq!((kept.len(), dropped.len()), (7, 0));
        let (kept, dropped) = Retention { keep_fulls: 5 }.apply(&list[..2]);
        assert_eq!((kept.len(), dropped.len()), (2, 0));
        assert!(Retention::parse("0").is_err() && Retention::parse("x").is_err());
        assert_eq!(Retention::parse("fulls=3").unwrap(), Retention { keep_fulls: 3 });
    }

    #[test]
    fn every_kept_list_restores_to_its_newest_revision() {
        // For any sequence of fulls and deltas and any N, the kept list holds exactly N
        // fulls (or all of them) and still forms continuous chains.
        for bits in 0u32..256 {
            let mut list = vec![entry(Kind::Full, 0, 1)];
            let mut at = 1;
            for i in 0..8 {
                let next = at + 1;
                list.push(if bits & (1 << i) != 0 { entry(Kind::Full, 0, next) } else { entry(Kind::Delta, at, next) });
                at = next;
            }
            let fulls = list.iter().filter(|e| e.kind == Kind::Full).count();
            for n in 1..=fulls + 1 {
                let (kept, dropped) = Retention { keep_fulls: n }.apply(&list);
                assert_eq!(kept.len() + dropped.len(), list.len());
                assert_eq!(kept.iter().filter(|e| e.kind == Kind::Full).count(), n.min(fulls));
                assert_eq!(kept[0].kind, Kind::Full);
                let m =
                    super::super::manifest::Manifest { backups: kept, ..super::super::manifest::Manifest::new("t", 1) };
                m.check_continuity().unwrap();
                assert_eq!(m.latest_revision(), Some(at));
            }
        }
    }
}
