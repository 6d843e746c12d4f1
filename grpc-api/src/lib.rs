//! grpc-api: etcd's v3 API over Plinth's replicated log and MVCC store.
//!
//! This crate is the only one that knows both the protocol and the machinery. It translates
//! etcd's protobuf requests into `store::Command`s proposed through `raft-log`, serves reads
//! (ranges and read-only txns, as etcd does) from the store after a ReadIndex barrier, runs the watch streams and lease timing, and
//! exposes HTTP health and Prometheus metrics. The `plinth` binary lives here.
//!
//! ```text
//!  gRPC request ──► service (kv/watch/lease/cluster/maintenance/auth/tenants)
//!                     │ validate, build store::Command
//!  ─ ─ ─ ─ ─ ─ ─ ─ ─ ─│─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ ─ services above, node/ below ─ ─ ─ ─ ─
//!                     ▼
//!                   Node::propose ──► raft-log DriverHandle ──► WAL (group commit)
//!                     ▲                                  │ committed entries
//!                     │ waiter (request id)              ▼
//!                   Applier::apply ◄──────────── raft-log apply worker
//!                     │ store.apply (one WriteBatch), lessor, answer waiter
//! ```
//!
//! Modules come in two layers. The node tree (`node/`) is what makes the process a member:
//! `node` itself (`Node`, `GroupRuntime`, `Groups`, proposals and waiters, the read
//! barrier), `node::apply` (the `Applier`), `node::membership` (`member.json` and the live
//! member list), `node::peer` and `node::peer_tls` (the peer transport), `node::tenants` (the
//! tenant registry and reconciler), `node::lessor`, `node::limits`, `node::shares`, `node::lanes`,
//! `node::alarms` and the metrics (`node::metrics`, `node::grpc_metrics`,
//! `node::process_metrics`). The services sit on it: `kv`, `watch`, `lease`,
//! `maintenance`, `cluster`, `auth`, `lock` and `election` (etcd's `v3lockpb.Lock` and
//! `v3electionpb.Election`, over the recipe steps in `recipe`), `gateway` (etcd's JSON
//! gateway at `/v3/...`), `tenants` (the tenant admin API), `backup`'s
//! `Backups` service and `http`; `conn` is the HTTP server every listener runs, `serve`
//! wires both layers into the binary, and `tenant_cli`,
//! `migrate` and `backup::cli` are its client-side commands. Shared by both layers: `pb`,
//! `error`, `config`, `auth_config`, `tls`, `version` and `backup`'s formats. Nothing under
//! `node/` uses a service or `serve` (checked by `tests/module_rule.rs`): what the node
//! needs from above, the client service of a group and the server of a tenant port, `serve`
//! hands to it (`node::tenants::ServiceFactory`, `node::tenants::PortServer`).
//!
//! Guarantees:
//! - Every client-visible error carries etcd's gRPC code and exact message (`error.rs`).
//! - Every response carries a full header (cluster id, member id, revision, raft term).
//! - `/metrics` carries etcd 3.5's series (names, label names, types, help texts, buckets)
//!   with measured values, for the etcd mixin and kube tooling; the request path pays two
//!   cached counter increments per call for them, and one atomic add per message for the
//!   client byte counters (`codec.rs`). Where each value comes from: `node/metrics.rs` and
//!   docs/ARCHITECTURE.md, "Metrics".
//! - A write is answered only after this member applied it; a linearizable read only after
//!   this member applied everything committed before the read began.
//! - Every queue and buffer has a named bound: proposal waiters (`WAITERS_MAX`) and
//!   membership waiters (`CONF_WAITERS_MAX`); per watch stream, the store's channel and
//!   `SEND_BUFFER` responses; per keep-alive stream, `KEEPALIVE_BUFFER`; per peer,
//!   `PEER_QUEUE_MSGS_MAX` messages and `STREAM_BATCHES_MAX` batches; a snapshot being sent
//!   to a peer, `SNAPSHOT_CHUNKS_BUFFERED` chunks (`node/peer.rs`), and to a
//!   `Maintenance.Snapshot` client, `SNAPSHOT_CHUNKS_AHEAD` (`maintenance.rs`); a snapshot
//!   being received from a peer, `SNAPSHOT_CHUNKS_QUEUED` chunks, the rest spooled to disk
//!   up to `SNAPSHOT_BYTES_MAX` and installed as SST files of `store::INSTALL_SST_BYTES` each.
//!   What is not bounded by a constant: the number of client connections, of streams per
//!   connection (etcd's `u32::MAX`, see `serve.rs`) and of watchers per stream.
//! - Proposals carry the proposer's full member id beside the request id; only the proposer
//!   answers a client, so no member can answer another's waiter (`node/apply.rs`).
//! - Security flags this build does not do, or that would have no effect (a peer
//!   certificate with `http://` peer URLs, ...), are refused at start-up, never accepted
//!   and ignored (`config.rs`).
//! - Client TLS (`tls.rs`, wired in `serve.rs`): `https://` client URLs serve gRPC and HTTP
//!   over rustls on one port; handshakes run off the accept loop, bounded in number
//!   (`HANDSHAKES_IN_FLIGHT_MAX`) and time (`HANDSHAKE_TIMEOUT`); certificate files are
//!   re-read on change for each new connection, a broken new file keeps the old config; the
//!   verified client certificate's CN is in every request (`tls::client_common_name`).
//! - Auth (`auth.rs`): the Auth service, every mutation a log command applied by the store's
//!   auth store (`store::auth`) on every member; passwords hashed with bcrypt on the proposing
//!   member before proposing; simple tokens chosen by the proposer and learned by every
//!   member from the applied `Authenticate` entry, each kept `--auth-token-ttl` without use
//!   (at most `store::auth::SIMPLE_TOKENS_MAX` per member); or JWT tokens
//!   (`--auth-token jwt,...`, the jsonwebtoken crate on ring) signed by the member that
//!   authenticated and carrying the auth revision they were issued at. Every service resolves its caller
//!   (the `token` metadata, or with `--client-cert-auth` the certificate's CN) and checks
//!   etcd's permissions before it reads or proposes; a write is proposed with the auth
//!   revision it was checked at, and apply refuses it if an auth change came first.
//!
//! CAVEATS:
//! - Replication: the default group is replicated over the peer transport (`node/peer.rs`);
//!   membership changes are Raft conf changes (`cluster.rs`, `node/membership.rs`), members
//!   behind the purged log receive a store snapshot (installed from memory), and
//!   keep-alives and lease TTLs asked of a follower are forwarded to the leader. Peer
//!   traffic is plain HTTP/2, or TLS with `https://` peer URLs (`node/peer_tls.rs`); each
//!   peer stream is bound to the member it speaks for (and, with `--peer-client-cert-auth`,
//!   to that member's certificate), and a plain or unauthenticated peer port is reported by
//!   a warning at start.
//! - Auth: a watch on a from-key range is checked for the whole range, where etcd 3.5.1
//!   checks only its first key.
//! - Client TLS is TLS 1.2 and 1.3 only (rustls), with ECDHE AEAD suites; no certificate
//!   revocation lists (`--client-crl-file`) and no `--client-cert-allowed-hostname`: both are
//!   refused. `--listen-metrics-urls` is plain HTTP only.
//! - Tenants (`node/tenants.rs`, admin API in `tenants.rs`): each tenant is its own Raft
//!   group and store group; the registry is the system group (0), replicated like any
//!   group, and a reconciler on every member creates, serves and removes groups as it
//!   changes, and makes every group's voters follow the default group's (which carries the
//!   cluster's membership). A request is served by its connection's tenant (a tenant port,
//!   or the client certificate's SAN URI or CN), and counted in metrics labelled by tenant
//!   (`node/metrics.rs`). A tenant's limits (requests per second, proposals in flight,
//!   watchers, written bytes per second; `node/limits.rs`) are enforced per member and
//!   answer etcd's "too many requests". Idle groups hibernate;
//!   apply runs on raft-log's apply worker, fair across groups; snapshots from a peer are
//!   spooled to disk and installed as SST files RocksDB ingests. The driver's inbox is one
//!   FIFO drained whole each pass (why that is fair: ARCHITECTURE.md); the purge bounds a
//!   group's catch-up entries to the newest WAL segments (`serve.rs` `CATCH_UP_SEGMENTS`), so
//!   a tenant that writes rarely keeps no old segment.
//! - Backups (`backup/`): objects, manifests, targets and offline restore, and the schedule
//!   (`backup/schedule.rs`) that takes each tenant's backups on its group's leader, records a
//!   replicated backup mark after each, and holds history for the next delta (the store's
//!   `hold_history_for_backups`).
//! - Two watch cases follow the newer etcd rules of the kube-apiserver contract rather than
//!   etcd 3.5.1: a negative start revision is refused (`watch_id -1`, canceled), and
//!   `RequestProgress` is answered only when every watcher of the stream is synced and past
//!   its start revision. Client-chosen watch ids are kept, as etcd 3.4+ keeps them.
//! - Alarms are replicated through the log (`maintenance.rs`, `node/alarms.rs`); a raised
//!   NOSPACE refuses writes that add data on every member, a raised CORRUPT refuses every
//!   write with `etcdserver: corrupt cluster` (etcd's corrupt applier) and fails `/health`.
//!   Nothing raises CORRUPT by itself yet: there is no periodic hash check between members.
//!   `--experimental-initial-corrupt-check` compares a starting member's hash of the default
//!   keyspace with its peers' (a peer call, `HashKv`) and stops it on a mismatch (`serve.rs`).
//! - `Maintenance.Snapshot` streams the group as etcd 3.5's bbolt data file (with etcd's
//!   trailing SHA-256), built in an unnamed file in the data dir (`backup/etcd_export.rs`):
//!   `etcdutl snapshot status` and `restore` take it, and so does `plinth restore`.
//!   `HashKV` answers etcd's hash of those same entries, so equal histories hash alike on
//!   etcd and Plinth; `Hash` (etcd's hash of its whole file) is Plinth's own.

pub mod auth;
pub mod auth_config;
pub mod backup;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod conn;
pub mod election;
pub mod error;
pub mod etcd_flags;
pub mod gateway;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod migrate;
pub mod node;
pub mod pb;
pub mod recipe;
pub mod serve;
pub mod tenant_cli;
pub mod tenants;
pub mod tls;
pub mod version;
pub mod watch;
