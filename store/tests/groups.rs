//! Per-group settings and group removal: a group's own quota, replicated as a command of
//! its log, enforced for that group alone, kept across a reopen and carried by a snapshot;
//! and a dropped group leaving nothing behind while its neighbours keep their data.

mod common;

use common::{b, Node};
use store::{CommandBody, Error, GroupId, GroupSettings, PutRequest, Store, StoreConfig};

fn put(n: &mut Node, k: &str, bytes: usize) -> Result<(), Error> {
    let body = CommandBody::Put(PutRequest { key: b(k), value: vec![b'v'; bytes].into(), ..Default::default() });
    n.exec(body).map(|_| ())
}

#[test]
fn a_groups_quota_is_its_own_and_survives_reopen_and_snapshot() {
    let mut n = Node::new();
    let other = GroupId(7);
    assert_eq!(n.store.quota_bytes(n.g), StoreConfig::default().quota_bytes_per_group);
    n.exec(CommandBody::GroupSettings(GroupSettings { quota_bytes: 20_000 })).unwrap();
    assert_eq!(n.store.quota_bytes(n.g), 20_000);
    assert_eq!(n.store.quota_setting(n.g), 20_000);
    assert_eq!(n.store.quota_bytes(other), StoreConfig::default().quota_bytes_per_group, "only this group's");
    put(&mut n, "a", 4_000).unwrap();
    put(&mut n, "b", 4_000).unwrap();
    assert!(matches!(put(&mut n, "c", 4_000), Err(Error::NoSpace)), "the group's own quota refuses");

    // The same store's other group is not limited by it.
    let mut neighbour = Node { store: n.store.clone(), g: other, next_index: 1, dir: tempfile::tempdir().unwrap() };
    put(&mut neighbour, "c", 4_000).unwrap();
    put(&mut neighbour, "d", 4_000).unwrap();
    put(&mut neighbour, "e", 4_000).unwrap();

    let chunks: Vec<Vec<u8>> = n.store.snapshot(n.g).unwrap().map(|c| c.unwrap()).collect();
    let installed = Node::new();
    installed.store.install_snapshot(installed.g, chunks.into_iter()).unwrap();
    assert_eq!(installed.store.quota_bytes(installed.g), 20_000, "the snapshot carries the quota");

    let path = n.path().to_path_buf();
    drop(neighbour);
    let Node { store, dir, next_index, g } = n;
    drop(store);
    let mut n = Node { store: Store::open(&path, StoreConfig::default()).unwrap(), g, next_index, dir };
    assert_eq!(n.store.quota_bytes(n.g), 20_000, "the quota survives a reopen");
    // Back to the default.
    n.exec(CommandBody::GroupSettings(GroupSettings { quota_bytes: 0 })).unwrap();
    put(&mut n, "c", 4_000).unwrap();
}

#[test]
fn a_dropped_group_leaves_nothing_and_its_neighbours_keep_theirs() {
    let mut n = Node::new();
    let dropped = GroupId(9);
    let mut gone = Node { store: n.store.clone(), g: dropped, next_index: 1, dir: tempfile::tempdir().unwrap() };
    for i in 0..20 {
        gone.put(&format!("k{i}"), "x");
        n.put(&format!("k{i}"), "y");
    }
    n.store.drop_group(dropped).unwrap();
    assert!(!n.store.groups().contains(&dropped));
    assert_eq!(n.store.applied_index(dropped), 0);
    assert_eq!(gone.all().kvs.len(), 0, "the dropped group's keys are gone");
    assert_eq!(n.all().kvs.len(), 20, "the neighbour keeps its keys");
    // A group created again under the dropped one's id starts from nothing: its first
    // write of a key the dropped group held (and the apply path had cached) is a create.
    let mut again = Node { store: n.store.clone(), g: dropped, next_index: 1, dir: tempfile::tempdir().unwrap() };
    again.put("k3", "z");
    let k3 = again.get("k3").expect("just written");
    assert_eq!((k3.version, k3.create_revision, k3.mod_revision), (1, 2, 2), "{k3:?}");
    n.store.drop_group(dropped).unwrap();
    drop(again);
    let path = n.path().to_path_buf();
    drop(gone);
    let Node { store, dir, next_index, g } = n;
    drop(store);
    let n = Node { store: Store::open(&path, StoreConfig::default()).unwrap(), g, next_index, dir };
    assert!(!n.store.groups().contains(&dropped), "the dropped group comes back after a reopen");
    assert_eq!(n.all().kvs.len(), 20);
}
