//! Generates the etcd v3 API (etcdserverpb, mvccpb, authpb) and the member-to-member
//! protocol (plinthpeer) from the project's own protos, and the server side of etcd's
//! `Watch` service over the server's own response type (see `src/watch.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from the vendored binary and is set for this build script only: a global
    // PROTOC would also reach raft-proto's build, which accepts only protoc 3.x.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .build_server(true)
        .build_client(true)
        // Keys and values stay `Bytes` from decode to the log to the store: no copies.
        .bytes(".")
        // Every message is written through the server's codec (`src/codec.rs`), which
        // counts client bytes.
        .codec_path("crate::codec::WireCodec")
        .compile_protos(
            &[
                "proto/rpc.proto",
                "proto/kv.proto",
                "proto/auth.proto",
                "proto/tenants.proto",
                "proto/backups.proto",
                "proto/v3lock.proto",
                "proto/v3election.proto",
            ],
            &["proto"],
        )?;
    // The member-to-member protocol: the same codec, but its bytes are not client bytes.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .codec_path("crate::codec::PeerCodec")
        .compile_protos(&["proto/peer.proto"], &["proto"])?;
    // JSON for etcd's HTTP gateway (`src/gateway.rs`): serde impls of etcd's messages with
    // their field names as the protos spell them (`cluster_id`, `ID`, `dbSize`), as etcd's
    // gateway writes them, and unknown fields ignored, as it ignores them.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb", ".v3lockpb", ".v3electionpb"])?;
    // `/etcdserverpb.Watch/Watch`, served with responses whose events are already encoded
    // (`watch::WireResponse`, the same bytes on the wire as etcd's `WatchResponse`), so an
    // event is encoded once for all its watchers. Clients keep the generated types above.
    let watch = tonic_build::manual::Service::builder()
        .name("Watch")
        .package("etcdserverpb")
        .method(
            tonic_build::manual::Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::pb::etcdserverpb::WatchRequest")
                .output_type("crate::watch::WireResponse")
                .codec_path("crate::codec::WireCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    // `/etcdserverpb.KV/*`, served with a Range response whose key-values are already encoded
    // (`kv::WireRangeResponse`, the same bytes on the wire as etcd's `RangeResponse`), so a
    // list sends stored values without decoding them. The other methods keep the generated
    // types.
    let kv_method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("crate::codec::WireCodec")
            .build()
    };
    let kv = tonic_build::manual::Service::builder()
        .name("KV")
        .package("etcdserverpb")
        .method(kv_method("range", "Range", "crate::pb::etcdserverpb::RangeRequest", "crate::kv::WireRangeResponse"))
        .method(kv_method("put", "Put", "crate::pb::etcdserverpb::PutRequest", "crate::pb::etcdserverpb::PutResponse"))
        .method(kv_method(
            "delete_range",
            "DeleteRange",
            "crate::pb::etcdserverpb::DeleteRangeRequest",
            "crate::pb::etcdserverpb::DeleteRangeResponse",
        ))
        .method(kv_method("txn", "Txn", "crate::pb::etcdserverpb::TxnRequest", "crate::pb::etcdserverpb::TxnResponse"))
        .method(kv_method(
            "compact",
            "Compact",
            "crate::pb::etcdserverpb::CompactionRequest",
            "crate::pb::etcdserverpb::CompactionResponse",
        ))
        .build();
    tonic_build::manual::Builder::new().build_client(false).compile(&[watch, kv]);
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
