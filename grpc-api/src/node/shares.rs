//! Fair shares of a member's capacity among its groups: store scans and proposals.
//!
//! **Scans.** A range over many keys, a HashKV or a lease listing reads RocksDB for as long as
//! it takes: run on a tokio worker it holds that worker, and with two or three workers a few
//! such reads stall every request of every tenant on the member. Reads that may scan
//! therefore run on tokio's blocking threads ([`ReadPool`]). A point read (a range without
//! `range_end`) is a single seek: handing it to another thread would cost more than it can
//! block, so it runs in place (`Cost::Point`).
//!
//! **Proposals.** The Raft driver's inbox is shared by every group; a tenant with thousands
//! of writes in flight would fill it, and every other tenant's proposals would then be
//! refused. A proposal holds a share until it is answered.
//!
//! Both hold two permits ([`Shares`]): one of its group's, at most half of the member's, so
//! one tenant cannot hold every slot, and one of the member's, which bounds the total
//! whatever the number of tenants. Both semaphores are FIFO, so a tenant's requests are
//! served in arrival order and a tenant waiting for a member permit is not overtaken by
//! later arrivals of others.

use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::Status;

/// Most scans running at once on a member, whatever the number of cores.
const MEMBER_SCANS_MIN: usize = 4;

/// A member's permits of one kind, and each group's share of them.
#[derive(Debug)]
pub struct Shares {
    member: Arc<Semaphore>,
    per_group: usize,
}

/// The two permits of one request; released on drop.
pub struct Share<'a> {
    _group: SemaphorePermit<'a>,
    _member: SemaphorePermit<'a>,
}

impl Shares {
    /// `total` permits on the member, at most half of them (at least one) for one group.
    pub fn new(total: usize) -> Shares {
        let total = total.max(1);
        Shares { member: Arc::new(Semaphore::new(total)), per_group: (total / 2).max(1) }
    }

    /// The permits one group may hold at once: the size of each group's semaphore.
    pub fn per_group(&self) -> usize {
        self.per_group
    }

    /// Waits for a permit of `group` (its semaphore, sized `per_group`), then one of the
    /// member's.
    pub async fn acquire<'a>(&'a self, group: &'a Semaphore) -> Result<Share<'a>, Status> {
        // Group first: a tenant queued behind its own requests holds no member permit.
        let closed = |_| Status::unavailable("shares closed");
        let group = group.acquire().await.map_err(closed)?;
        let member = self.member.acquire().await.map_err(closed)?;
        Ok(Share { _group: group, _member: member })
    }
}

/// How a read may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// One key: served on the calling worker.
    Point,
    /// Any number of keys or revisions: served on a blocking thread with a share.
    Scan,
}

impl Cost {
    /// The cost of a range request.
    pub fn of_range(range_end: &[u8]) -> Cost {
        if range_end.is_empty() {
            Cost::Point
        } else {
            Cost::Scan
        }
    }
}

/// The member's scans.
#[derive(Debug)]
pub struct ReadPool {
    shares: Shares,
}

impl Default for ReadPool {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        ReadPool::new((2 * cores).max(MEMBER_SCANS_MIN))
    }
}

impl ReadPool {
    /// A pool running at most `scans` scans at once, at most half of them of one group.
    pub fn new(scans: usize) -> ReadPool {
        ReadPool { shares: Shares::new(scans) }
    }

    /// The scans one group may run at once.
    pub fn per_group(&self) -> usize {
        self.shares.per_group()
    }

    /// Runs `read` as its cost says: in place for a point read, else on a blocking thread
    /// holding a share (`group` is the group's semaphore, sized `per_group`).
    pub async fn run<T, F>(&self, group: &Semaphore, cost: Cost, read: F) -> Result<T, Status>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if cost == Cost::Point {
            return Ok(read());
        }
        let _share = self.shares.acquire(group).await?;
        tokio::task::spawn_blocking(read).await.map_err(|e| Status::internal(format!("read failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn only_a_range_without_an_end_is_a_point_read() {
        assert_eq!(Cost::of_range(b""), Cost::Point);
        assert_eq!(Cost::of_range(b"\0"), Cost::Scan);
        assert_eq!(Cost::of_range(b"b"), Cost::Scan);
    }

    /// One group's scans never hold more than its share, so another group's scan starts
    /// while the first group still has scans queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_group_cannot_hold_every_permit() {
        let pool = Arc::new(ReadPool::new(4));
        assert_eq!(pool.per_group(), 2);
        let busy = Arc::new(Semaphore::new(pool.per_group()));
        let quiet = Arc::new(Semaphore::new(pool.per_group()));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut scans = Vec::new();
        for _ in 0..6 {
            let (pool, busy, running, most) = (pool.clone(), busy.clone(), running.clone(), most.clone());
            scans.push(tokio::spawn(async move {
                pool.run(&busy, Cost::Scan, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
                .unwrap()
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The busy group has 4 scans queued and 2 running; the quiet group's scan is served
        // from the member's remaining permits, well before the busy group's queue drains.
        let started = std::time::Instant::now();
        pool.run(&quiet, Cost::Scan, || ()).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(80), "waited {:?}", started.elapsed());
        for s in scans {
            s.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "the busy group ran more scans at once than its share");
    }

    /// A group holding its whole share waits for its next permit, while another group gets
    /// one at once from what the member has left.
    #[tokio::test]
    async fn a_group_at_its_share_waits_and_others_do_not() {
        let shares = Shares::new(8);
        let (busy, quiet) = (Semaphore::new(shares.per_group()), Semaphore::new(shares.per_group()));
        let mut held = Vec::new();
        for _ in 0..shares.per_group() {
            held.push(shares.acquire(&busy).await.unwrap());
        }
        let more = tokio::time::timeout(Duration::from_millis(50), shares.acquire(&busy)).await;
        assert!(more.is_err(), "a group got more than its share");
        let other = tokio::time::timeout(Duration::from_millis(50), shares.acquire(&quiet)).await;
        assert!(other.is_ok(), "another group waited behind the busy one");
        drop(held);
        assert!(tokio::time::timeout(Duration::from_millis(50), shares.acquire(&busy)).await.is_ok());
    }

    #[tokio::test]
    async fn a_point_read_runs_in_place_without_a_permit() {
        let pool = ReadPool::new(1);
        let group = Semaphore::new(0); // no permit would ever be granted
        assert_eq!(pool.run(&group, Cost::Point, || 7).await.unwrap(), 7);
    }
}
