//! A member hosting 1,000 tenants is killed with SIGKILL and restarted (the density issue's
//! "restart of a member hosting 1,000 tenants").
//!
//! `MEMBERS` members with a tenant port block each. 1,000 tenants are created one after the
//! other through the admin service (`plinth.v1.Tenants`, in process: a CLI process per
//! tenant would cost more than the creates). Tenant t writes key `k` 1 + t % 3 times through
//! its port on member t % `MEMBERS`, so tenants end at different revisions (2, 3 or 4), and
//! each value names its tenant. The last member is killed; with more than one member, every
//! tenth tenant writes `k` once more through member 0 while it is down, so the restarted
//! member has entries to catch up on. It restarts, and every tenant must answer a
//! linearizable get of `k` on the restarted member's port for that tenant with its own value,
//! version, create and mod revision, and its own current revision in the header (the revision
//! its last put answered; a put retried after an error may have applied twice, and then the
//! test asks for no fewer revisions than it saw). A mix-up of
//! two tenants' groups, a tenant the restart did not bring back, a listener that did not open
//! and a group that did not catch up all fail it.
//!
//! One member, because of the time: with three members the debug build on a 2-core machine
//! took 81 s when the machine was otherwise quiet, but 4 to 7 minutes while other builds
//! loaded it (most of it creating the tenants: every group ticks and heartbeats on every
//! member), close to the phases' bounds; one member takes 23 to 44 s. `MEMBERS = 3` runs
//! the same test on three. Every wait is bounded; the
//! phases' times go to stderr. The test does not depend on idle groups hibernating.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use grpc_api::pb::plinthv1 as pb;
use plinth_tests::members::Members;
use plinth_tests::ports;

const TENANTS: u16 = 1000;
const MEMBERS: usize = 1;
/// The member killed and restarted.
const VICTIM: usize = MEMBERS - 1;
/// Clients working at once in the write and check phases.
const CLIENTS: u16 = 16;
/// Every this many tenants, one write lands while the victim is down.
const WRITE_WHILE_DOWN_EVERY: u16 = 10;
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds of the phases (each far above what it takes; a phase past its bound fails).
const CREATE_PHASE: Duration = Duration::from_secs(240);
const WRITE_PHASE: Duration = Duration::from_secs(120);
const CHECK_PHASE: Duration = Duration::from_secs(180);

/// Puts of `k` tenant `t` makes before the kill.
fn puts_before(t: u16) -> i64 {
    1 + i64::from(t % 3)
}

/// Whether tenant `t` writes once more while the victim is down (only when others serve it).
fn writes_while_down(t: u16) -> bool {
    MEMBERS > 1 && t.is_multiple_of(WRITE_WHILE_DOWN_EVERY)
}

/// Puts of `k` tenant `t` makes in all.
fn puts_total(t: u16) -> i64 {
    puts_before(t) + i64::from(writes_while_down(t))
}

fn value(t: u16, put: i64) -> String {
    format!("t{t}-{put}")
}

/// The open-file limit raised to its hard limit: each member holds a listener per tenant,
/// and this process a lock file per reserved port; the members inherit it.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn connect(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(8));
    Client::connect([endpoint], Some(opts)).await
}

/// Creates tenant `name` through the admin service, retrying what a busy or electing
/// cluster answers, until `deadline`.
async fn create(
    admin: &mut pb::tenants_client::TenantsClient<tonic::transport::Channel>,
    name: &str,
    deadline: Instant,
) {
    loop {
        let request = pb::CreateTenantRequest { name: name.to_owned(), ..Default::default() };
        match admin.create(request).await {
            Ok(_) => return,
            // A retry of a create that did apply.
            Err(s) if s.code() == tonic::Code::AlreadyExists => return,
            Err(s) => {
                assert!(Instant::now() < deadline, "create {name}: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `http://127.0.0.1:<member's tenant port of t>`
fn endpoint(bases: &[u16], member: usize, t: u16) -> String {
    format!("http://127.0.0.1:{}", bases[member] + t)
}

/// Runs `job` for every tenant, `CLIENTS` at a time; a failed job fails the test with the
/// members' log tails.
async fn for_every_tenant<F, Fut>(cluster: &Members, tenants: Vec<u16>, job: F)
where
    F: Fn(u16) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let job = Arc::new(job);
    let tenants = Arc::new(tenants);
    let mut workers = Vec::new();
    for w in 0..CLIENTS {
        let (job, tenants) = (job.clone(), tenants.clone());
        workers.push(tokio::spawn(async move {
            for &t in tenants.iter().skip(usize::from(w)).step_by(usize::from(CLIENTS)) {
                job(t).await;
            }
        }));
    }
    for w in workers {
        if let Err(e) = w.await {
            panic!("{e}\n{}", cluster.logs());
        }
    }
}

/// What the test knows of a tenant's key after its writes: the revision its last put
/// answered, and whether any put was retried (a put that failed may still have applied, so a
/// retried tenant may be a revision or more ahead of what the test saw).
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    revision: i64,
    retried: bool,
}

type Ledger = Arc<std::sync::Mutex<std::collections::HashMap<u16, Written>>>;

/// Puts `k` = `value(t, put)` through `endpoint`, retrying (a tenant port opening, a group
/// electing a leader after the kill, a put timing out on a loaded machine) until `deadline`;
/// returns the put's revision and whether it was retried.
async fn put(endpoint: &str, t: u16, put: i64, deadline: Instant) -> (i64, bool) {
    let mut retried = false;
    loop {
        let outcome = match connect(endpoint).await {
            Ok(mut c) => c.put("k", value(t, put), None).await.map(|r| r.header().expect("header").revision()),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(revision) => return (revision, retried),
            Err(e) => {
                retried = true;
                assert!(Instant::now() < deadline, "tenant t{t}: put {put} through {endpoint}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[test]
fn a_member_hosting_1000_tenants_restarts_and_serves_each_its_own_data() {
    raise_open_files();
    let started = Instant::now();
    let blocks: Vec<Vec<ports::Port>> = (0..MEMBERS).map(|_| ports::reserve_block(TENANTS + 1)).collect();
    let bases: Arc<Vec<u16>> = Arc::new(blocks.iter().map(|b| b[0].get()).collect());
    let mut cluster = Members::create(MEMBERS, &[]);
    for (i, base) in bases.iter().enumerate() {
        cluster.members[i].flags = vec!["--tenant-client-port-base".into(), base.to_string()];
        cluster.spawn(i);
    }
    let ledger: Ledger = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    rt.block_on(async {
        cluster.wait_leader(LEADER_TIMEOUT).await;
        let phase = Instant::now();
        let deadline = phase + CREATE_PHASE;
        let mut admin = pb::tenants_client::TenantsClient::connect(cluster.members[0].endpoint())
            .await
            .expect("connect to the admin service");
        for t in 1..=TENANTS {
            create(&mut admin, &format!("t{t}"), deadline).await;
        }
        eprintln!("created {TENANTS} tenants in {:.1} s", phase.elapsed().as_secs_f64());

        let phase = Instant::now();
        let deadline = phase + WRITE_PHASE;
        let b = bases.clone();
        let l = ledger.clone();
        for_every_tenant(&cluster, (1..=TENANTS).collect(), move |t| {
            let through = endpoint(&b, usize::from(t) % b.len(), t);
            let l = l.clone();
            async move {
                let mut w = Written::default();
                for p in 0..puts_before(t) {
                    let (revision, retried) = put(&through, t, p, deadline).await;
                    w.retried |= retried;
                    // Each tenant counts its own revisions from 1: the first put is revision 2
                    // unless a failed attempt applied too.
                    if !w.retried {
                        assert_eq!(revision, 2 + p, "tenant t{t}'s revision after put {p}");
                    }
                    assert!(revision > w.revision, "tenant t{t}'s revision went from {} to {revision}", w.revision);
                    w.revision = revision;
                }
                l.lock().expect("ledger").insert(t, w);
            }
        })
        .await;
        eprintln!("wrote every tenant in {:.1} s", phase.elapsed().as_secs_f64());
    });

    cluster.members[VICTIM].kill9();
    rt.block_on(async {
        let phase = Instant::now();
        let deadline = phase + WRITE_PHASE;
        let down: Vec<u16> = (1..=TENANTS).filter(|t| writes_while_down(*t)).collect();
        let count = down.len();
        let b = bases.clone();
        let l = ledger.clone();
        for_every_tenant(&cluster, down, move |t| {
            let through = endpoint(&b, 0, t);
            let l = l.clone();
            async move {
                // A group the victim led elects another leader first; a put to the dead leader
                // meanwhile times out and is retried (it may apply twice: same value).
                let (revision, retried) = put(&through, t, puts_before(t), deadline).await;
                let mut ledger = l.lock().expect("ledger");
                let w = ledger.entry(t).or_default();
                assert!(revision > w.revision, "tenant t{t}'s revision went from {} to {revision}", w.revision);
                *w = Written { revision, retried: w.retried || retried };
            }
        })
        .await;
        eprintln!("wrote {count} tenants with member {VICTIM} down in {:.1} s", phase.elapsed().as_secs_f64());
    });

    let phase = Instant::now();
    cluster.spawn(VICTIM);
    rt.block_on(async {
        let deadline = phase + CHECK_PHASE;
        let b = bases.clone();
        let l = ledger.clone();
        for_every_tenant(&cluster, (1..=TENANTS).collect(), move |t| {
            let on_victim = endpoint(&b, VICTIM, t);
            let written = l.lock().expect("ledger").get(&t).copied().expect("every tenant wrote");
            async move {
                loop {
                    // Linearizable (the default): answered once the restarted member has applied
                    // everything committed before the read, so it has caught up.
                    let got = match connect(&on_victim).await {
                        Ok(mut c) => c.get("k", None).await,
                        Err(e) => Err(e),
                    };
                    match got {
                        Ok(r) => {
                            let kv =
                                r.kvs().first().unwrap_or_else(|| panic!("tenant t{t}: no k on the restarted member"));
                            let last = puts_total(t) - 1;
                            assert_eq!(kv.value_str().expect("utf-8"), value(t, last), "tenant t{t}'s value");
                            assert_eq!(kv.create_revision(), 2, "tenant t{t}'s create revision");
                            // The revision its last put answered; a retried put may have applied
                            // twice (more revisions, never fewer, never another tenant's).
                            let (version, mod_revision) = (kv.version(), kv.mod_revision());
                            if written.retried {
                                assert!(mod_revision >= written.revision, "tenant t{t}: {mod_revision} < {written:?}");
                            } else {
                                assert_eq!(mod_revision, written.revision, "tenant t{t}'s mod revision");
                                assert_eq!(version, puts_total(t), "tenant t{t}'s version");
                            }
                            // Only `k` is ever written in a tenant: one revision per version.
                            assert_eq!(mod_revision, 1 + version, "tenant t{t}'s mod revision and version");
                            assert_eq!(r.header().expect("header").revision(), mod_revision, "tenant t{t}'s revision");
                            break;
                        }
                        Err(e) => {
                            assert!(Instant::now() < deadline, "tenant t{t} not served on the restarted member: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        })
        .await;
    });
    eprintln!(
        "restarted member {VICTIM} served all {TENANTS} tenants {:.1} s after its start; whole test {:.1} s",
        phase.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
