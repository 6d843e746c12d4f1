//! etcd's JSON gateway (`/v3/...`) over bare HTTP/1.1, as curl and `etcd3gw` speak it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use common::Server;

/// One HTTP/1.1 request: (status code, lower-cased head, body).
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn post(port: u16, path: &str, body: &str) -> (u16, serde_json::Value) {
    post_with(port, path, &[], body)
}

fn post_with(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    let (status, head, body) = request(port, "POST", path, headers, body);
    assert!(head.contains("content-type: application/json"), "{head}");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

/// The next `{"result": ...}` line of a streamed answer, skipping the head and the chunk
/// sizes of the chunked body.
fn next_result_line(lines: &mut BufReader<std::net::TcpStream>) -> serde_json::Value {
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).unwrap() > 0, "the stream ended");
        if let Some(json) = line.trim_end().strip_prefix(r#"{"result":"#) {
            let json = json.strip_suffix('}').unwrap();
            return serde_json::from_str::<serde_json::Value>(json).unwrap();
        }
    }
}

#[tokio::test]
async fn unary_calls_answer_etcds_json() {
    let server = Server::start(&[]);
    let _ready = server.client().await;
    let port = server.client_port;
    tokio::task::spawn_blocking(move || {
        // "foo" = "bar", in base64 as the gateway speaks bytes.
        let (status, put) = post(port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
        assert_eq!(status, 200, "{put}");
        let revision = put["header"]["revision"].as_str().expect("64-bit integers are strings").to_string();
        assert!(put["header"]["cluster_id"].is_string() && put["header"]["raft_term"].is_string(), "{put}");

        // Proto field names as the protos spell them; camel-case names are accepted too;
        // unknown fields are ignored; default values are left out.
        let (_, range) = post(port, "/v3/kv/range", r#"{"key":"Zm9v","keysOnly":false,"bogus":1}"#);
        let kv = &range["kvs"][0];
        assert_eq!((kv["key"].as_str(), kv["value"].as_str()), (Some("Zm9v"), Some("YmFy")), "{range}");
        assert_eq!(kv["create_revision"].as_str(), Some(revision.as_str()));
        assert_eq!(range["count"], "1");
        assert!(kv.get("lease").is_none() && range.get("more").is_none(), "defaults left out: {range}");

        // Oneofs and enums by name.
        let txn = r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],
                      "success":[{"request_range":{"key":"Zm9v"}}]}"#;
        let (_, txn) = post(port, "/v3/kv/txn", txn);
        assert_eq!(txn["succeeded"], true, "{txn}");
        assert_eq!(txn["responses"][0]["response_range"]["kvs"][0]["value"], "YmFy");

        // A unary method reads the first value of the body only, as grpc-gateway does.
        let (status, _) = post(port, "/v3/kv/range", r#"{"key":"Zm9v"} {"key":""}"#);
        assert_eq!(status, 200);

        // Errors: grpc-gateway's body and the HTTP status of the gRPC code.
        let (status, error) = post(port, "/v3/kv/range", r#"{"key":""}"#);
        assert_eq!(status, 400);
        assert_eq!(error, serde_json::json!({"error": "etcdserver: key is not provided", "code": 3, "message": "etcdserver: key is not provided"}));
        let (status, error) = post(port, "/v3/lease/revoke", r#"{"ID":"5"}"#);
        assert_eq!((status, error["code"].as_i64()), (404, Some(5)), "{error}");
        let (status, error) = post(port, "/v3/kv/range", r#"{"key":"#);
        assert_eq!((status, error["code"].as_i64()), (400, Some(3)), "{error}");
        // Downgrade: etcd 3.5.1's checks and answers, up to a target it would accept.
        for (body, code, message) in [
            ("{}", 3, "etcdserver: wrong downgrade target version format"),
            (r#"{"action":"ENABLE","version":"x"}"#, 3, "etcdserver: wrong downgrade target version format"),
            (r#"{"action":"VALIDATE","version":"3.3"}"#, 3, "etcdserver: invalid downgrade target version"),
            (r#"{"action":"CANCEL"}"#, 9, "etcdserver: no inflight downgrade job"),
        ] {
            let (status, error) = post(port, "/v3/maintenance/downgrade", body);
            assert_eq!((status, error["code"].as_i64(), error["message"].as_str()), (400, Some(code), Some(message)));
        }

        // The lease paths etcd also serves under /v3/kv/lease/.
        let (_, grant) = post(port, "/v3/lease/grant", r#"{"TTL":30}"#);
        let id = grant["ID"].as_str().unwrap().to_string();
        let (_, leases) = post(port, "/v3/kv/lease/leases", "{}");
        assert_eq!(leases["leases"][0]["ID"].as_str(), Some(id.as_str()), "{leases}");

        // Other methods and paths, as etcd's gateway answers them.
        let (status, head, body) = request(port, "GET", "/v3/kv/range", &[], "");
        assert_eq!((status, body.as_str()), (405, "Method Not Allowed\n"));
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        let (status, head, _) = request(port, "OPTIONS", "/v3/kv/range", &[], "");
        assert_eq!(status, 200);
        assert!(head.contains("access-control-allow-methods: post, get, options, put, delete"), "{head}");
        let (status, _, body) = request(port, "POST", "/v3/kv/nothing", &[], "{}");
        assert_eq!((status, body.as_str()), (404, "Not Found\n"));
        // etcd's access controller, in front of every HTTP answer of the client port: CORS
        // headers, OPTIONS on any path, and /v3beta/ served as /v3/.
        let (status, beta) = post(port, "/v3beta/kv/range", r#"{"key":"Zm9v"}"#);
        assert_eq!((status, beta["count"].as_str()), (200, Some("1")), "{beta}");
        let (status, head, body) = request(port, "GET", "/health", &[], "");
        assert_eq!((status, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
        assert!(head.contains("access-control-allow-headers: accept, content-type, authorization"), "{head}");
        // etcd writes /health's JSON without a content type, which Go sniffs as plain text.
        assert!(head.contains("content-type: text/plain; charset=utf-8"), "{head}");
        // Go's http.NotFound for a check no probe has: plain text, not to be sniffed.
        let (status, head, body) = request(port, "GET", "/readyz/no_such_check", &[], "");
        assert_eq!((status, body.as_str()), (404, "404 page not found\n"));
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let (status, head, _) = request(port, "OPTIONS", "/anything", &[], "");
        assert_eq!(status, 200);
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_authorization_header_carries_the_token() {
    let server = Server::start(&[]);
    let _ready = server.client().await;
    let port = server.client_port;
    tokio::task::spawn_blocking(move || {
        post(port, "/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#);
        post(port, "/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#);
        let (status, enabled) = post(port, "/v3/auth/enable", "{}");
        assert_eq!(status, 200, "{enabled}");
        let (_, auth) = post(port, "/v3/auth/authenticate", r#"{"name":"root","password":"pw"}"#);
        let token = auth["token"].as_str().expect("a token").to_string();

        let (status, refused) = post(port, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
        assert_eq!((status, refused["error"].as_str()), (400, Some("etcdserver: user name is empty")));
        let (status, _) = post_with(port, "/v3/kv/range", &[("Authorization", &token)], r#"{"key":"Zm9v"}"#);
        assert_eq!(status, 200);
        let (status, refused) = post_with(port, "/v3/kv/range", &[("Authorization", "bogus")], r#"{"key":"Zm9v"}"#);
        assert_eq!((status, refused["error"].as_str()), (401, Some("etcdserver: invalid auth token")));
        // A stream refused before its first message: grpc-gateway's error chunk alone, under
        // the HTTP status of the code (etcd 3.5.1's answer, byte for byte).
        let (status, _, body) = request(port, "POST", "/v3/maintenance/snapshot", &[("Authorization", "bogus")], "{}");
        let chunk = r#"{"error":{"grpc_code":2,"http_code":500,"message":"auth: invalid auth token","http_status":"Internal Server Error"}}"#;
        assert_eq!((status, body.as_str()), (500, chunk));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_watch_streams_result_lines_after_its_request_body_ends() {
    let server = Server::start(&[]);
    let _ready = server.client().await;
    let port = server.client_port;
    tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"create_request":{"key":"Zm9v","prev_kv":true}}"#;
        write!(conn, "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut lines = BufReader::new(conn);
        let mut next_result = || next_result_line(&mut lines);
        assert_eq!(next_result()["created"], true);
        post(port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YQ=="}"#);
        post(port, "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#);
        let put = next_result();
        assert_eq!(put["events"][0]["kv"]["value"], "YQ==", "{put}");
        assert!(put["events"][0].get("type").is_none(), "PUT is the default type: {put}");
        let delete = next_result();
        assert_eq!(delete["events"][0]["type"], "DELETE", "{delete}");
        assert_eq!(delete["events"][0]["prev_kv"]["value"], "YQ==", "{delete}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_watch_serves_each_request_of_an_open_body_as_it_arrives() {
    let server = Server::start(&[]);
    let _ready = server.client().await;
    let port = server.client_port;
    tokio::task::spawn_blocking(move || {
        let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = conn.try_clone().unwrap();
        write!(out, "POST /v3/watch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let mut chunk = |data: &[u8]| {
            write!(out, "{:x}\r\n", data.len()).unwrap();
            out.write_all(data).unwrap();
            write!(out, "\r\n").unwrap();
        };
        let mut lines = BufReader::new(conn);
        let mut next_result = || next_result_line(&mut lines);
        // The body stays open: each request is served as it arrives.
        chunk(br#"{"create_request":{"key":"Zm9v"}}"#);
        assert_eq!(next_result()["created"], true);
        post(port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YQ=="}"#);
        assert_eq!(next_result()["events"][0]["kv"]["mod_revision"], "2");
        // A request split over many chunks, a byte each, is served once its last byte is in.
        for byte in br#" {"create_request":{"key":"Zm9v","watch_id":7,"filters":["NODELETE"]}}"# {
            chunk(&[*byte]);
        }
        let created = next_result();
        assert_eq!((&created["watch_id"], &created["created"]), (&"7".into(), &true.into()), "{created}");
        assert_eq!(created["header"]["revision"], "2", "{created}");
        chunk(br#"{"progress_request":{}}"#);
        let progress = next_result();
        assert_eq!((&progress["watch_id"], &progress["header"]["revision"]), (&"-1".into(), &"2".into()), "{progress}");
        // A request that does not decode ends the requests, not the answers (grpc-gateway's
        // sending loop stops; the watchers go on).
        chunk(b"garbage\n");
        post(port, "/v3/kv/put", r#"{"key":"Zm9v","value":"Yg=="}"#);
        let mut ids: Vec<String> = (0..2)
            .map(|_| {
                let event = next_result();
                assert_eq!(event["events"][0]["kv"]["mod_revision"], "3", "{event}");
                event.get("watch_id").map_or("0".to_owned(), |id| id.as_str().unwrap().to_owned())
            })
            .collect();
        ids.sort();
        assert_eq!(ids, ["0", "7"]);
    })
    .await
    .unwrap();
}
