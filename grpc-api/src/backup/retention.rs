//! Retention: which backups of a manifest to keep. A pure function of the list, so the
//! policy is tested without a target.
//!
//! A policy keeps a set of full backups, each with the deltas after it up to the next full
//! backup in the manifest (its chain); everything else goes:
//! - `fulls=N` (or just `N`): the newest N full backups;
//! - `hourly=H`, `daily=D`, `weekly=W`: the newest full backup of each of the newest H
//!   hours, D days and W weeks (UTC, weeks from Monday) that have one;
//!
//! and any combination, comma-separated (`fulls=2,daily=7,weekly=4`), keeps the union. The
//! newest full backup and everything after it are always kept. Deleting is the caller's: it
//! rewrites the manifest without the dropped entries first, then deletes their objects, so a
//! crash in between leaves unnamed objects, never a manifest naming a missing one.

use std::collections::BTreeSet;

use super::manifest::{Entry, Kind};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
const WEEK_MS: u64 = 7 * DAY_MS;
/// The Unix epoch was a Thursday: shifting by 3 days makes weeks start on Monday.
const WEEK_SHIFT_MS: u64 = 3 * DAY_MS;

/// A retention policy (see the module docs); at least one count is non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// The newest N full backups.
    pub keep_fulls: usize,
    /// The newest full backup of each of the newest N hours / days / weeks that have one.
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
}

impl Retention {
    /// Parses `--backup-retention`: `7`, `fulls=7`, `hourly=24,daily=7,weekly=4`, or any
    /// comma-separated combination.
    pub fn parse(flag: &str) -> anyhow::Result<Retention> {
        let mut r = Retention::default();
        for part in flag.split(',').map(str::trim) {
            let (name, n) = part.split_once('=').unwrap_or(("fulls", part));
            let n: usize = n.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--backup-retention {flag:?}: expected N, fulls=N, hourly=N, daily=N or weekly=N, comma-separated"
                )
            })?;
            let slot = match name {
                "fulls" => &mut r.keep_fulls,
                "hourly" => &mut r.hourly,
                "daily" => &mut r.daily,
                "weekly" => &mut r.weekly,
                other => anyhow::bail!("--backup-retention {flag:?}: unknown count {other:?}"),
            };
            *slot = n;
        }
        anyhow::ensure!(
            r.keep_fulls + r.hourly + r.daily + r.weekly >= 1,
            "--backup-retention must keep at least one full backup"
        );
        Ok(r)
    }

    /// Splits `backups` (oldest first) into (kept, dropped), each in manifest order.
    pub fn apply(&self, backups: &[Entry]) -> (Vec<Entry>, Vec<Entry>) {
        let fulls: Vec<usize> =
            backups.iter().enumerate().filter(|(_, e)| e.kind == Kind::Full).map(|(i, _)| i).collect();
        let Some(&newest) = fulls.last() else {
            // No full backup: nothing forms a chain to judge; keep everything
            // (`check_continuity` reports the list).
            return (backups.to_vec(), Vec::new());
        };
        let mut kept_fulls: BTreeSet<usize> = fulls.iter().rev().take(self.keep_fulls).copied().collect();
        kept_fulls.insert(newest);
        for (count, bucket) in [
            (self.hourly, (|ms: u64| ms / HOUR_MS) as fn(u64) -> u64),
            (self.daily, |ms| ms / DAY_MS),
            (self.weekly, |ms| (ms + WEEK_SHIFT_MS) / WEEK_MS),
        ] {
            let mut seen = BTreeSet::new();
            for &i in fulls.iter().rev() {
                if seen.len() == count && !seen.contains(&bucket(backups[i].time_unix_ms)) {
                    break;
                }
                if seen.insert(bucket(backups[i].time_unix_ms)) {
                    kept_fulls.insert(i);
                }
            }
        }
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        let mut in_kept_chain = false;
        for (i, e) in backups.iter().enumerate() {
            if e.kind == Kind::Full {
                in_kept_chain = kept_fulls.contains(&i);
            }
            // Deltas before the first full belong to no chain (they are never restorable;
            // `verify` names them): they go when the first full goes.
            let keep = in_kept_chain || (i < fulls[0] && kept_fulls.contains(&fulls[0]));
            if keep {
                kept.push(e.clone());
            } else {
                dropped.push(e.clone());
            }
        }
        (kept, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::tests::entry;
    use super::*;

    fn fulls(n: usize) -> Retention {
        Retention { keep_fulls: n, ..Retention::default() }
    }

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
        let (kept, dropped) = fulls(2).apply(&list);
        assert_eq!(names(&kept), ["Full-0-20", "Delta-20-30", "Delta-30-40", "Full-0-40", "Delta-40-50"]);
        assert_eq!(names(&dropped), ["Full-0-10", "Delta-10-20"]);
        let (kept, dropped) = fulls(1).apply(&list);
        assert_eq!(names(&kept), ["Full-0-40", "Delta-40-50"]);
        assert_eq!(dropped.len(), 5);
        let (kept, dropped) = fulls(3).apply(&list);
        assert_eq!((kept.len(), dropped.len()), (7, 0));
        let (kept, dropped) = fulls(5).apply(&list[..2]);
        assert_eq!((kept.len(), dropped.len()), (2, 0));
        assert!(Retention::parse("0").is_err() && Retention::parse("x").is_err());
        assert_eq!(Retention::parse("fulls=3").unwrap(), fulls(3));
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
            let full_count = list.iter().filter(|e| e.kind == Kind::Full).count();
            for n in 1..=full_count + 1 {
                let (kept, dropped) = fulls(n).apply(&list);
                assert_eq!(kept.len() + dropped.len(), list.len());
                assert_eq!(kept.iter().filter(|e| e.kind == Kind::Full).count(), n.min(full_count));
                assert_eq!(kept[0].kind, Kind::Full);
                let m =
                    super::super::manifest::Manifest { backups: kept, ..super::super::manifest::Manifest::new("t", 1) };
                m.check_continuity().unwrap();
                assert_eq!(m.latest_revision(), Some(at));
            }
        }
    }

    #[test]
    fn time_buckets_keep_the_newest_full_of_each_hour_day_and_week() {
        // Fulls every 30 minutes for three days, each followed by one delta.
        let mut list = Vec::new();
        let start = 1_764_547_200_000u64; // Monday 2025-12-01 00:00 UTC
        for i in 0..144u64 {
            let mut full = entry(Kind::Full, 0, 2 * i as i64 + 1);
            full.time_unix_ms = start + i * 30 * 60_000;
            let mut delta = entry(Kind::Delta, 2 * i as i64 + 1, 2 * i as i64 + 2);
            delta.time_unix_ms = full.time_unix_ms + 60_000;
            list.push(full);
            list.push(delta);
        }
        let policy = Retention::parse("hourly=3,daily=2").unwrap();
        assert_eq!(policy, Retention { hourly: 3, daily: 2, ..Retention::default() });
        let (kept, dropped) = policy.apply(&list);
        assert_eq!(kept.len() + dropped.len(), list.len());
        let kept_fulls: Vec<u64> =
            kept.iter().filter(|e| e.kind == Kind::Full).map(|e| (e.time_unix_ms - start) / 60_000).collect();
        // Hours: the newest full of hours 71, 70, 69 (minutes 4290, 4230, 4170); days: the
        // newest of day 2 (the same as hour 71's) and of day 1 (minute 2850).
        assert_eq!(kept_fulls, [2850, 4170, 4230, 4290]);
        // Each kept full keeps its delta, and the list still forms chains.
        assert_eq!(kept.len(), 8);
        let m = super::super::manifest::Manifest { backups: kept, ..super::super::manifest::Manifest::new("t", 1) };
        m.check_continuity().unwrap();
        let weekly = Retention::parse("weekly=5").unwrap().apply(&list).0;
        assert_eq!(weekly.len(), 2, "three days of one week: the newest full and its delta");
        assert!(Retention::parse("hourly=0").is_err() && Retention::parse("monthly=2").is_err());
        assert_eq!(
            Retention::parse("fulls=1,weekly=4").unwrap(),
            Retention { keep_fulls: 1, weekly: 4, ..Default::default() }
        );
    }
}
