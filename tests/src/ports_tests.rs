//! Unit tests of `ports.rs`, kept apart so that the grpc-api test binaries, which include
//! `ports.rs` by path, do not run them beside their own servers.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;

use crate::ports::{lock_dir, reserve, Port};

#[test]
fn reservations_are_distinct_and_bindable() {
    let ports: Vec<Port> = (0..50).map(|_| reserve()).collect();
    let mut seen: Vec<u16> = ports.iter().map(Port::get).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 50);
    for p in &ports {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.get())).unwrap();
    }
}

#[test]
fn a_held_port_is_not_handed_out_again() {
    let held = reserve();
    let path = lock_dir().join(format!("{}.lock", held.get()));
    let f = OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: flock on a valid fd.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_ne!(rc, 0, "a second lock on a reserved port must fail");
}
