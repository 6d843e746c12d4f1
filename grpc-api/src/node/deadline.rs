//! The client's deadline for the unary call being served: gRPC's `grpc-timeout` request
//! header, which a client sets from its context's deadline (Go's clientv3, kube-apiserver,
//! tonic's `Request::set_timeout`).
//!
//! etcd's gRPC server turns the header into the handler's context deadline, and a call's
//! waits end there as they end at etcd's own request timeout: a write that was proposed
//! with etcd's "request timed out" family (`parseProposeCtxErr`); a write while no leader
//! is known, and a linearizable read, with the context's own error, which etcd 3.5.1's gRPC
//! server sends as `Unknown` "context deadline exceeded". Here `serve::admit` runs a unary
//! etcd call inside [`scope`], and the node's waits end at the earlier of their own limit
//! and [`client`]'s deadline, answering as etcd does. Clients enforce their deadline on
//! their side too, so what this changes for them is the member's work: a call whose client
//! has given up no longer holds a proposal slot or a read waiter until the request timeout.
//!
//! Streams (`Watch`, `LeaseKeepAlive`, `Snapshot`) are not scoped: their messages do not
//! share one deadline. A malformed header is ignored (the request timeout still bounds the
//! call).

use std::time::{Duration, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The paths of etcd's streaming calls, which are served without a client deadline.
const STREAMS: [&str; 3] =
    ["/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive", "/etcdserverpb.Maintenance/Snapshot"];

const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The deadline a unary etcd call at `path` carries in `headers`, from now.
pub fn of_request(path: &str, headers: &http::HeaderMap) -> Option<Instant> {
    let value = headers.get(GRPC_TIMEOUT)?;
    if !path.starts_with("/etcdserverpb.") || STREAMS.contains(&path) {
        return None;
    }
    let timeout = parse_grpc_timeout(value.as_bytes())?;
    // A timeout too long for the clock is no deadline at all.
    Instant::now().checked_add(timeout)
}

/// Runs `call` with `deadline` as its client's deadline.
pub async fn scope<F: std::future::Future>(deadline: Instant, call: F) -> F::Output {
    DEADLINE.scope(deadline, call).await
}

/// The deadline of the client whose call this task serves, if it sent one.
pub fn client() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// The earlier of `own` (a wait's own limit) and the client's deadline, and whether the
/// client's deadline is the earlier one.
pub fn earliest(own: Instant) -> (Instant, bool) {
    match client() {
        Some(client) if client < own => (client, true),
        _ => (own, false),
    }
}

/// gRPC's `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 99,999,999: no overflow below.
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_as_grpc_defines_them() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [&b""[..], b"S", b"100", b"123456789S", b"1s", b"-1S", b"1.5S", b" 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_unary_etcd_calls_carry_the_deadline() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static("500m"));
        let at = of_request("/etcdserverpb.KV/Range", &headers).expect("a unary call's deadline");
        assert!(at > Instant::now() + Duration::from_millis(400) && at <= Instant::now() + Duration::from_millis(500));
        for path in STREAMS.iter().chain(&["/plinth.v1.Tenants/Create"]) {
            assert_eq!(of_request(path, &headers), None, "{path}");
        }
        assert_eq!(of_request("/etcdserverpb.KV/Range", &http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_wait_ends_at_the_earlier_deadline() {
        let own = Instant::now() + Duration::from_secs(7);
        assert_eq!(earliest(own), (own, false), "no client deadline outside a scope");
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(scope(soon, async { earliest(own) }).await, (soon, true));
        let late = own + Duration::from_secs(1);
        assert_eq!(scope(late, async { earliest(own) }).await, (own, false));
    }
}
