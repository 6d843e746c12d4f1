//! Alarms applied from the log: etcd's alarm-store answers, the capped applier while NOSPACE
//! is raised, and the list surviving a reopen and travelling in a group snapshot.

mod common;

use common::{Node, G};
use store::{
    Alarm, AlarmAction, AlarmRequest, AlarmType, CommandBody, CommandResponse, Error, LeaseGrantRequest, PutRequest,
    RequestOp, Store, StoreConfig, TxnRequest,
};

fn alarm(n: &mut Node, action: AlarmAction, member_id: u64, alarm: AlarmType) -> Vec<Alarm> {
    let req = AlarmRequest { action: action as i32, member_id, alarm: alarm as i32 };
    match n.exec(CommandBody::Alarm(req)).unwrap() {
        CommandResponse::Alarm(changed) => changed,
        other => panic!("alarm answered {other:?}"),
    }
}

fn put(k: &str) -> PutRequest {
    PutRequest { key: k.to_string().into(), value: "v".into(), ..Default::default() }
}

#[test]
fn nospace_caps_writes_until_disarmed_and_survives_reopen_and_snapshot() {
    let mut n = Node::new();
    n.put("a", "1");
    let rev = n.store.current_revision(G);
    let nospace = Alarm { member_id: 9, alarm: AlarmType::Nospace };
    assert_eq!(alarm(&mut n, AlarmAction::Deactivate, 9, AlarmType::Nospace), vec![], "nothing raised yet");
    assert_eq!(alarm(&mut n, AlarmAction::Activate, 9, AlarmType::Nospace), vec![nospace]);
    assert_eq!(alarm(&mut n, AlarmAction::Activate, 9, AlarmType::Nospace), vec![nospace], "already raised");
    assert_eq!(n.store.alarms(G), vec![nospace]);
    assert_eq!(n.store.current_revision(G), rev, "alarms take no revision");

    // The capped applier: writes that add data fail although the quota has room.
    assert!(matches!(n.exec(CommandBody::Put(put("b"))), Err(Error::NoSpace)));
    let txn_put = TxnRequest { success: vec![RequestOp::put(put("b"))], ..Default::default() };
    assert!(matches!(n.exec(CommandBody::Txn(txn_put.clone())), Err(Error::NoSpace)));
    let grant = CommandBody::LeaseGrant(LeaseGrantRequest { id: 3, ttl: 60 });
    assert!(matches!(n.exec(grant.clone()), Err(Error::NoSpace)));
    // Deletes and read-only txns still apply.
    assert_eq!(n.del("a", "").deleted, 1);
    let txn_read = TxnRequest { success: vec![], ..Default::default() };
    assert!(n.exec(CommandBody::Txn(txn_read)).is_ok());

    // A reopened store holds the alarm, and so does a store installed from a snapshot.
    let path = n.path().to_path_buf();
    let chunks: Vec<Vec<u8>> = n.store.snapshot(G).unwrap().map(|c| c.unwrap()).collect();
    let other = Node::new();
    other.store.install_snapshot(G, chunks.into_iter()).unwrap();
    assert_eq!(other.store.alarms(G), vec![nospace], "the snapshot carries the alarms");
    drop(other);
    let Node { store, dir, next_index, .. } = n;
    drop(store);
    let mut n = Node { store: Store::open(&path, StoreConfig::default()).unwrap(), g: G, next_index, dir };
    assert_eq!(n.store.alarms(G), vec![nospace], "the alarm survives a reopen");
    assert!(matches!(n.exec(CommandBody::Put(put("b"))), Err(Error::NoSpace)));

    // Disarming lets writes through again; a second disarm changes nothing.
    assert_eq!(alarm(&mut n, AlarmAction::Deactivate, 9, AlarmType::Nospace), vec![nospace]);
    assert_eq!(alarm(&mut n, AlarmAction::Deactivate, 9, AlarmType::Nospace), vec![]);
    assert!(n.store.alarms(G).is_empty());
    assert!(n.exec(CommandBody::Put(put("b"))).is_ok());
    assert!(n.exec(CommandBody::Txn(txn_put)).is_ok());
    assert!(n.exec(grant).is_ok());
}

#[test]
fn alarm_commands_are_validated_and_corrupt_is_kept_apart() {
    let mut n = Node::new();
    let get = AlarmRequest { action: AlarmAction::Get as i32, member_id: 1, alarm: AlarmType::Nospace as i32 };
    assert!(matches!(n.exec(CommandBody::Alarm(get)), Err(Error::InvalidCommand(_))), "GET never enters the log");
    let unknown = AlarmRequest { action: AlarmAction::Activate as i32, member_id: 1, alarm: 7 };
    assert!(matches!(n.exec(CommandBody::Alarm(unknown)), Err(Error::InvalidCommand(_))));
    assert_eq!(alarm(&mut n, AlarmAction::Activate, 1, AlarmType::None), vec![], "NONE is never raised");
    let corrupt = Alarm { member_id: 1, alarm: AlarmType::Corrupt };
    assert_eq!(alarm(&mut n, AlarmAction::Activate, 1, AlarmType::Corrupt), vec![corrupt]);
    // Disarming NOSPACE of the same member leaves CORRUPT raised.
    assert_eq!(alarm(&mut n, AlarmAction::Deactivate, 1, AlarmType::Nospace), vec![]);
    assert_eq!(n.store.alarms(G), vec![corrupt]);
}

#[test]
fn corrupt_refuses_every_write_until_disarmed() {
    let mut n = Node::new();
    n.put("a", "1");
    let lease = CommandBody::LeaseGrant(LeaseGrantRequest { id: 5, ttl: 60 });
    assert!(n.exec(lease).is_ok());
    let rev = n.store.current_revision(G);
    let corrupt = Alarm { member_id: 2, alarm: AlarmType::Corrupt };
    assert_eq!(alarm(&mut n, AlarmAction::Activate, 2, AlarmType::Corrupt), vec![corrupt]);

    // etcd's corrupt applier: puts, deletes, txns, compactions, grants and revokes all fail.
    let refused = [
        CommandBody::Put(put("b")),
        CommandBody::DeleteRange(store::DeleteRangeRequest { key: "a".into(), ..Default::default() }),
        CommandBody::Txn(TxnRequest { success: vec![RequestOp::put(put("b"))], ..Default::default() }),
        CommandBody::Compact(store::CompactRequest { revision: rev, physical: false }),
        CommandBody::LeaseGrant(LeaseGrantRequest { id: 6, ttl: 60 }),
        CommandBody::LeaseRevoke(store::LeaseRevokeRequest { id: 5 }),
    ];
    for body in refused {
        let what = format!("{body:?}");
        assert!(matches!(n.exec(body), Err(Error::Corrupt)), "{what} applied under CORRUPT");
    }
    assert_eq!(n.store.current_revision(G), rev, "nothing was written");

    // Disarming it (an alarm change is still applied) lets writes through again.
    assert_eq!(alarm(&mut n, AlarmAction::Deactivate, 2, AlarmType::Corrupt), vec![corrupt]);
    n.put("b", "2");
    assert_eq!(n.store.current_revision(G), rev + 1);
}
