//! The gRPC metrics: labels only for etcd's own methods (a client cannot create series by
//! calling made-up paths) and codes spelled as Go spells them; made-up methods answered in
//! grpc-go's words.

mod common;

use std::io::{Read, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::Server;
use grpc_api::pb::etcdserverpb as pb;

/// Longest wait for a metric to appear.
const METRIC_TIMEOUT: Duration = Duration::from_secs(10);

/// A bare HTTP/1.1 GET of `/metrics`.
fn metrics(port: u16) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

async fn channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.endpoint()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// An empty unary call of `path`, which must be refused: the status.
async fn refused_call(grpc: &mut tonic::client::Grpc<tonic::transport::Channel>, path: &str) -> tonic::Status {
    grpc.ready().await.unwrap();
    let call = grpc.unary(
        tonic::Request::new(()),
        http::uri::PathAndQuery::from_str(path).unwrap(),
        tonic_prost::ProstCodec::<(), ()>::default(),
    );
    tokio::time::timeout(Duration::from_secs(10), call).await.expect("call timed out").unwrap_err()
}

#[tokio::test]
async fn unknown_methods_create_no_series() {
    let server = Server::start(&[]);
    let _ready = server.client().await;
    let channel = channel(&server).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    let salt: u32 = rand::random();
    let mut paths = Vec::new();
    for i in 0..50 {
        // Made-up methods of a real service, and made-up services.
        paths.push(format!("/etcdserverpb.KV/Bogus{salt}x{i}"));
        paths.push(format!("/bogus{salt}x{i}.Svc/Call{i}"));
    }
    for path in &paths {
        let status = refused_call(&mut grpc, path).await;
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}");
        // grpc-go's words, which etcd answers.
        let (service, method) = path[1..].rsplit_once('/').unwrap();
        let wanted = if service == "etcdserverpb.KV" {
            format!("unknown method {method} for service {service}")
        } else {
            format!("unknown service {service}")
        };
        assert_eq!(status.message(), wanted, "{path}");
    }
    // Paths grpc-go splits at their last `/`, or finds malformed, as etcd 3.5.1 answers them.
    for (path, code, message) in [
        ("/etcdserverpb.KV/", tonic::Code::Unimplemented, "unknown method  for service etcdserverpb.KV"),
        (
            "/etcdserverpb.Cluster/Nope",
            tonic::Code::Unimplemented,
            "unknown method Nope for service etcdserverpb.Cluster",
        ),
        ("/nodot/x", tonic::Code::Unimplemented, "unknown service nodot"),
        ("/a.B/C/D", tonic::Code::Unimplemented, "unknown service a.B/C"),
        ("/justone", tonic::Code::ResourceExhausted, r#"malformed method name: "/justone""#),
        // Plinth's own API is served past the check: its generated server answers.
        ("/plinth.v1.Tenants/Nope", tonic::Code::Unimplemented, ""),
    ] {
        let status = refused_call(&mut grpc, path).await;
        assert_eq!((status.code(), status.message()), (code, message), "{path}");
    }
    let port = server.client_port;
    let text = tokio::task::spawn_blocking(move || metrics(port)).await.unwrap();
    let leaked: Vec<&str> = text.lines().filter(|l| l.contains(&format!("{salt}x"))).collect();
    assert!(leaked.is_empty(), "series for made-up methods:\n{}", leaked.join("\n"));
    assert!(text.contains(r#"grpc_method="unknown""#), "calls to unknown methods are counted under one label:\n{text}");
}

#[tokio::test]
async fn a_cancelled_call_is_counted_as_canceled() {
    let server = Server::start(&[]);
    let _ready = server.client().await;
    let endpoint = server.endpoint();
    // The client runs on a runtime of its own, shut down while its watch is open: its
    // connection goes away mid-call, which Go's server sees as a cancelled context.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let open = runtime.block_on(async move {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap();
            let mut watch = pb::watch_client::WatchClient::new(channel);
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
                    key: b"k".to_vec().into(),
                    ..Default::default()
                })),
            };
            let requests = tokio_stream::StreamExt::chain(tokio_stream::iter(vec![create]), tokio_stream::pending());
            let mut responses = watch.watch(requests).await.unwrap().into_inner();
            let created =
                tokio::time::timeout(Duration::from_secs(10), responses.message()).await.unwrap().unwrap().unwrap();
            assert!(created.created);
            (watch, responses)
        });
        runtime.shutdown_timeout(Duration::ZERO);
        drop(open);
    })
    .join()
    .unwrap();
    let port = server.client_port;
    let wanted = r#"grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch""#;
    let deadline = Instant::now() + METRIC_TIMEOUT;
    loop {
        let text = tokio::task::spawn_blocking(move || metrics(port)).await.unwrap();
        if text.contains(wanted) {
            assert!(!text.contains("Cancelled"), "tonic's spelling leaked:\n{text}");
            break;
        }
        let handled: Vec<&str> = text.lines().filter(|l| l.starts_with("grpc_server_handled_total")).collect();
        assert!(Instant::now() < deadline, "no {wanted} within {METRIC_TIMEOUT:?}; handled:\n{}", handled.join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
