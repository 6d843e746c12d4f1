//! This member's identity: its id, its cluster's id and its URLs, fixed when the data dir is
//! created and read back on every restart (flags about the initial cluster are then ignored,
//! as etcd ignores them).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File in the data dir holding the identity.
const MEMBER_FILE: &str = "member.json";

/// One member of the cluster as `MemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The identity persisted in the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Vec<Member>,
}

impl Identity {
    /// Loads the identity from `data_dir`, or creates it from the flags on first start.
    pub fn load_or_create(
        data_dir: &Path,
        name: &str,
        peer_urls: Vec<String>,
        client_urls: Vec<String>,
        cluster_token: &str,
    ) -> anyhow::Result<(Identity, bool)> {
        let path = data_dir.join(MEMBER_FILE);
        if path.exists() {
            let bytes = std::fs::read(&path)?;
            let id: Identity =
                serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok((id, false));
        }
        let member_id = id_hash(&[cluster_token, &peer_urls.join(",")]);
        let cluster_id = id_hash(&[cluster_token, &member_id.to_string()]);
        let identity = Identity {
            cluster_id,
            member_id,
            members: vec![Member { id: member_id, name: name.to_string(), peer_urls, client_urls, is_learner: false }],
        };
        identity.save(data_dir)?;
        Ok((identity, true))
    }

    /// Writes the identity atomically (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = data_dir.join(format!("{MEMBER_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, data_dir.join(MEMBER_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }
}

/// A non-zero 64-bit id from strings (FNV-1a, then a final mix).
fn id_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_restart_and_ignores_new_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = Identity::load_or_create(
            dir.path(),
            "n1",
            vec!["http://127.0.0.1:2380".into()],
            vec!["http://127.0.0.1:2379".into()],
            "tok",
        )
        .unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(dir.path(), "other", vec![], vec![], "other").unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_ne!(a.member_id, 0);
        assert_ne!(a.cluster_id, a.member_id);
    }
}
