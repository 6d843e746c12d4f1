//! Differential test harness for Plinth: runs the same operations against real etcd 3.5.1
//! and against `plinth serve`, and compares the responses field by field.
//!
//! * [`cluster::Server`] spawns a single-node server (etcd or plinth, same etcd flags, plus
//!   a test's TLS or auth flags through [`cluster::Options`]) on reserved ports ([`ports`])
//!   with a temp data dir; SIGKILL on drop, `kill9`/`restart`.
//! * [`etcd`] finds or fetches etcd 3.5.1 (`tests/scripts/get-etcd.sh`).
//! * [`members`] runs a cluster of `plinth serve` processes (SIGKILL, SIGSTOP, restart,
//!   members added with `existing` state, per-member flags, waiting for an agreed leader):
//!   the one multi-process harness every cluster test uses.
//! * [`netns`] puts members in network namespaces on one bridge and cuts directions between
//!   them (partitions, asymmetric ones included); [`faults`] makes storage faults: a data dir
//!   on a small tmpfs, an `LD_PRELOAD` shim failing fsync with `EIO`, flipped bytes.
//! * [`certs`] makes a CA and the certificates it signs with rcgen, at run time.
//! * [`ctl`] runs etcdctl/etcdutl with time limits ([`process`]).
//! * [`normalize`] blanks ids, terms, ports, sizes, versions and timings.
//! * [`linearizability`] records what concurrent clients did and checks that the history was
//!   linearizable and that every watch stream kept etcd's guarantees.
//! * [`session::differential`] runs one script on both servers and diffs the transcripts.
//!
//! `PLINTH_DIFF_TARGET=etcd` compares etcd against a second etcd (harness self-check);
//! the default target is plinth (`$PLINTH_BIN` or `target/debug/plinth`), and tests fail
//! when that binary is missing.

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod ctl;
pub mod diff;
pub mod etcd;
pub mod faults;
pub mod linearizability;
pub mod members;
pub mod netns;
pub mod netproxy;
pub mod normalize;
pub mod ports;
#[cfg(test)]
mod ports_tests;
pub mod process;
pub mod session;

pub use cluster::{Kind, Server};
pub use session::{differential, differential_with, target, Session};
