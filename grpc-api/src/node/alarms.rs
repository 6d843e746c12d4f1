//! The alarms of a group (NOSPACE, CORRUPT), as the services and the node read them: the
//! node raises NOSPACE when a write is refused for space, `Maintenance.Alarm` lists, raises
//! and disarms them, and the write paths and health checks refuse what they forbid.

use crate::pb::etcdserverpb::{self as pb, AlarmType};

/// The alarms of this member's group, as its store last applied them. Alarms are raised and
/// disarmed through the log (`store::CommandBody::Alarm`), so every member reads the same
/// list, and it survives restarts. A NOSPACE alarm stays until an operator disarms it, as in
/// etcd; while it is raised, requests that add data fail with "database space exceeded".
pub struct Alarms {
    store: store::Store,
    group: store::GroupId,
}

impl Alarms {
    /// The alarms of `group` in `store`.
    pub fn new(store: store::Store, group: store::GroupId) -> Alarms {
        Alarms { store, group }
    }

    /// Every raised alarm, in the order they were raised.
    pub fn active(&self) -> Vec<pb::AlarmMember> {
        self.store.alarms(self.group).iter().map(alarm_to_pb).collect()
    }

    /// Whether NOSPACE is raised, for any member.
    pub fn nospace(&self) -> bool {
        self.store.alarms(self.group).iter().any(|a| a.alarm == store::AlarmType::Nospace)
    }
}

/// An alarm as etcd's API answers it.
pub fn alarm_to_pb(a: &store::Alarm) -> pb::AlarmMember {
    pb::AlarmMember { member_id: a.member_id, alarm: a.alarm as i32 }
}

/// etcd's name of an alarm type.
pub fn alarm_name(alarm: i32) -> &'static str {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}
