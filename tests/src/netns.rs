//! Network partitions between real member processes: every member in its own network
//! namespace, all joined to one bridge in the test's namespace, and cuts made per direction.
//!
//! ```text
//!   root namespace (the test and its clients)        member namespaces
//!   bridge plf<pid>b<k>  10.123.X.254/24 ──┬── veth ── eth0 10.123.X.1   n1
//!                                          ├── veth ── eth0 10.123.X.2   n2
//!                                          └── veth ── eth0 10.123.X.n   nn
//! ```
//!
//! A cut of the direction A → B is one routing rule in A's namespace:
//! `ip rule add to <B> ipproto tcp dport <B's peer port> prohibit`. Every member sends its
//! Raft messages on a connection it opens to the other member's peer port (the answers come
//! back on the other member's own connection), so the rule silences A towards B and leaves
//! B → A whole: B is heard by A, A is not heard by B. Cutting both directions is a full
//! partition of the pair. Clients in the root namespace reach every member's client port
//! throughout, as clients on either side of a real partition would. A rule change flushes
//! the route cache, so it also applies to connections already open.
//!
//! No iptables or nft binary is needed, and `tc netem` is not used.
//!
//! Everything made here (namespaces, veths, the bridge) is deleted on drop, also when the
//! test fails; names carry the test's pid so parallel runs never collide.
//!
//! CAVEATS:
//! - Only the peer ports are cut; a member's client port stays reachable from every member
//!   (Plinth members talk to each other on peer ports only).
//! - No delay or loss: a direction is either open or cut.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The address block every test network is carved from (`10.123.X.0/24`).
const NET_PREFIX: &str = "10.123";

/// Runs `ip <args>`; panics with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Runs `ip <args>`, ignoring failures (clean-up of what may already be gone).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// One bridge and one namespace per member, with the directions cut so far.
pub struct Net {
    bridge: String,
    /// `10.123.X`: the third octet is this network's.
    subnet: String,
    namespaces: Vec<String>,
    /// The peer port of each member, for the rules that cut directions towards it.
    peer_ports: Vec<u16>,
    /// Directions `(from, to)` cut now.
    cut: BTreeSet<(usize, usize)>,
}

impl Net {
    /// Makes the bridge and `n` namespaces, each with its veth up and an address on the bridge's
    /// subnet. Panics (after deleting what it made) when the host refuses.
    pub fn new(n: usize) -> Net {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!((1..=200).contains(&n), "{n} members do not fit one test network");
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        // A /24 no other network of this host uses, chosen from the pid so that parallel runs
        // start from different places.
        let third = (0..250u32)
            .map(|j| (pid.wrapping_mul(7).wrapping_add(k).wrapping_add(j)) % 250 + 1)
            .find(|t| {
                let out = Command::new("ip").args(["-4", "addr", "show"]).output().expect("ip addr");
                !String::from_utf8_lossy(&out.stdout).contains(&format!(" {NET_PREFIX}.{t}."))
            })
            .expect("a free 10.123.X.0/24");
        let mut net = Net {
            bridge: format!("plf{pid}b{k}"),
            subnet: format!("{NET_PREFIX}.{third}"),
            namespaces: Vec::new(),
            peer_ports: Vec::new(),
            cut: BTreeSet::new(),
        };
        assert!(net.bridge.len() <= 15, "interface name {} too long", net.bridge);
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}.254/24", net.subnet), "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        for i in 0..n {
            let ns = format!("plf-{pid}-{k}-n{}", i + 1);
            ip(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            let veth = format!("plf{pid}v{k}x{i}");
            assert!(veth.len() <= 15, "interface name {veth} too long");
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &veth, "master", &net.bridge, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.host(i)), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Member `i`'s address.
    pub fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Member `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// Tells the network each member's peer port (needed before any cut).
    pub fn set_peer_ports(&mut self, ports: Vec<u16>) {
        assert_eq!(ports.len(), self.namespaces.len(), "one peer port per member");
        self.peer_ports = ports;
    }

    fn rule(&self, verb: &str, from: usize, to: usize) {
        let port = self.peer_ports.get(to).unwrap_or_else(|| panic!("no peer port for member {to}")).to_string();
        let dst = format!("{}/32", self.host(to));
        let args: &[&str] =
            &["-n", &self.namespaces[from], "rule", verb, "to", &dst, "ipproto", "tcp", "dport", &port, "prohibit"];
        if verb == "add" {
            ip(args);
        } else {
            ip_quiet(args);
        }
    }

    /// Cuts the direction `from` → `to`: `to` no longer hears `from`.
    pub fn cut(&mut self, from: usize, to: usize) {
        assert_ne!(from, to, "a member cannot be cut from itself");
        if self.cut.insert((from, to)) {
            self.rule("add", from, to);
        }
    }

    /// Cuts both directions between every member of `side` and every member not in it.
    pub fn split(&mut self, side: &[usize]) {
        for a in side.iter().copied() {
            for b in (0..self.namespaces.len()).filter(|b| !side.contains(b)) {
                self.cut(a, b);
                self.cut(b, a);
            }
        }
    }

    /// Restores every direction.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cut) {
            self.rule("del", from, to);
        }
    }

    /// The directions cut now.
    pub fn cuts(&self) -> &BTreeSet<(usize, usize)> {
        &self.cut
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the other end.
        for ns in &self.namespaces {
            ip_quiet(&["netns", "del", ns]);
        }
        ip_quiet(&["link", "del", &self.bridge]);
    }
}
