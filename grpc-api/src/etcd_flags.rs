//! How etcd reads its flags, for `plinth serve`: Go's `flag` package and `ETCD_*` variables.
//!
//! etcd parses its command line with Go's `flag` package, so `-data-dir /x`, `--data-dir=/x`
//! and `-client-cert-auth` are all flags, and every flag left off the command line is read from
//! the environment as `ETCD_<FLAG>` (upper case, `-` as `_`; `ETCD_DATA_DIR`) when that
//! variable is not empty. Manifests and service units written for etcd rely on both (the
//! Kubernetes test framework starts etcd with `-log-level warn`; container images configure it
//! through `ETCD_*`). [`rewrite`] turns such an argument list into the one clap parses:
//!
//! - `-flag` becomes `--flag` for every long flag `serve` knows (the value after a flag that
//!   takes one is left alone, even when it starts with `-`);
//! - each flag not on the command line whose `ETCD_*` variable is set and not empty is appended
//!   as `--flag=value` (a flag without a value takes Go's booleans: appended for true, left
//!   off for false);
//! - as in etcd, a variable set for a flag that is also on the command line is an error
//!   ("conflicting environment variable ... is shadowed ..."), and `ETCD_*` variables that name
//!   no flag are reported as unrecognized (a warning, not an error).

use std::collections::{BTreeMap, HashSet};

use clap::{Args, Command};

use crate::config::ServeArgs;

/// The rewritten argument list and what to log once logging is up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub args: Vec<String>,
    /// `ETCD_*` variables used, as `KEY=value` (etcd logs each one).
    pub used_env: Vec<String>,
    /// `ETCD_*` variables that name no flag, as `KEY=value`.
    pub unrecognized_env: Vec<String>,
}

/// What rewriting needs to know of one flag.
struct FlagSpec {
    name: String,
    /// The flag takes its value as the next argument when none is attached with `=`.
    separate_value: bool,
    /// The flag takes no value at all (clap's `SetTrue`-like actions).
    no_value: bool,
}

fn serve_flags() -> BTreeMap<String, FlagSpec> {
    let cmd = ServeArgs::augment_args(Command::new("serve"));
    let mut flags = BTreeMap::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let takes_values = arg.get_action().takes_values();
        let spec = |name: &str| FlagSpec {
            name: name.to_string(),
            separate_value: takes_values && !arg.is_require_equals_set(),
            no_value: !takes_values,
        };
        flags.insert(long.to_string(), spec(long));
        for alias in arg.get_all_aliases().into_iter().flatten() {
            flags.insert(alias.to_string(), spec(long));
        }
    }
    flags
}

/// etcd's environment key of a flag: `data-dir` → `ETCD_DATA_DIR`.
fn env_key(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_uppercase())
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Rewrites `args` (the whole command line, program name first) when its subcommand is
/// `serve`; any other command line comes back unchanged. `env` is the process environment.
pub fn rewrite(args: Vec<String>, env: &[(String, String)]) -> Result<Rewritten, String> {
    if args.get(1).map(String::as_str) != Some("serve") {
        return Ok(Rewritten { args, ..Default::default() });
    }
    let flags = serve_flags();
    let mut out: Vec<String> = args[..2].to_vec();
    let mut given: HashSet<String> = HashSet::new();
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            out.push(arg.clone());
            out.extend(rest.by_ref().cloned());
            break;
        }
        let body = match arg.strip_prefix("--") {
            Some(body) => Some(body),
            None => arg.strip_prefix('-').filter(|b| b.len() > 1),
        };
        let spec = body.and_then(|b| flags.get(b.split('=').next().unwrap_or(b)));
        match (body, spec) {
            (Some(body), Some(spec)) => {
                given.insert(spec.name.clone());
                out.push(format!("--{body}"));
                if spec.separate_value && !body.contains('=') {
                    if let Some(value) = rest.next() {
                        out.push(value.clone());
                    }
                }
            }
            _ => out.push(arg.clone()),
        }
    }

    let mut rewritten = Rewritten::default();
    let mut known_keys: HashSet<String> = HashSet::new();
    let env: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // One pass per flag (aliases share their flag's variable).
    let mut seen: HashSet<&str> = HashSet::new();
    for spec in flags.values() {
        if !seen.insert(&spec.name) {
            continue;
        }
        let key = env_key(&spec.name);
        known_keys.insert(key.clone());
        let Some(value) = env.get(key.as_str()) else { continue };
        if given.contains(&spec.name) {
            return Err(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding command-line flag \
                 (either unset environment variable or disable flag)"
            ));
        }
        if value.is_empty() {
            continue;
        }
        if spec.no_value {
            match go_bool(value) {
                Some(true) => out.push(format!("--{}", spec.name)),
                Some(false) => {}
                None => return Err(format!("invalid value {value:?} for {key}: parse error")),
            }
        } else {
            out.push(format!("--{}={value}", spec.name));
        }
        rewritten.used_env.push(format!("{key}={value}"));
    }
    for (key, value) in &env {
        if key.starts_with("ETCD_") && !known_keys.contains(*key) {
            rewritten.unrecognized_env.push(format!("{key}={value}"));
        }
    }
    rewritten.args = out;
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn go_style_single_dash_flags_become_long_flags() {
        let r = rewrite(
            args("plinth serve -data-dir /d -log-level warn --name=n1 -client-cert-auth=true -listen-peer-urls=http://x:1"),
            &[],
        )
        .unwrap();
        assert_eq!(
            r.args,
            args("plinth serve --data-dir /d --log-level warn --name=n1 --client-cert-auth=true --listen-peer-urls=http://x:1")
        );
    }

    #[test]
    fn a_value_that_starts_with_a_dash_stays_a_value() {
        let r = rewrite(args("plinth serve --initial-cluster-token -name -name n1"), &[]).unwrap();
        assert_eq!(r.args, args("plinth serve --initial-cluster-token -name --name n1"));
    }

    #[test]
    fn unknown_flags_and_other_commands_are_left_to_clap() {
        let r = rewrite(args("plinth serve -bogus-flag 1 -h"), &[]).unwrap();
        assert_eq!(r.args, args("plinth serve -bogus-flag 1 -h"));
        let r = rewrite(args("plinth tenant list -w json"), &env(&[("ETCD_NAME", "x")])).unwrap();
        assert_eq!(r.args, args("plinth tenant list -w json"));
        assert!(r.used_env.is_empty());
    }

    #[test]
    fn etcd_variables_fill_flags_left_off_the_command_line() {
        let e = env(&[
            ("ETCD_DATA_DIR", "/var/lib/etcd"),
            ("ETCD_CLIENT_CERT_AUTH", "true"),
            ("ETCD_LOG_LEVEL", ""),
            ("ETCD_BOGUS", "1"),
            ("ETCDCTL_API", "3"),
            ("HOME", "/root"),
        ]);
        let r = rewrite(args("plinth serve --name n1"), &e).unwrap();
        let mut tail = r.args[4..].to_vec();
        tail.sort();
        assert_eq!(r.args[..4], args("plinth serve --name n1")[..]);
        assert_eq!(tail, vec!["--client-cert-auth=true".to_string(), "--data-dir=/var/lib/etcd".to_string()]);
        let mut used = r.used_env.clone();
        used.sort();
        assert_eq!(used, vec!["ETCD_CLIENT_CERT_AUTH=true", "ETCD_DATA_DIR=/var/lib/etcd"]);
        assert_eq!(r.unrecognized_env, vec!["ETCD_BOGUS=1"]);
        // Parsed by the real command line.
        let cmd = ServeArgs::augment_args(Command::new("serve"));
        let m = cmd.try_get_matches_from(&r.args[1..]).unwrap();
        let parsed = <ServeArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        assert_eq!(parsed.data_dir.as_deref(), Some("/var/lib/etcd"));
        assert_eq!(parsed.security.client_cert_auth, Some(true));
    }

    #[test]
    fn a_variable_shadowed_by_a_flag_is_an_error_as_in_etcd() {
        let e = env(&[("ETCD_NAME", "other")]);
        let err = rewrite(args("plinth serve -name n1"), &e).unwrap_err();
        assert_eq!(
            err,
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag \
             (either unset environment variable or disable flag)"
        );
    }
}
