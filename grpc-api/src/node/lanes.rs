//! CPU lanes: a tenant's requests beyond a few in flight run at a lower CPU priority.
//!
//! A member serves every tenant's requests on one tokio runtime, whose run queue knows
//! nothing of tenants. One tenant with a hundred writes in flight keeps that queue full, and a
//! quiet tenant's request, however cheap, waits behind them for a core: on a saturated
//! two-core member its median latency rose from 0.6 ms to 4-5 ms (`benches/noisy.sh`). The
//! Raft driver, the WAL writer and the apply worker are already shared fairly (per-group
//! budgets, FIFO shares); the CPU of the request handlers was not.
//!
//! So a key-value request of a group that already has [`NORMAL_LANE_IN_FLIGHT_MAX`] of them
//! in flight on this member runs on the **bulk lane**, while the member is shared (another
//! group sent a key-value request in the last [`SHARED_FOR`]): a second runtime whose
//! threads run at nice [`BULK_NICE`]. The kernel's scheduler then gives a core to the normal lane's threads
//! first, and to the bulk lane's when they are idle, so the neighbour still gets every cycle
//! nobody else wants. A group under the bound (a kube-apiserver at its usual load, any
//! tenant alone at low concurrency) never leaves the normal lane.
//!
//! The lane is chosen per request, when it arrives, from the group's count at that moment,
//! so a tenant moves between lanes as its load changes, with no sampling. A tenant alone on
//! its member stays in the normal lane at any load: the hop to another runtime and the lower
//! priority cost a lone saturating tenant about 30 % of its writes per second on one pinned
//! core (13.7-15.2k against 9.5-10.2k puts/s), a price worth paying only when someone else
//! gains from it. What stays in the normal lane: the shared Raft, WAL and apply threads, which
//! must not be slowed for everyone by one tenant's low priority.
//!
//! **Whole connections move too.** A group that has had [`CONNECTION_BULK_IN_FLIGHT_MIN`]
//! key-value requests in flight at once within the last [`HEAVY_FOR`] is *heavy*; while the
//! member is shared, every connection of a heavy group, and every stream task its HTTP/2
//! connection starts, is polled on the bulk lane: hyper's framing, header decoding and
//! response encoding for a hundred clients cost the normal lane as much as their handlers
//! did. A connection learns its group from its first request ([`ConnectionLane`]); it is
//! checked on every poll and hops between the runtimes when its group's weight changes
//! ([`Roaming`]). Tasks a handler starts for a stream that outlives its request (a watch's
//! writer, a lease keep-alive loop) roam with the connection too ([`spawn`]). The hop is
//! safe because a tokio socket stays registered with the runtime that accepted it, whichever
//! runtime polls it; it costs one task spawn. A kube-apiserver at its usual load keeps a few
//! requests in flight and stays where it is; one listing every resource at start-up, or any
//! tenant past the bound, moves for a second while another tenant is active, which costs it
//! nothing unless the core is contended.
//!
//! **A heavy group's proposals wait for one of a few slots.** Lower priority gives the quiet
//! tenant the core first, but not the shared Raft driver, WAL writer and apply thread: each
//! works through whatever the neighbour has put in front of it when the quiet tenant's write
//! arrives, and with a hundred proposals of the neighbour in flight those batches are large.
//! While the member is shared, a heavy group has at most [`HEAVY_PROPOSALS_MAX`] proposals in
//! flight on this member ([`InFlight::proposal_slot`]); the others wait, in arrival order,
//! before they reach Raft. Each stage then holds a few of the neighbour's entries when a quiet
//! write reaches it. A group alone on its member, and a light one, never wait for a slot.
//!
//! The nice value is mild on purpose: at 19 (a weight of 15 against the normal lane's 1024),
//! a bulk thread preempted while holding a lock a normal thread needs waited behind every
//! normal thread, and the quiet tenant's p99 got worse than with no lanes at all.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Key-value requests of one group in flight on this member before the next one runs on the
/// bulk lane.
pub const NORMAL_LANE_IN_FLIGHT_MAX: usize = 8;

/// How long after a key-value request of another group the member counts as shared.
pub const SHARED_FOR: Duration = Duration::from_millis(500);

/// Key-value requests of one group in flight at once on this member that make it heavy: its
/// connections move to the bulk lane while the member is shared.
///
/// Measured with a neighbour of 16 clients saturating puts beside the quiet tenant of
/// `benches/noisy.sh` (pinned, on disk, quiet client at real-time priority): at 32 the
/// neighbour never became heavy, its connections' framing ran at normal priority, and the
/// quiet p99 rose from 1.6-2.1 to 3.0-3.2 ms (gets' p99 to 1.5-2.7 ms); at 12 it was 2.2 ms
/// beside the neighbour (2.3-2.6 ms alone; gets 0.6-1.1 ms) while the neighbour lost a fifth
/// of its puts per second (BENCHMARKS.md).
pub const CONNECTION_BULK_IN_FLIGHT_MIN: usize = 12;

/// How long a group stays heavy after it last had [`CONNECTION_BULK_IN_FLIGHT_MIN`] requests in
/// flight: long enough that a saturating client's connections do not hop back and forth.
pub const HEAVY_FOR: Duration = Duration::from_secs(1);

/// Proposals of a heavy group in flight at once on a shared member ([`InFlight::proposal_slot`]),
/// by default (`plinth serve --heavy-tenant-max-proposals`).
///
/// Measured with `benches/noisy.sh --pin --quiet-rt` on disk (a tenant putting with 100 clients
/// beside the quiet tenant's Kubernetes profile), the quiet p99 beside the neighbour and the
/// neighbour's puts per second: no cap 3.2-4.1 ms, 17,500-19,000/s; 32: 3.0-3.1 ms,
/// 15,300-16,300/s; 16: 2.3-2.6 ms, 13,500-14,000/s; 8: 2.2-2.5 ms, 11,800-12,100/s
/// (BENCHMARKS.md). 16 takes most of the gain for a quarter of the neighbour's rate.
pub const HEAVY_PROPOSALS_MAX: usize = 16;

/// How much nicer the bulk lane's threads are than the thread that starts them (the process
/// runs at 0 by default): a weight of about 1/10 of the normal lane's under Linux's scheduler.
pub const BULK_NICE: i32 = 10;

/// The bulk lane: built on first use, then shared by every group of the process.
static BULK: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn bulk() -> &'static tokio::runtime::Runtime {
    BULK.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        // From the normal lane's priority, not the spawning thread's: the lane's blocking
        // threads are started by its own (already lowered) workers.
        let nice = (thread_nice() + BULK_NICE).min(19);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("plinth-bulk")
            .enable_all()
            .on_thread_start(move || {
                set_thread_nice(nice);
                ON_BULK.with(|b| b.set(true));
            })
            .build()
            .expect("the bulk lane's runtime starts")
    })
}

thread_local! {
    /// Whether this thread is one of the bulk lane's.
    static ON_BULK: Cell<bool> = const { Cell::new(false) };
}

fn on_bulk() -> bool {
    ON_BULK.with(Cell::get)
}

/// Sets the calling thread's nice value (on Linux it belongs to the thread, not the
/// process). A failure leaves the thread at normal priority, which only costs isolation.
fn set_thread_nice(nice: i32) {
    // SAFETY: a plain system call on the calling thread's own id.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
    }
}

/// The calling thread's nice value.
fn thread_nice() -> i32 {
    // SAFETY: a plain system call on the calling thread's own id. -1 is also a valid nice
    // value, so an error cannot be told from it without errno; a thread may always read its
    // own priority, so there is none to tell.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// Whether a member's key-value requests come from more than one group: which group sent the
/// last one, and until when the member counts as shared. Written only when the sending group
/// changes, so a lone tenant's requests only read it.
#[derive(Debug)]
pub struct Sharing {
    epoch: Instant,
    last_group: AtomicU64,
    /// Milliseconds since `epoch`; 0 until a second group is seen.
    shared_until_ms: AtomicU64,
}

impl Default for Sharing {
    fn default() -> Self {
        Sharing { epoch: Instant::now(), last_group: AtomicU64::new(u64::MAX), shared_until_ms: AtomicU64::new(0) }
    }
}

impl Sharing {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Notes a request of `group` at `now_ms`; whether the member is shared then.
    fn note(&self, group: u64, now_ms: u64) -> bool {
        let last = self.last_group.load(Ordering::Relaxed);
        if last != group {
            self.last_group.store(group, Ordering::Relaxed);
            if last != u64::MAX {
                self.shared_until_ms.store(now_ms + SHARED_FOR.as_millis() as u64, Ordering::Relaxed);
            }
        }
        now_ms < self.shared_until_ms.load(Ordering::Relaxed)
    }
}

/// One group's requests in flight on this member, counted for the choice of lane.
#[derive(Debug)]
pub struct InFlight {
    group: u64,
    count: AtomicUsize,
    sharing: Arc<Sharing>,
    /// Until when (milliseconds since `sharing.epoch`) the group counts as heavy.
    heavy_until_ms: AtomicU64,
    /// The group's proposal slots while it is heavy on a shared member (`None`: no cap).
    heavy_proposals: Option<tokio::sync::Semaphore>,
}

impl InFlight {
    /// Group `group`'s count, on a member whose groups share `sharing`, with
    /// `heavy_proposals` proposal slots while it is heavy (0: no cap; see
    /// [`HEAVY_PROPOSALS_MAX`]).
    pub fn new(group: u64, sharing: Arc<Sharing>, heavy_proposals: usize) -> InFlight {
        InFlight {
            group,
            count: AtomicUsize::new(0),
            sharing,
            heavy_until_ms: AtomicU64::new(0),
            heavy_proposals: (heavy_proposals > 0).then(|| tokio::sync::Semaphore::new(heavy_proposals)),
        }
    }

    /// Runs `request`, on the bulk lane if the group already has [`NORMAL_LANE_IN_FLIGHT_MAX`]
    /// requests in flight and the member is shared. Dropping the returned future (the client went away) aborts the
    /// request on either lane, as it would have on the normal lane alone.
    pub async fn run<F>(&self, request: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let now_ms = self.sharing.now_ms();
        let shared = self.sharing.note(self.group, now_ms);
        let counted = Counted::enter(&self.count);
        if counted.before >= CONNECTION_BULK_IN_FLIGHT_MIN {
            // Written at most every 100 ms, so a saturating group's requests mostly only read.
            let until = now_ms + HEAVY_FOR.as_millis() as u64;
            if self.heavy_until_ms.load(Ordering::Relaxed) + 100 < until {
                self.heavy_until_ms.store(until, Ordering::Relaxed);
            }
        }
        // Already on the bulk lane (the connection moved there): no hop.
        if !shared || counted.before < NORMAL_LANE_IN_FLIGHT_MAX || on_bulk() {
            return request.await;
        }
        match AbortOnDrop(bulk().spawn(request)).await {
            Ok(output) => output,
            // The task is aborted only when this future is dropped, so the error is a panic,
            // which `plinth serve` turns into an abort of the process; elsewhere, pass it on.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Requests in flight now.
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// A proposal's slot, held until its answer: while the group is heavy and the member
    /// shared, waits (in arrival order) until fewer than the group's cap of its proposals
    /// hold one. Otherwise `None` at once: a light group, or one alone on its member, is
    /// never held back, nor is any group when the cap is 0.
    pub async fn proposal_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let slots = self.heavy_proposals.as_ref()?;
        if !self.wants_bulk() {
            return None;
        }
        // The semaphore is never closed.
        slots.acquire().await.ok()
    }

    /// Whether the group's connections belong on the bulk lane now: it is heavy and the
    /// member is shared.
    pub fn wants_bulk(&self) -> bool {
        let until = self.heavy_until_ms.load(Ordering::Relaxed);
        until != 0 && {
            let now_ms = self.sharing.now_ms();
            now_ms < until && now_ms < self.sharing.shared_until_ms.load(Ordering::Relaxed)
        }
    }
}

/// The group a client connection serves, learnt from its first request: the lane its tasks
/// are polled on follows that group's weight ([`Roaming`]). One per accepted connection, put
/// into each of its requests' extensions; a connection that never names a group (a peer's,
/// a metrics scrape) stays in the normal lane.
pub struct ConnectionLane {
    group: OnceLock<Arc<InFlight>>,
    /// The normal lane's runtime (the one that accepted the connection), to come back to.
    normal: tokio::runtime::Handle,
    /// Watch streams open on the connection (`WatchOnConnection`): the connection then writes
    /// at once rather than coalescing its writes (`conn.rs`).
    watches: std::sync::atomic::AtomicUsize,
}

impl ConnectionLane {
    /// A connection accepted on `normal`, the normal lane's runtime.
    pub fn new(normal: tokio::runtime::Handle) -> ConnectionLane {
        ConnectionLane { group: OnceLock::new(), normal, watches: Default::default() }
    }

    /// Counts a watch stream open on the connection until the returned guard drops.
    pub fn watch_opened(self: &Arc<Self>) -> WatchOnConnection {
        self.watches.fetch_add(1, Ordering::Relaxed);
        WatchOnConnection(Arc::clone(self))
    }

    /// Whether a watch stream is open on the connection.
    pub fn has_watches(&self) -> bool {
        self.watches.load(Ordering::Relaxed) > 0
    }

    /// Ties the connection to the group counted by `group` (the first call wins: a
    /// connection serves one group).
    pub fn bind(&self, group: &Arc<InFlight>) {
        if self.group.get().is_none() {
            let _ = self.group.set(group.clone());
        }
    }

    fn wants_bulk(&self) -> bool {
        self.group.get().is_some_and(|g| g.wants_bulk())
    }
}

/// A watch stream open on a connection (see [`ConnectionLane::watch_opened`]).
pub struct WatchOnConnection(Arc<ConnectionLane>);

impl Drop for WatchOnConnection {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The lane of the connection a request with `extensions` came on, if it came on one.
pub fn lane_of(extensions: &http::Extensions) -> Option<Arc<ConnectionLane>> {
    extensions.get::<Arc<ConnectionLane>>().cloned()
}

/// Spawns `task` on the connection lane `lane` ([`lane_of`]), roaming with it ([`Roaming`]);
/// a plain `tokio::spawn` without one (in-process callers). For tasks a handler starts that
/// outlive its request (a watch stream's writer, a lease keep-alive stream), so that they do
/// not stay on the bulk lane after the tenant calms down, nor on the normal lane while it is
/// heavy.
pub fn spawn<F>(lane: Option<Arc<ConnectionLane>>, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match lane {
        Some(lane) => drop(tokio::spawn(Roaming::new(Box::pin(task), lane))),
        None => drop(tokio::spawn(task)),
    }
}

/// A connection's task, or one of its streams' tasks, that moves between the normal and the
/// bulk lane as its connection's group becomes heavy or light. Checked before every poll:
/// when the lane it is on is not the one it wants, it spawns itself (the same boxed future,
/// not yet polled again, so no wake-up is lost) on the other runtime and ends here.
pub struct Roaming {
    future: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    lane: Arc<ConnectionLane>,
}

impl Roaming {
    /// `future`, to be spawned on the runtime of the calling thread (the normal lane, or the
    /// bulk lane when the connection is already there).
    pub fn new(future: Pin<Box<dyn Future<Output = ()> + Send>>, lane: Arc<ConnectionLane>) -> Roaming {
        Roaming { future: Some(future), lane }
    }
}

impl Future for Roaming {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let bulk_wanted = self.lane.wants_bulk();
        if bulk_wanted != on_bulk() {
            if let Some(future) = self.future.take() {
                let moved = Roaming { future: Some(future), lane: self.lane.clone() };
                if bulk_wanted {
                    drop(bulk().spawn(moved));
                } else {
                    drop(self.lane.normal.spawn(moved));
                }
            }
            return Poll::Ready(());
        }
        match self.future.as_mut() {
            Some(future) => future.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// hyper's executor for a client connection's stream tasks: each is spawned on the lane its
/// connection is on, and roams with it.
#[derive(Clone)]
pub struct RoamingExecutor(pub Arc<ConnectionLane>);

impl<F> hyper::rt::Executor<F> for RoamingExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        drop(tokio::spawn(Roaming::new(Box::pin(future), self.0.clone())));
    }
}

/// One request counted in a group's [`InFlight`] until dropped.
struct Counted<'a> {
    count: &'a AtomicUsize,
    before: usize,
}

impl<'a> Counted<'a> {
    fn enter(count: &'a AtomicUsize) -> Counted<'a> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        Counted { count, before }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        thread_nice()
    }

    /// `n` requests of `group` held in flight until the returned semaphore gets `n` permits.
    async fn hold_in_flight(
        group: &Arc<InFlight>,
        n: usize,
    ) -> (Arc<tokio::sync::Semaphore>, tokio::task::JoinSet<()>) {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (group, release) = (group.clone(), release.clone());
            held.spawn(async move { group.run(async move { release.acquire().await.unwrap().forget() }).await });
        }
        while group.get() < n {
            tokio::task::yield_now().await;
        }
        (release, held)
    }

    /// A request of each of `groups` every 20 ms until the returned set is dropped: it keeps
    /// the member shared and a group with the bound in flight heavy. The conditions the tests
    /// assert under would otherwise lapse [`SHARED_FOR`] after the last request, and a loaded
    /// machine can starve the bulk lane's niced threads for that long between two steps.
    fn keep_requesting(groups: &[&Arc<InFlight>]) -> tokio::task::JoinSet<()> {
        let mut set = tokio::task::JoinSet::new();
        for group in groups {
            let group = Arc::clone(group);
            set.spawn(async move {
                loop {
                    group.run(async {}).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        set
    }

    /// Waits (at most ten seconds) until `group` no longer wants the bulk lane.
    async fn until_light(group: &InFlight) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while group.wants_bulk() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!group.wants_bulk(), "light again {HEAVY_FOR:?} after the last heavy request");
    }

    type Poke = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<i32>>;

    /// A task body that answers each poke with the nice value of the thread running it.
    fn reporter() -> (Poke, impl Future<Output = ()> + Send + 'static) {
        let (poke, mut poked) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<i32>>(1);
        let task = async move {
            while let Some(answer) = poked.recv().await {
                let _ = answer.send(nice());
            }
        };
        (poke, task)
    }

    /// The nice value of the thread a [`reporter`] task runs on now.
    async fn ask(poke: &Poke) -> i32 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        poke.send(tx).await.unwrap();
        rx.await.unwrap()
    }

    /// Runs `probe` (a nice value seen by a task) until it gives `expected`, for at most ten
    /// seconds; returns the last value. The lane is chosen at each poll from clocks that a
    /// starved test thread can let lapse for a moment (the member counts as shared for
    /// `SHARED_FOR` after the last switch of groups), so one probe may land on a poll made in
    /// such a moment; the conditions under test are held the whole time, and a task that
    /// never reaches the expected lane still fails.
    async fn eventually<F: Future<Output = i32>>(expected: i32, mut probe: impl FnMut() -> F) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = probe().await;
            if seen == expected || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests under the bound run where they were called; the ones past it run on the
    /// bulk lane's lower-priority threads; the count goes back to zero when they finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_past_the_bound_run_at_lower_priority() {
        let sharing = Arc::new(Sharing::default());
        let lane = Arc::new(InFlight::new(1, sharing.clone(), HEAVY_PROPOSALS_MAX));
        let other = Arc::new(InFlight::new(2, sharing, HEAVY_PROPOSALS_MAX));
        let normal = nice();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let mut held = tokio::task::JoinSet::new();
        for _ in 0..NORMAL_LANE_IN_FLIGHT_MAX {
            let (lane, release) = (lane.clone(), release.clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            held.spawn(async move {
                lane.run(async move {
                    let _ = tx.send(nice());
                    release.acquire().await.unwrap().forget();
                })
                .await
            });
            assert_eq!(rx.await.unwrap(), normal, "a request under the bound stays in the normal lane");
        }
        assert_eq!(lane.get(), NORMAL_LANE_IN_FLIGHT_MAX);
        assert_eq!(lane.run(async { nice() }).await, normal, "a group alone on the member stays in the normal lane");
        // Another group's request makes the member shared.
        assert_eq!(other.run(async { nice() }).await, normal, "a quiet group is in the normal lane");
        let keeper = keep_requesting(&[&other]);
        let past = lane.run(async { nice() }).await;
        assert_eq!(past, (normal + BULK_NICE).min(19), "a request past the bound runs on the bulk lane");
        let blocking = lane.run(async { tokio::task::spawn_blocking(nice).await.unwrap() }).await;
        assert_eq!(blocking, past, "and so does the blocking work it starts, once lowered");
        drop(keeper);
        release.add_permits(NORMAL_LANE_IN_FLIGHT_MAX);
        while held.join_next().await.is_some() {}
        assert_eq!(lane.get(), 0);
        assert_eq!(lane.run(async { nice() }).await, normal, "and the next one is back in the normal lane");
    }

    /// A request dropped while it waits on the bulk lane is aborted there, and uncounted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_request_is_aborted_on_the_bulk_lane() {
        let sharing = Arc::new(Sharing::default());
        let lane = Arc::new(InFlight::new(1, sharing.clone(), HEAVY_PROPOSALS_MAX));
        InFlight::new(2, sharing, HEAVY_PROPOSALS_MAX).run(async {}).await;
        let (release, mut held) = hold_in_flight(&lane, NORMAL_LANE_IN_FLIGHT_MAX).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let dropped = {
            let lane = lane.clone();
            tokio::spawn(async move {
                lane.run(async move {
                    let _keep = tx;
                    std::future::pending::<()>().await
                })
                .await
            })
        };
        while lane.get() < NORMAL_LANE_IN_FLIGHT_MAX + 1 {
            tokio::task::yield_now().await;
        }
        dropped.abort();
        // The sender lives in the bulk task: it is dropped when that task is aborted.
        assert!(rx.await.is_err(), "the bulk task ended");
        release.add_permits(NORMAL_LANE_IN_FLIGHT_MAX);
        while held.join_next().await.is_some() {}
        assert_eq!(lane.get(), 0);
    }

    /// Group 1 with `cap` proposal slots, heavy (the bound in flight) beside group 2 on a
    /// shared member until [`HeavyBeside::end`].
    struct HeavyBeside {
        group: Arc<InFlight>,
        release: Arc<tokio::sync::Semaphore>,
        held: tokio::task::JoinSet<()>,
        keeper: tokio::task::JoinSet<()>,
    }

    impl HeavyBeside {
        async fn start(cap: usize) -> HeavyBeside {
            let sharing = Arc::new(Sharing::default());
            let group = Arc::new(InFlight::new(1, sharing.clone(), cap));
            let other = Arc::new(InFlight::new(2, sharing, cap));
            let (release, held) = hold_in_flight(&group, CONNECTION_BULK_IN_FLIGHT_MIN).await;
            group.run(async {}).await;
            assert!(group.proposal_slot().await.is_none(), "a group alone on its member takes no slot");
            other.run(async {}).await;
            let keeper = keep_requesting(&[&group, &other]);
            assert!(other.proposal_slot().await.is_none(), "a light group takes no slot");
            assert!(group.wants_bulk(), "the group is heavy on a shared member");
            HeavyBeside { group, release, held, keeper }
        }

        async fn end(mut self) {
            drop(self.keeper);
            self.release.add_permits(CONNECTION_BULK_IN_FLIGHT_MIN);
            while self.held.join_next().await.is_some() {}
        }
    }

    /// A heavy group on a shared member has at most [`HEAVY_PROPOSALS_MAX`] proposals in
    /// flight; the next one waits for a slot to be given back. A light group, and a heavy one
    /// alone on its member, take no slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heavy_groups_proposals_wait_for_a_slot_while_the_member_is_shared() {
        let heavy = HeavyBeside::start(HEAVY_PROPOSALS_MAX).await;
        let group = &heavy.group;
        let mut slots = Vec::new();
        for _ in 0..HEAVY_PROPOSALS_MAX {
            slots.push(group.proposal_slot().await.expect("a heavy group on a shared member takes a slot"));
        }
        let mut next = Box::pin(group.proposal_slot());
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut next).await.is_err();
        assert!(waited, "proposal {} of a heavy group waits", HEAVY_PROPOSALS_MAX + 1);
        slots.pop();
        let slot = tokio::time::timeout(Duration::from_secs(5), next).await.expect("a slot given back is taken");
        assert!(slot.is_some());
        drop((slot, slots));
        heavy.end().await;
    }

    /// With a cap of 0 a heavy group on a shared member takes no slot and never waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_cap_means_no_slot() {
        let heavy = HeavyBeside::start(0).await;
        for _ in 0..=HEAVY_PROPOSALS_MAX {
            assert!(heavy.group.proposal_slot().await.is_none(), "no cap: no slot");
        }
        heavy.end().await;
    }

    /// A connection's tasks follow its group: on the normal lane until the group is heavy on
    /// a shared member, then on the bulk lane (with the stream tasks it starts), and back
    /// once the group has been light for [`HEAVY_FOR`].
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heavy_groups_connections_move_to_the_bulk_lane_and_back() {
        let sharing = Arc::new(Sharing::default());
        let group = Arc::new(InFlight::new(1, sharing.clone(), HEAVY_PROPOSALS_MAX));
        let other = Arc::new(InFlight::new(2, sharing, HEAVY_PROPOSALS_MAX));
        let lane = Arc::new(ConnectionLane::new(tokio::runtime::Handle::current()));
        let normal = nice();
        let bulk_nice = (normal + BULK_NICE).min(19);
        // The "connection".
        let (connection, task) = reporter();
        drop(tokio::spawn(Roaming::new(Box::pin(task), lane.clone())));
        assert_eq!(ask(&connection).await, normal, "a connection that named no group stays where it was accepted");
        lane.bind(&group);
        other.run(async {}).await;
        assert_eq!(ask(&connection).await, normal, "a light group's connection stays in the normal lane");

        // CONNECTION_BULK_IN_FLIGHT_MIN requests in flight, then one more: the group is heavy.
        let (release, mut held) = hold_in_flight(&group, CONNECTION_BULK_IN_FLIGHT_MIN).await;
        assert!(!group.wants_bulk(), "not heavy until a request finds the bound reached");
        group.run(async {}).await;
        other.run(async {}).await;
        assert!(group.wants_bulk());
        let keeper = keep_requesting(&[&group, &other]);
        let seen = eventually(bulk_nice, || ask(&connection)).await;
        assert_eq!(seen, bulk_nice, "a heavy group's connection is polled on the bulk lane");
        // A stream task the connection starts runs where the connection is, and roams too.
        let seen = eventually(bulk_nice, || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            hyper::rt::Executor::execute(&RoamingExecutor(lane.clone()), async move {
                let _ = tx.send(nice());
            });
            async move { rx.await.unwrap() }
        })
        .await;
        assert_eq!(seen, bulk_nice, "and so is a stream task it starts");
        // So is a task a handler spawns for its stream (a watch's writer).
        let mut extensions = http::Extensions::new();
        extensions.insert(lane.clone());
        let (handler_task, task) = reporter();
        spawn(lane_of(&extensions), task);
        let seen = eventually(bulk_nice, || ask(&handler_task)).await;
        assert_eq!(seen, bulk_nice, "a handler's task runs on its connection's lane");

        drop(keeper);
        release.add_permits(CONNECTION_BULK_IN_FLIGHT_MIN);
        while held.join_next().await.is_some() {}
        until_light(&group).await;
        assert_eq!(ask(&connection).await, normal, "back in the normal lane once the group is light again");
        assert_eq!(ask(&handler_task).await, normal, "and the handler's task with it");
    }
}
