//! The HTTP endpoints operators and probes use: `/health`, `/livez`, `/readyz` (with
//! per-check subpaths), `/version` and `/metrics`, with etcd's paths, bodies and status codes.
//! Served beside gRPC on the client port and alone on `--listen-metrics-urls`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::node::Node;
use crate::pb::etcdserverpb::AlarmType;
use crate::version::{CLUSTER_VERSION, ETCD_COMPAT_VERSION, PLINTH_VERSION};

/// The router of every HTTP endpoint. A tenant's router (not the default tenant's) has no
/// `/metrics`: the member's metrics speak of every tenant.
pub fn router(node: Arc<Node>) -> Router {
    let router = Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/readyz/{check}", get(readyz_one))
        .route("/livez/{check}", get(livez_one))
        .route("/version", get(version))
        .method_not_allowed_fallback(method_not_allowed);
    // Prometheus' handler, which serves etcd's `/metrics`, answers any method.
    let router = if node.is_default() { router.route("/metrics", any(metrics)) } else { router };
    router.layer(axum::middleware::map_response(with_date)).with_state(node)
}

/// Go's `http.Error`: `text` as plain text, not to be sniffed as anything else.
pub(crate) fn go_http_error(status: StatusCode, text: impl IntoResponse) -> Response {
    let headers = [
        (axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (status, headers, text).into_response()
}

/// etcd's answer to another method than `GET` on its endpoints (`allowMethod`, then Go's
/// `http.Error`).
async fn method_not_allowed() -> Response {
    let mut response = go_http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    response.headers_mut().insert(axum::http::header::ALLOW, axum::http::HeaderValue::from_static("GET"));
    response
}

/// The answer on a path nothing serves, etcd's: a gRPC call (content type `application/grpc`)
/// gets gRPC's "unimplemented" in grpc-go's words (`unknown_call`; the client port's
/// admission answers these first), which clients probing for a newer method rely on, and any
/// other request Go's `404 page not found`, so a probe or a scraper on a wrong path sees a
/// failure rather than a `200`.
pub async fn unknown_path(request: axum::extract::Request) -> Response {
    if is_grpc(request.headers()) {
        let path = request.uri().path();
        let status = crate::node::grpc_metrics::unknown_call(path).unwrap_or_else(|| tonic::Status::unimplemented(""));
        let (parts, ()) = status.into_http::<()>().into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    page_not_found()
}

/// Go's `http.NotFound`, the answer of a Go mux to a path it does not route.
fn page_not_found() -> Response {
    go_http_error(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Whether a request is a gRPC call (content type `application/grpc`, `application/grpc+proto`).
pub fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The CORS headers etcd's client port answers with (its default `--cors` of `*`).
fn add_cors(headers: &mut axum::http::HeaderMap) {
    use axum::http::HeaderValue;
    headers.insert("access-control-allow-headers", HeaderValue::from_static("accept, content-type, authorization"));
    headers.insert("access-control-allow-methods", HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
}

/// etcd's access controller in front of the HTTP side of its client port (`accessController`
/// with its default `--cors` and `--host-whitelist` of `*`), around `serve`: every answer
/// gets the CORS headers, an `OPTIONS` request is answered `200` at once whatever its path,
/// and a `/v3beta/` path is served as the `/v3/` path of etcd's JSON gateway. gRPC calls do
/// not pass here, as etcd's gRPC server does not run behind it.
pub fn access_controlled(
    mut request: axum::extract::Request,
    serve: impl FnOnce(axum::extract::Request) -> crate::node::tenants::ClientFuture,
) -> crate::node::tenants::ClientFuture {
    if request.method() == axum::http::Method::OPTIONS {
        let mut response = Response::new(axum::body::Body::empty());
        add_cors(response.headers_mut());
        return Box::pin(std::future::ready(Ok(response)));
    }
    if let Some(rest) = request.uri().path().strip_prefix("/v3beta/") {
        let path_and_query = match request.uri().query() {
            Some(query) => format!("/v3/{rest}?{query}"),
            None => format!("/v3/{rest}"),
        };
        if let Ok(path_and_query) = path_and_query.parse() {
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    let answer = serve(request);
    Box::pin(async move {
        let mut response = answer.await?;
        add_cors(response.headers_mut());
        Ok(response)
    })
}

/// Gives an answer a `Date` header, as Go's net/http gives etcd's HTTP endpoints. hyper adds
/// one to HTTP/1 answers itself (not twice), but not to HTTP/2 ones on the client port
/// (`conn.rs`): gRPC answers carry none, as grpc-go sends none, and there it cost every call
/// about 2,400 instructions (formatting, a header map entry and its HPACK encoding).
async fn with_date(mut response: Response) -> Response {
    response.headers_mut().entry(axum::http::header::DATE).or_insert_with(|| {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        axum::http::HeaderValue::from_str(&date).expect("an HTTP date is a valid header value")
    });
    response
}

/// The checks of `/readyz`, in etcd's order; `/livez` runs only `serializable_read`.
const READY_CHECKS: [&str; 4] = ["data_corruption", "serializable_read", "linearizable_read", "non_learner"];

/// The reason `non_learner` gives on a learner, etcd's text.
const NOT_SUPPORTED_FOR_LEARNER: &str = "not supported for learner";

/// The names in `?exclude=a,b`.
fn excluded(params: &HashMap<String, String>) -> Vec<&str> {
    params.get("exclude").map(|e| e.split(',').collect()).unwrap_or_default()
}

async fn run_check(node: &Node, check: &str) -> Result<(), String> {
    match check {
        "data_corruption" => {
            if node.alarms.active().iter().any(|a| a.alarm == AlarmType::Corrupt as i32) {
                Err("alarm activated: CORRUPT".into())
            } else {
                Ok(())
            }
        }
        "serializable_read" => node.health_read(true).await.map_err(|e| e.message().to_string()),
        "linearizable_read" => node.health_read(false).await.map_err(|e| e.message().to_string()),
        // A learner refuses most requests: it is not ready to serve clients (etcd's check).
        "non_learner" => {
            if node.is_learner() {
                Err(NOT_SUPPORTED_FOR_LEARNER.into())
            } else {
                Ok(())
            }
        }
        other => Err(format!("unknown check {other}")),
    }
}

async fn probe(node: &Node, checks: &[&str], params: &HashMap<String, String>) -> (StatusCode, String) {
    let excluded = excluded(params);
    let verbose = params.contains_key("verbose");
    let mut body = String::new();
    let mut failed = false;
    for check in checks {
        if excluded.contains(check) {
            body.push_str(&format!("[+]{check} excluded: ok\n"));
            continue;
        }
        match run_check(node, check).await {
            Ok(()) => body.push_str(&format!("[+]{check} ok\n")),
            Err(reason) => {
                failed = true;
                body.push_str(&format!("[-]{check} failed: {reason}\n"));
            }
        }
    }
    if failed {
        node.metrics.health_failures.inc();
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        node.metrics.health_success.inc();
        if verbose {
            (StatusCode::OK, body + "ok\n")
        } else {
            (StatusCode::OK, "ok\n".to_string())
        }
    }
}

async fn livez(State(node): State<Arc<Node>>, Query(params): Query<HashMap<String, String>>) -> impl IntoResponse {
    probe(&node, &["serializable_read"], &params).await
}

async fn livez_one(
    State(node): State<Arc<Node>>,
    Path(check): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if check != "serializable_read" {
        return page_not_found();
    }
    probe(&node, &["serializable_read"], &params).await.into_response()
}

async fn readyz(State(node): State<Arc<Node>>, Query(params): Query<HashMap<String, String>>) -> impl IntoResponse {
    probe(&node, &READY_CHECKS, &params).await
}

async fn readyz_one(
    State(node): State<Arc<Node>>,
    Path(check): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    // A subpath runs its one check whatever `exclude` says, as etcd's do.
    let mut params = params;
    params.remove("exclude");
    match READY_CHECKS.iter().find(|c| **c == check) {
        Some(c) => probe(&node, &[c], &params).await.into_response(),
        None => page_not_found(),
    }
}

async fn health(State(node): State<Arc<Node>>, Query(params): Query<HashMap<String, String>>) -> Response {
    let serializable = params.get("serializable").is_some_and(|v| v == "true");
    let excluded = excluded(&params);
    let reason = health_failure(&node, serializable, &excluded).await;
    // etcd writes the JSON without a content type, which Go then sniffs as plain text, and a
    // failure through `http.Error` (plain text, not to be sniffed, a newline after the JSON).
    match reason {
        None => {
            node.metrics.health_success.inc();
            let body = serde_json::json!({"health": "true", "reason": ""}).to_string();
            ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        Some(reason) => {
            node.metrics.health_failures.inc();
            let body = serde_json::json!({"health": "false", "reason": reason}).to_string() + "\n";
            go_http_error(StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

async fn health_failure(node: &Node, serializable: bool, excluded: &[&str]) -> Option<String> {
    for alarm in node.alarms.active() {
        let name = crate::node::alarms::alarm_name(alarm.alarm);
        if !excluded.contains(&name) {
            return Some(format!("ALARM {name}"));
        }
    }
    if !serializable && node.leader() == 0 {
        return Some("RAFT NO LEADER".into());
    }
    match node.health_read(serializable).await {
        Ok(()) => None,
        Err(e) => Some(format!("RANGE ERROR:{}", e.message())),
    }
}

async fn version() -> impl IntoResponse {
    let body = serde_json::json!({
        "etcdserver": ETCD_COMPAT_VERSION,
        "etcdcluster": CLUSTER_VERSION,
        "plinth": PLINTH_VERSION,
    });
    ([("content-type", "application/json")], body.to_string())
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // Off the runtime's workers: refreshing counts the keys of tenants that changed.
    let refreshing = node.clone();
    let _ = tokio::task::spawn_blocking(move || refreshing.refresh_gauges()).await;
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], node.metrics.render())
}
