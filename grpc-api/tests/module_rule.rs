//! The dependency rule of the node tree (`src/node/`, see docs/ARCHITECTURE.md, "Module tree
//! of the node"): the node — group runtimes, apply, membership, peer transport, tenants —
//! reaches no protocol service and not the binary's wiring. Services depend on the node,
//! never the other way round; what the node needs from the serving layer it is handed
//! (`node::tenants::RouterFactory`, `node::tenants::PortServer`).
//!
//! The check reads the sources: every path into the crate (`crate::x`, `crate::{x, ..}`, or
//! the same climbed to with `super::`) from a file under `src/node/` must not name one of
//! the modules below.

use std::path::{Path, PathBuf};

/// The crate's modules the node tree must not use: the client-facing services, the HTTP
/// endpoints, the binary's wiring and its command-line tools.
const FORBIDDEN: &[&str] =
    &["auth", "cluster", "http", "kv", "lease", "maintenance", "migrate", "serve", "tenant_cli", "tenants", "watch"];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The top-level modules of the crate that `text` names through a path from the crate
/// root. `depth` is how many `super::` reach the crate root from the file's module
/// (1 for `node/mod.rs`, 2 for `node/x.rs`, ...). Comments are skipped.
fn crate_modules_used(text: &str, depth: usize) -> Vec<String> {
    let climb = "super::".repeat(depth);
    let mut used = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let code = code.replace(&climb, "crate::");
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names = match rest.strip_prefix('{') {
                // `crate::{a, b::c, ...}` on one line: each first segment.
                Some(group) => group.split('}').next().unwrap_or_default().split(',').map(str::trim).collect(),
                None => vec![rest],
            };
            for name in names {
                let ident: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !ident.is_empty() {
                    used.push(ident);
                }
            }
        }
    }
    used
}

/// Each use of a forbidden module by a file under `node_dir`, as `file: module`.
fn violations(node_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for file in sources(node_dir) {
        let relative = file.strip_prefix(node_dir).expect("under the node dir");
        // node/mod.rs is the `node` module (one `super::` to the root); node/x.rs is
        // `node::x` (two), node/x/y.rs `node::x::y` (three), ...
        let depth = relative.components().count() + usize::from(file.file_name().is_some_and(|n| n != "mod.rs"));
        let text = std::fs::read_to_string(&file).unwrap();
        for module in crate_modules_used(&text, depth) {
            if FORBIDDEN.contains(&module.as_str()) {
                found.push(format!("{}: crate::{module}", relative.display()));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_node_tree_uses_no_service() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/node");
    assert!(node_dir.join("mod.rs").is_file(), "{} has no mod.rs", node_dir.display());
    let found = violations(&node_dir);
    assert!(
        found.is_empty(),
        "the node tree must not depend on a service or the binary's wiring (docs/ARCHITECTURE.md, \"Module tree of \
         the node\"); move what it needs into src/node/ or have the serving layer hand it over:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_every_form_of_path() {
    let used = |text: &str, depth| crate_modules_used(text, depth);
    assert_eq!(used("use crate::kv::KvService;", 2), ["kv"]);
    assert_eq!(used("let x = crate::serve::serve_router(l, r);", 2), ["serve"]);
    assert_eq!(used("use crate::{error::EtcdError, watch};", 2), ["error", "watch"]);
    assert_eq!(used("use super::super::lease::LeaseService;", 2), ["lease"]);
    assert_eq!(used("use super::maintenance::Alarms;", 1), ["maintenance"]);
    // The node's own modules and the shared foundations are allowed; so are comments.
    assert_eq!(used("use crate::node::tenants::Tenants; // not crate::http", 2), ["node"]);
    assert_eq!(used("/// See `crate::tenants`.", 2), Vec::<String>::new());
    assert_eq!(used("use crate::auth_config::AuthConfig;", 1), ["auth_config"]);
    // A sibling inside the node tree, reached with one `super::`, is not the crate root.
    assert_eq!(used("use super::lessor::Lessor;", 2), Vec::<String>::new());
}
