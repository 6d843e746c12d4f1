//! Generates the etcd v3 API (etcdserverpb, mvccpb, authpb) and the member-to-member
//! protocol (plinthpeer) from the project's own protos.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from the vendored binary and is set for this build script only: a global
    // PROTOC would also reach raft-proto's build, which accepts only protoc 3.x.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Keys and values stay `Bytes` from decode to the log to the store: no copies.
        .bytes(".")
        .compile_protos(
            &[
                "proto/rpc.proto",
                "proto/kv.proto",
                "proto/auth.proto",
                "proto/peer.proto",
                "proto/tenants.proto",
                "proto/backups.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
