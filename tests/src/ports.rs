//! Race-free loopback port reservation.
//!
//! A port is handed out only while its reservation is held: an exclusive `flock` on
//! `$TMPDIR/plinth-test-ports/<port>.lock`. `flock` locks belong to the open file
//! description, so two threads of one test binary, two test binaries run in parallel and
//! two concurrent `cargo test` runs all exclude each other, and a crashed process releases
//! its ports automatically. Candidates come from 20000..32000, below Linux's ephemeral
//! range (32768..), so outgoing connections of unrelated processes cannot grab a port
//! between the check and the server's own `bind`.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20000;
const SPAN: u32 = 12000;

/// A reserved loopback port. The reservation lasts until this value is dropped.
#[derive(Debug)]
pub struct Port {
    port: u16,
    _lock: File,
}

impl Port {
    pub fn get(&self) -> u16 {
        self.port
    }
}

pub(crate) fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("plinth-test-ports");
    std::fs::create_dir_all(&dir).expect("create port lock dir");
    dir
}

/// Reserves a free loopback TCP port.
pub fn reserve() -> Port {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = lock_dir();
    // Spread concurrent processes over the range so they rarely probe the same ports.
    let base = std::process::id().wrapping_mul(2654435761) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (base + n.wrapping_mul(7)) % SPAN) as u16;
        let path = dir.join(format!("{port}.lock"));
        let Ok(file) = OpenOptions::new().create(true).truncate(false).write(true).open(&path) else {
            continue;
        };
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            continue;
        }
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Port { port, _lock: file };
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// Reserves `n` consecutive free loopback ports (a tenant port base and the ports above it).
pub fn reserve_block(n: u16) -> Vec<Port> {
    let dir = lock_dir();
    for _ in 0..SPAN {
        let first = reserve().get();
        if u32::from(first) + u32::from(n) >= FIRST + SPAN {
            continue;
        }
        let mut block = Vec::with_capacity(usize::from(n));
        for port in first..first + n {
            let path = dir.join(format!("{port}.lock"));
            let Ok(file) = OpenOptions::new().create(true).truncate(false).write(true).open(&path) else { break };
            // SAFETY: flock on a valid, owned file descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                break;
            }
            if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_err() {
                break;
            }
            block.push(Port { port, _lock: file });
        }
        if block.len() == usize::from(n) {
            return block;
        }
    }
    panic!("no {n} consecutive free loopback ports in {FIRST}..{}", FIRST + SPAN);
}
