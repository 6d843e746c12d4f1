//! A TCP proxy that makes a link slow and lossy: every byte through it is held for a delay
//! (plus jitter), some chunks stall as a retransmission after a lost packet would, and some
//! connections are cut. Members advertise the proxy's port as their peer URL and listen on
//! their own, so every peer connection to a member goes through its proxy.
//!
//! Loss on a TCP link does not drop bytes from the stream: the sender retransmits, and the
//! bytes after the lost packet wait for it (head-of-line blocking). The proxy models exactly
//! that: a "lost" chunk is delivered after an extra stall, and the chunks behind it are held
//! until it is. A cut closes both sides, as a connection reset or a dead middlebox does;
//! the member reconnects.
//!
//! `tc netem` is not available on these machines; this is the test's own network.
//!
//! Bounded: each direction of a connection queues at most [`QUEUE_CHUNKS`] chunks of at most
//! [`CHUNK_BYTES`] (the reader waits when the queue is full, as a full TCP window would make
//! the sender wait); at most [`CONNECTIONS_MAX`] connections are open at once (more are
//! refused by closing them); every thread ends within [`POLL`] of its connection closing or
//! the proxy being dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest chunk read and forwarded at once.
const CHUNK_BYTES: usize = 64 << 10;
/// Chunks queued per direction of a connection.
const QUEUE_CHUNKS: usize = 256;
/// Connections open at once through one proxy.
const CONNECTIONS_MAX: usize = 64;
/// How often idle threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// What the link does to the bytes through it, changed at any time with [`Proxy::set`]
/// (chunks already queued keep the delivery time they were given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Added to every chunk, in each direction.
    pub delay: Duration,
    /// Up to this much more, drawn per chunk (order is kept: a chunk never overtakes the
    /// one before it).
    pub jitter: Duration,
    /// Chunks in a thousand that stall, as a lost packet's retransmission would.
    pub stall_per_mille: u32,
    /// How long a stalled chunk (and everything behind it) waits.
    pub stall: Duration,
    /// Chunks in a thousand at which the connection is cut.
    pub cut_per_mille: u32,
}

impl Conditions {
    /// A clean link: nothing held, nothing cut.
    pub const CLEAN: Conditions = Conditions {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        stall_per_mille: 0,
        stall: Duration::ZERO,
        cut_per_mille: 0,
    };

    pub fn is_clean(&self) -> bool {
        *self == Conditions::CLEAN
    }
}

/// What every thread of one proxy shares.
struct Shared {
    conditions: Mutex<Conditions>,
    stop: AtomicBool,
    /// splitmix64 state: the draws of all connections, seeded once.
    rng: Mutex<u64>,
    connections: AtomicUsize,
    /// Connections cut by [`Conditions::cut_per_mille`].
    cuts: AtomicUsize,
    /// Chunks stalled by [`Conditions::stall_per_mille`].
    stalls: AtomicUsize,
}

impl Shared {
    fn draw(&self) -> u64 {
        let mut s = self.rng.lock().expect("rng lock");
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn per_mille(&self, n: u32) -> bool {
        n > 0 && self.draw() % 1000 < u64::from(n)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running proxy from a listening socket to `target`; dropping it stops every thread and
/// closes every connection through it.
pub struct Proxy {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Forwards every connection accepted on `listener` to `target`, with clean conditions
    /// until [`Proxy::set`]. `seed` fixes the draws (their timing still varies).
    pub fn start(listener: TcpListener, target: SocketAddr, seed: u64) -> Proxy {
        listener.set_nonblocking(true).expect("non-blocking proxy listener");
        let shared = Arc::new(Shared {
            conditions: Mutex::new(Conditions::CLEAN),
            stop: AtomicBool::new(false),
            rng: Mutex::new(seed),
            connections: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
            stalls: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("netproxy-accept".to_owned())
            .spawn(move || accept_loop(listener, target, s))
            .expect("spawn proxy thread");
        Proxy { shared, accept: Some(accept) }
    }

    /// Changes the conditions for every chunk read from now on.
    pub fn set(&self, c: Conditions) {
        *self.shared.conditions.lock().expect("conditions lock") = c;
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::Relaxed)
    }

    /// Chunks stalled so far.
    pub fn stalls(&self) -> usize {
        self.shared.stalls.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopped() {
        pumps.retain(|p| !p.is_finished());
        match listener.accept() {
            Ok((inbound, _)) => {
                if shared.connections.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
                    continue; // Dropped: closed, as an overloaded middlebox would.
                }
                let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    continue; // The member is down: the connection is closed, as it would be.
                };
                if inbound.set_nonblocking(false).is_err() {
                    continue;
                }
                shared.connections.fetch_add(1, Ordering::Relaxed);
                pumps.extend(connect(inbound, outbound, &shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for p in pumps {
        let _ = p.join();
    }
}

/// Starts the four threads of one connection (a reader and a writer per direction).
fn connect(a: TcpStream, b: TcpStream, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    // Every thread gets its own handles: the stream it reads or writes, and both ends to
    // close when it ends (both directions close together).
    let handles = || -> std::io::Result<(TcpStream, TcpStream, Pair)> {
        Ok((a.try_clone()?, b.try_clone()?, (a.try_clone(), b.try_clone())))
    };
    let (Ok(h1), Ok(h2)) = (handles(), handles()) else {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        return Vec::new();
    };
    // The last of the four threads releases the connection's slot.
    let alive = Arc::new(AtomicUsize::new(4));
    let mut threads = Vec::new();
    // a -> b with h1, b -> a with h2.
    for (reader, writer, pair1, pair2) in
        [(h1.0, h1.1, h1.2, (a.try_clone(), b.try_clone())), (h2.1, h2.0, h2.2, (a.try_clone(), b.try_clone()))]
    {
        let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
        let (s1, s2) = (shared.clone(), shared.clone());
        let (k1, k2) = (alive.clone(), alive.clone());
        threads.push(std::thread::spawn(move || {
            read_side(reader, tx, &s1, pair1);
            release(&k1, &s1);
        }));
        threads.push(std::thread::spawn(move || {
            write_side(writer, rx, &s2, pair2);
            release(&k2, &s2);
        }));
    }
    threads
}

fn release(alive: &AtomicUsize, shared: &Shared) {
    if alive.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

type Pair = (std::io::Result<TcpStream>, std::io::Result<TcpStream>);

fn close(pair: &Pair) {
    for s in [&pair.0, &pair.1].into_iter().flatten() {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Reads chunks and queues each with the time it may be delivered.
fn read_side(mut r: TcpStream, tx: SyncSender<(Instant, Vec<u8>)>, shared: &Shared, both: Pair) {
    let _ = r.set_read_timeout(Some(POLL));
    let mut last = Instant::now();
    let mut buf = vec![0u8; CHUNK_BYTES];
    while !shared.stopped() {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                continue
            }
            Err(_) => break,
        };
        let c = *shared.conditions.lock().expect("conditions lock");
        if shared.per_mille(c.cut_per_mille) {
            shared.cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let jitter = if c.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(shared.draw() % (c.jitter.as_micros() as u64 + 1))
        };
        let mut due = Instant::now() + c.delay + jitter;
        if shared.per_mille(c.stall_per_mille) {
            shared.stalls.fetch_add(1, Ordering::Relaxed);
            due += c.stall;
        }
        // In order, as TCP delivers: nothing overtakes a held chunk.
        due = due.max(last);
        last = due;
        let mut item = (due, buf[..n].to_vec());
        loop {
            match tx.try_send(item) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    if shared.stopped() {
                        close(&both);
                        return;
                    }
                    item = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    close(&both);
                    return;
                }
            }
        }
    }
    close(&both);
}

/// Delivers queued chunks when they are due.
fn write_side(mut w: TcpStream, rx: Receiver<(Instant, Vec<u8>)>, shared: &Shared, both: Pair) {
    let _ = w.set_write_timeout(Some(Duration::from_secs(5)));
    loop {
        let (due, bytes) = match rx.recv_timeout(POLL) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) if !shared.stopped() => continue,
            Err(_) => break,
        };
        while let Some(wait) = due.checked_duration_since(Instant::now()) {
            if shared.stopped() {
                close(&both);
                return;
            }
            std::thread::sleep(wait.min(POLL));
        }
        if w.write_all(&bytes).is_err() {
            break;
        }
    }
    close(&both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (addr, t)
    }

    fn proxy_to(target: SocketAddr) -> (Proxy, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = l.local_addr().expect("addr");
        (Proxy::start(l, target, 7), addr)
    }

    fn round_trip(c: &mut TcpStream, msg: &[u8]) -> Duration {
        let started = Instant::now();
        c.write_all(msg).expect("write");
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got).expect("read");
        assert_eq!(got, msg, "bytes changed on the way");
        started.elapsed()
    }

    #[test]
    fn delays_both_directions_and_keeps_the_bytes() {
        let (echo, _t) = echo_server();
        let (proxy, addr) = proxy_to(echo);
        let mut c = TcpStream::connect(addr).expect("connect");
        assert!(round_trip(&mut c, b"clean") < Duration::from_millis(100));
        proxy.set(Conditions { delay: Duration::from_millis(40), ..Conditions::CLEAN });
        let rtt = round_trip(&mut c, b"slow");
        assert!(rtt >= Duration::from_millis(80), "a 40 ms link each way answered in {rtt:?}");
        proxy.set(Conditions::CLEAN);
        assert!(round_trip(&mut c, b"clean again") < Duration::from_millis(100));
    }

    #[test]
    fn a_stall_holds_what_follows_in_order() {
        let (echo, _t) = echo_server();
        let (proxy, addr) = proxy_to(echo);
        let mut c = TcpStream::connect(addr).expect("connect");
        proxy.set(Conditions { stall_per_mille: 1000, stall: Duration::from_millis(60), ..Conditions::CLEAN });
        for i in 0..5u8 {
            let msg = [i; 100];
            assert!(round_trip(&mut c, &msg) >= Duration::from_millis(120));
        }
        assert!(proxy.stalls() >= 10);
    }

    #[test]
    fn a_cut_closes_the_connection() {
        let (echo, _t) = echo_server();
        let (proxy, addr) = proxy_to(echo);
        let mut c = TcpStream::connect(addr).expect("connect");
        proxy.set(Conditions { cut_per_mille: 1000, ..Conditions::CLEAN });
        c.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        c.write_all(b"x").expect("write");
        let mut buf = [0u8; 1];
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)), "the cut connection still answered");
        assert_eq!(proxy.cuts(), 1);
    }
}
