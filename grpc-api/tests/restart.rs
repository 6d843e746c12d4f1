//! Everything acknowledged before a SIGKILL is there after a restart on the same data dir.

mod common;

use common::Server;
use etcd_client::GetOptions;

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let mut server = Server::start(&[]);
    let mut acked = Vec::new();
    {
        let mut c = server.client().await;
        for i in 0..200 {
            let resp = c.put(format!("key{i:03}"), format!("value{i}"), None).await.unwrap();
            acked.push((format!("key{i:03}"), resp.header().unwrap().revision()));
        }
        c.delete("key000", None).await.unwrap();
        let lease = c.lease_grant(600, None).await.unwrap();
        c.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease.id()))).await.unwrap();
    }
    server.restart();
    let mut c = server.client().await;
    let all = c.get("key", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(all.count(), 199);
    for kv in all.kvs() {
        let key = String::from_utf8(kv.key().to_vec()).unwrap();
        let rev = acked.iter().find(|(k, _)| *k == key).unwrap().1;
        assert_eq!(kv.mod_revision(), rev, "{key} keeps its revision");
    }
    assert_eq!(all.header().unwrap().revision(), 203, "200 puts, a delete, a put: revision 203");
    let leased = c.get("leased", None).await.unwrap();
    assert_eq!(leased.kvs().len(), 1);
    assert_eq!(c.leases().await.unwrap().leases().len(), 1, "leases survive a restart");
    // Writes continue from the recovered revision.
    let put = c.put("after", "restart", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 204);
}
