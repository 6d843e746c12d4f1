//! Blanking out what legitimately differs between two servers (ids, terms, ports, sizes,
//! timings, versions) while keeping everything else — including *relations* such as "the
//! leader is the member that answered" and "these two keys carry the same lease" — intact.
//!
//! Ids are replaced by placeholders numbered in order of first appearance (`<lease-1>`,
//! `<member-1>`, ...), so equal ids stay equal and distinct ids stay distinct.

use serde_json::Value;

/// Maps distinct ids (as u64) to `<prefix-N>` in order of appearance.
#[derive(Debug, Default, Clone)]
pub struct IdMap {
    prefix: &'static str,
    seen: Vec<u64>,
}

impl IdMap {
    pub fn new(prefix: &'static str) -> IdMap {
        IdMap { prefix, seen: Vec::new() }
    }

    pub fn placeholder(&mut self, id: u64) -> String {
        let n = match self.seen.iter().position(|&s| s == id) {
            Some(i) => i + 1,
            None => {
                self.seen.push(id);
                self.seen.len()
            }
        };
        format!("<{}-{n}>", self.prefix)
    }
}

/// Stateful normalizer for one server's transcript.
#[derive(Debug, Clone)]
pub struct Normalizer {
    /// Literal substitutions applied to all text first (ports, paths), longest first.
    literals: Vec<(String, String)>,
    members: IdMap,
    /// Hex ids in plain-text output (etcdctl prints lease ids as %016x, member ids as %x).
    hex_ids: IdMap,
}

impl Normalizer {
    pub fn new() -> Normalizer {
        Normalizer { literals: Vec::new(), members: IdMap::new("member"), hex_ids: IdMap::new("id") }
    }

    /// Normalizer for a server listening on these ports, with `dir` its scratch directory.
    pub fn for_server(client_port: u16, peer_port: u16, dir: &str) -> Normalizer {
        let mut n = Normalizer::new();
        n.literal(&format!("127.0.0.1:{client_port}"), "127.0.0.1:<client-port>");
        n.literal(&format!("localhost:{client_port}"), "localhost:<client-port>");
        n.literal(&format!("127.0.0.1:{peer_port}"), "127.0.0.1:<peer-port>");
        n.literal(&format!("localhost:{peer_port}"), "localhost:<peer-port>");
        n.literal(dir, "<dir>");
        n
    }

    /// Adds a literal substitution `from` -> `to`.
    pub fn literal(&mut self, from: &str, to: &str) {
        if from.is_empty() {
            return;
        }
        self.literals.push((from.to_owned(), to.to_owned()));
        self.literals.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
    }

    fn literals(&self, s: &str) -> String {
        let mut s = s.to_owned();
        for (from, to) in &self.literals {
            if s.contains(from.as_str()) {
                s = s.replace(from.as_str(), to);
            }
        }
        s
    }

    /// Placeholder for a lease id given as a number (JSON); shares its numbering with the
    /// 16-hex-digit ids of plain-text output, so `lease grant` and `get -w json` agree.
    pub fn lease(&mut self, id: i64) -> String {
        if id == 0 {
            return "0".to_owned();
        }
        self.hex_ids.placeholder(id as u64)
    }

    /// Normalizes plain-text etcdctl output (or a command line).
    pub fn text(&mut self, s: &str) -> String {
        let s = self.literals(s);
        let out = self.text_lines(&s);
        // `lease list`: etcd returns leases in map order (unspecified); sort the ids.
        if out.starts_with("found ") && out.lines().next().is_some_and(|l| l.ends_with(" leases")) {
            let mut lines: Vec<&str> = out.lines().collect();
            lines[1..].sort_unstable();
            return lines.join("\n") + "\n";
        }
        out
    }

    fn text_lines(&mut self, s: &str) -> String {
        let mut lines = Vec::new();
        for line in s.lines() {
            let line = self.stderr_log_line(line).unwrap_or_else(|| line.to_owned());
            let line = self.fields_line(&line);
            let line = self.hex_tokens(&line);
            let line = blank_after(&line, "took = ", |c| !c.is_whitespace(), "<duration>");
            let line = blank_after(&line, "took: ", |c| !c.is_whitespace(), "<duration>");
            let line = blank_after(&line, "remaining(", |c| c != ')', "<remaining>");
            let line = sort_attached_keys(&line);
            lines.push(line.trim_end().to_owned());
        }
        // etcdctl logs from several goroutines (e.g. `snapshot save`'s stream reader and its
        // main loop), so the order within a run of adjacent log lines is not defined: sort it.
        for run in lines.chunk_by_mut(|a, b| a.starts_with("[log ") && b.starts_with("[log ")) {
            run.sort_unstable();
        }
        let mut out = String::with_capacity(s.len());
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// etcdctl's client logs structured JSON lines to stderr (with timestamps, caller file
    /// names and pointer addresses). Keep level, msg and error.
    fn stderr_log_line(&mut self, line: &str) -> Option<String> {
        let t = line.trim();
        if !t.starts_with('{') {
            return None;
        }
        let v: Value = serde_json::from_str(t).ok()?;
        let obj = v.as_object()?;
        obj.get("level")?;
        let mut s = format!(
            "[log {}] {}",
            obj.get("level").and_then(Value::as_str).unwrap_or("?"),
            obj.get("msg").and_then(Value::as_str).unwrap_or("?")
        );
        if let Some(e) = obj.get("error").and_then(Value::as_str) {
            s.push_str(": ");
            s.push_str(e);
        }
        Some(s)
    }

    /// `etcdctl -w fields` prints `"Name" : value` lines.
    fn fields_line(&mut self, line: &str) -> String {
        let Some(rest) = line.strip_prefix('"') else {
            return line.to_owned();
        };
        let Some((name, value)) = rest.split_once("\" : ") else {
            return line.to_owned();
        };
        let num = value.trim().parse::<u64>().ok().filter(|&v| v != 0);
        let blank = match (name, num) {
            ("ClusterID", Some(_)) => "<cluster_id>".to_owned(),
            ("MemberID", Some(id)) => self.members.placeholder(id),
            ("RaftTerm", Some(_)) => "<raft>".to_owned(),
            ("Lease", Some(id)) => self.hex_ids.placeholder(id),
            _ => return line.to_owned(),
        };
        format!("\"{name}\" : {blank}")
    }

    fn hex_tokens(&mut self, line: &str) -> String {
        let mut out = String::with_capacity(line.len());
        let mut token = String::new();
        let flush = |token: &mut String, out: &mut String, ids: &mut IdMap| {
            // Lease ids print as %016x, member ids as %x (no padding): accept 13..=16 digits.
            if (13..=16).contains(&token.len()) && token.chars().all(|c| c.is_ascii_hexdigit()) {
                if let Ok(v) = u64::from_str_radix(token, 16) {
                    out.push_str(&ids.placeholder(v));
                    token.clear();
                    return;
                }
            }
            out.push_str(token);
            token.clear();
        };
        for c in line.chars() {
            if c.is_ascii_alphanumeric() {
                token.push(c);
            } else {
                flush(&mut token, &mut out, &mut self.hex_ids);
                out.push(c);
            }
        }
        flush(&mut token, &mut out, &mut self.hex_ids);
        out
    }

    /// Normalizes one etcdctl `-w json` document.
    pub fn json(&mut self, v: &Value) -> Value {
        self.json_at(v, &mut Vec::new())
    }

    fn json_at(&mut self, v: &Value, path: &mut Vec<String>) -> Value {
        match v {
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, val) in map {
                    path.push(k.clone());
                    let nv = self.json_field(k, val, path);
                    path.pop();
                    out.insert(k.clone(), nv);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|i| self.json_at(i, path)).collect::<Vec<_>>()),
            Value::String(s) => Value::String(self.literals(s)),
            other => other.clone(),
        }
    }

    fn json_field(&mut self, key: &str, val: &Value, path: &mut Vec<String>) -> Value {
        let nonzero = |v: &Value| match v {
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Null => false,
            _ => true,
        };
        let as_u64 = |v: &Value| -> Option<u64> {
            v.as_u64().or_else(|| v.as_i64().map(|i| i as u64)).or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        let in_members = path.iter().any(|p| p == "members");
        match key {
            "cluster_id" if nonzero(val) => Value::String("<cluster_id>".into()),
            "raft_term" | "raftTerm" | "raftIndex" | "raftAppliedIndex" if nonzero(val) => {
                Value::String("<raft>".into())
            }
            "hash" if nonzero(val) => Value::String("<hash>".into()),
            "dbSize" | "dbSizeInUse" | "dbSizeQuota" | "totalSize" if nonzero(val) => Value::String("<size>".into()),
            "version" | "storageVersion" if val.is_string() && nonzero(val) => Value::String("<version>".into()),
            "took" if val.is_string() => Value::String("<duration>".into()),
            // LeaseTimeToLive remaining seconds: timing. Expired (-1) stays visible.
            "ttl" if val.as_i64().is_some_and(|t| t > 0) && path.len() == 1 => Value::String("<remaining>".into()),
            // LeaseLeases: unspecified (map) order in etcd; sort by normalized id.
            "leases" if val.is_array() => {
                let mut items: Vec<Value> = val.as_array().unwrap().iter().map(|i| self.json_at(i, path)).collect();
                items.sort_by_key(|i| i.to_string());
                Value::Array(items)
            }
            "member_id" | "leader" | "memberID" if nonzero(val) => match as_u64(val) {
                Some(id) => Value::String(self.members.placeholder(id)),
                None => val.clone(),
            },
            "ID" if in_members && nonzero(val) => match as_u64(val) {
                Some(id) => Value::String(self.members.placeholder(id)),
                None => val.clone(),
            },
            "ID" | "id" | "lease" if nonzero(val) => match as_u64(val) {
                Some(id) => Value::String(self.lease(id as i64)),
                None => val.clone(),
            },
            "key" | "value" | "range_end" if val.is_string() => Value::String(readable_b64(val.as_str().unwrap())),
            // Lease TimeToLive keys: etcd returns them in map order (unspecified), so sort.
            "keys" if val.is_array() => {
                let mut keys: Vec<Value> = val
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| match k.as_str() {
                        Some(s) => Value::String(readable_b64(s)),
                        None => k.clone(),
                    })
                    .collect();
                keys.sort_by_key(|k| k.to_string());
                Value::Array(keys)
            }
            _ => self.json_at(val, path),
        }
    }

    /// Normalizes etcdctl stdout that holds one or more JSON documents (one per line, as
    /// `watch -w json` prints them). Non-JSON lines go through [`Self::text`].
    pub fn json_stream(&mut self, s: &str) -> String {
        let mut out = String::new();
        let s = s.trim();
        // Single document (possibly pretty-printed over several lines)?
        if let Ok(v) = serde_json::from_str::<Value>(s) {
            let v = self.json(&v);
            out.push_str(&serde_json::to_string_pretty(&v).unwrap());
            out.push('\n');
            return out;
        }
        for line in s.lines() {
            match serde_json::from_str::<Value>(line.trim()) {
                Ok(v) => {
                    let v = self.json(&v);
                    out.push_str(&serde_json::to_string_pretty(&v).unwrap());
                    out.push('\n');
                }
                Err(_) => out.push_str(&self.text(line)),
            }
        }
        out
    }
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer::new()
    }
}

/// `attached keys([k2 k1])`: etcd lists a lease's keys in unspecified (map) order.
fn sort_attached_keys(line: &str) -> String {
    const M: &str = "attached keys([";
    let Some(i) = line.find(M) else {
        return line.to_owned();
    };
    let start = i + M.len();
    let Some(len) = line[start..].find("])") else {
        return line.to_owned();
    };
    let mut keys: Vec<&str> = line[start..start + len].split(' ').collect();
    keys.sort_unstable();
    format!("{}{}{}", &line[..start], keys.join(" "), &line[start + len..])
}

/// Replaces the text after `marker` (while `keep(c)`) by `with`.
fn blank_after(line: &str, marker: &str, keep: impl Fn(char) -> bool, with: &str) -> String {
    let Some(i) = line.find(marker) else {
        return line.to_owned();
    };
    let start = i + marker.len();
    let rest = &line[start..];
    let end = rest.find(|c: char| !keep(c)).unwrap_or(rest.len());
    format!("{}{with}{}", &line[..start], &rest[end..])
}

/// Decodes standard base64 (with padding). None if `s` is not valid base64.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Some(out)
}

/// `"Zm9v"` -> `"b64:foo"` when it decodes to printable UTF-8; otherwise unchanged.
fn readable_b64(s: &str) -> String {
    match b64_decode(s).map(String::from_utf8) {
        Some(Ok(t)) if t.chars().all(|c| !c.is_control()) => format!("b64:{t}"),
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64() {
        assert_eq!(b64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(b64_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(b64_decode("Zm9vYmE=").unwrap(), b"fooba");
        assert_eq!(b64_decode("").unwrap(), b"");
        assert!(b64_decode("Zm9").is_none());
        assert_eq!(readable_b64("Zm9v"), "b64:foo");
    }

    #[test]
    fn ids_keep_relations() {
        let mut n = Normalizer::new();
        let v = n.json(&json!({
            "header": {"cluster_id": 14841639068965178418u64, "member_id": 10276657743932975437u64,
                       "revision": 7, "raft_term": 2},
            "leader": 10276657743932975437u64,
            "kvs": [{"key": "Zm9v", "lease": 7587862071925817349i64, "version": 1},
                    {"key": "YmFy", "lease": 7587862071925817349i64},
                    {"key": "YmF6", "lease": 5}]
        }));
        assert_eq!(v["header"]["cluster_id"], "<cluster_id>");
        assert_eq!(v["header"]["member_id"], "<member-1>");
        assert_eq!(v["leader"], "<member-1>");
        assert_eq!(v["header"]["revision"], 7);
        assert_eq!(v["header"]["raft_term"], "<raft>");
        assert_eq!(v["kvs"][0]["key"], "b64:foo");
        assert_eq!(v["kvs"][0]["version"], 1);
        assert_eq!(v["kvs"][0]["lease"], "<id-1>");
        assert_eq!(v["kvs"][1]["lease"], "<id-1>");
        assert_eq!(v["kvs"][2]["lease"], "<id-2>");
    }

    #[test]
    fn zero_and_missing_stay_visible() {
        let mut n = Normalizer::new();
        let v = n.json(&json!({"header": {"cluster_id": 0, "raft_term": 0}, "version": ""}));
        assert_eq!(v["header"]["cluster_id"], 0);
        assert_eq!(v["header"]["raft_term"], 0);
        assert_eq!(v["version"], "");
    }

    #[test]
    fn text_ids_ports_and_logs() {
        let mut n = Normalizer::for_server(2379, 2380, "/tmp/x");
        let t = n.text(
            "lease 694d7d5b8f4a1c05 granted with TTL(60s)\n\
             lease 694d7d5b8f4a1c05 granted with TTL(60s), remaining(59s), attached keys([b a])\n\
             lease 0000000000000001 revoked\n\
             816680b3b2de54b, started, n1\n\
             http://127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.5ms\n\
             {\"level\":\"warn\",\"ts\":\"2024\",\"caller\":\"x.go:1\",\"msg\":\"retrying\",\"target\":\"0xc0001\",\"error\":\"rpc error: boom\"}\n\
             Snapshot saved at /tmp/x/snap.db   \n",
        );
        assert_eq!(
            t,
            "lease <id-1> granted with TTL(60s)\n\
             lease <id-1> granted with TTL(60s), remaining(<remaining>), attached keys([a b])\n\
             lease <id-2> revoked\n\
             <id-3>, started, n1\n\
             http://127.0.0.1:<client-port> is healthy: successfully committed proposal: took = <duration>\n\
             [log warn] retrying: rpc error: boom\n\
             Snapshot saved at <dir>/snap.db\n"
        );
    }

    #[test]
    fn adjacent_log_lines_are_sorted() {
        let mut n = Normalizer::new();
        let log = |msg: &str| format!("{{\"level\":\"info\",\"msg\":\"{msg}\"}}\n");
        let a = n.text(&format!("{}{}{}Error: x\n", log("opened"), log("zeta"), log("alpha")));
        let b = n.text(&format!("{}{}{}Error: x\n", log("opened"), log("alpha"), log("zeta")));
        assert_eq!(a, b);
        assert_eq!(a, "[log info] alpha\n[log info] opened\n[log info] zeta\nError: x\n");
    }

    #[test]
    fn json_stream_lines() {
        let mut n = Normalizer::new();
        let out = n.json_stream("{\"a\":1}\n{\"b\":\"Zm9v\",\"key\":\"Zm9v\"}\nplain\n");
        assert!(out.contains("\"a\": 1"));
        assert!(out.contains("\"key\": \"b64:foo\""));
        assert!(out.contains("\"b\": \"Zm9v\""));
        assert!(out.ends_with("plain\n"));
    }

    #[test]
    fn lease_list_is_sorted() {
        let mut n = Normalizer::new();
        let a = n.text("found 2 leases\n694d7d5b8f4a1c05\n694d7d5b8f4a1c09\n");
        let mut m = Normalizer::new();
        m.text("694d7d5b8f4a1c05 694d7d5b8f4a1c09");
        let b = m.text("found 2 leases\n694d7d5b8f4a1c09\n694d7d5b8f4a1c05\n");
        assert_eq!(a, b);
        assert_eq!(a, "found 2 leases\n<id-1>\n<id-2>\n");
    }

    #[test]
    fn fields_output() {
        let mut n = Normalizer::new();
        let t = n.text(
            "\"ClusterID\" : 9917533243109319682\n\"MemberID\" : 5521189055713193810\n\
             \"Revision\" : 15\n\"RaftTerm\" : 2\n\"Lease\" : 0\n\"Lease\" : 7587862071925817349\n",
        );
        assert_eq!(
            t,
            "\"ClusterID\" : <cluster_id>\n\"MemberID\" : <member-1>\n\"Revision\" : 15\n\
             \"RaftTerm\" : <raft>\n\"Lease\" : 0\n\"Lease\" : <id-1>\n"
        );
    }
}
