//! The member's auth settings, from `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost` and
//! `--client-cert-auth`: what the node carries in its configuration for the Auth service and
//! the permission checks (`auth.rs`), which sign and verify tokens with them.

use std::sync::Arc;
use std::time::Duration;

/// etcd's defaults: `--auth-token-ttl` 300 s, `--bcrypt-cost` 10.
pub const TOKEN_TTL_DEFAULT_SECS: u64 = 300;
/// See [`TOKEN_TTL_DEFAULT_SECS`].
pub const BCRYPT_COST_DEFAULT: u32 = 10;
/// etcd's default lifetime of a JWT token (`ttl=` of `--auth-token jwt,...`).
const JWT_TTL_DEFAULT: Duration = Duration::from_secs(5 * 60);

/// `--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...`: tokens signed by
/// this member and verified by every member with the same keys, carrying the user, the auth
/// revision they were issued at and their expiry (etcd's claims). No token state: a token
/// issued before an auth change is refused with `revision of auth store is old`.
#[derive(Clone)]
pub struct JwtConfig {
    pub(crate) algorithm: jsonwebtoken::Algorithm,
    /// `None` with only `pub-key=`: this member verifies tokens but cannot issue them.
    pub(crate) signing: Option<jsonwebtoken::EncodingKey>,
    pub(crate) verifying: jsonwebtoken::DecodingKey,
    pub(crate) ttl: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are never printed.
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("signs", &self.signing.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl JwtConfig {
    /// Parses the options after `jwt,` (etcd's names: `pub-key`, `priv-key`, `sign-method`,
    /// `ttl`) and loads the keys.
    pub(crate) fn parse(options: &str) -> anyhow::Result<JwtConfig> {
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, JWT_TTL_DEFAULT);
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (k, v) = option
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--auth-token jwt: option {option:?} is not key=value"))?;
            match k {
                "pub-key" => public = Some(v.to_owned()),
                "priv-key" => private = Some(v.to_owned()),
                "sign-method" => method = Some(v.to_owned()),
                "ttl" => ttl = crate::config::parse_go_duration(v)?,
                other => anyhow::bail!("--auth-token jwt: unknown option {other:?}"),
            }
        }
        let method = method.ok_or_else(|| anyhow::anyhow!("--auth-token jwt: sign-method= is required"))?;
        let algorithm: jsonwebtoken::Algorithm =
            method.parse().map_err(|_| anyhow::anyhow!("--auth-token jwt: sign-method {method:?} is not supported"))?;
        let read = |what: &str, path: &str| {
            std::fs::read(path).map_err(|e| anyhow::anyhow!("--auth-token jwt: {what} {path:?}: {e}"))
        };
        use jsonwebtoken::{Algorithm as A, DecodingKey, EncodingKey};
        let (signing, verifying) = match algorithm {
            A::HS256 | A::HS384 | A::HS512 => {
                // An HMAC key is a shared secret: the private key file holds it.
                let path = private.ok_or_else(|| anyhow::anyhow!("--auth-token jwt: {method} needs priv-key="))?;
                let secret = read("priv-key", &path)?;
                (Some(EncodingKey::from_secret(&secret)), DecodingKey::from_secret(&secret))
            }
            _ => {
                let path = public.ok_or_else(|| anyhow::anyhow!("--auth-token jwt: {method} needs pub-key="))?;
                let pem = read("pub-key", &path)?;
                let bad = |e: jsonwebtoken::errors::Error| anyhow::anyhow!("--auth-token jwt: {path:?}: {e}");
                let verifying = match algorithm {
                    A::ES256 | A::ES384 => DecodingKey::from_ec_pem(&pem).map_err(bad)?,
                    A::EdDSA => DecodingKey::from_ed_pem(&pem).map_err(bad)?,
                    _ => DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
                };
                let signing = match private {
                    None => None,
                    Some(path) => {
                        let pem = read("priv-key", &path)?;
                        let bad = |e: jsonwebtoken::errors::Error| anyhow::anyhow!("--auth-token jwt: {path:?}: {e}");
                        Some(match algorithm {
                            A::ES256 | A::ES384 => EncodingKey::from_ec_pem(&pem).map_err(bad)?,
                            A::EdDSA => EncodingKey::from_ed_pem(&pem).map_err(bad)?,
                            _ => EncodingKey::from_rsa_pem(&pem).map_err(bad)?,
                        })
                    }
                };
                (signing, verifying)
            }
        };
        Ok(JwtConfig { algorithm, signing, verifying, ttl })
    }
}

/// The member's auth settings, from `--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// How long a simple token lives without use.
    pub token_ttl: Duration,
    /// bcrypt cost of the password hashes this member makes.
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a request without a token acts as the Common Name of its
    /// verified client certificate (etcd's rule, so kube-apiserver needs no token).
    pub client_cert_auth: bool,
    /// JWT tokens instead of simple ones (`--auth-token jwt,...`).
    pub jwt: Option<Arc<JwtConfig>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: Duration::from_secs(TOKEN_TTL_DEFAULT_SECS),
            bcrypt_cost: BCRYPT_COST_DEFAULT,
            client_cert_auth: false,
            jwt: None,
        }
    }
}

impl AuthConfig {
    /// Parses etcd's flags. `--auth-token` takes `simple` (the default) or
    /// `jwt,pub-key=...,priv-key=...,sign-method=...[,ttl=...]`; anything else is refused with
    /// its reason.
    pub fn from_flags(
        auth_token: Option<&str>,
        auth_token_ttl: Option<&str>,
        bcrypt_cost: Option<&str>,
        client_cert_auth: bool,
    ) -> anyhow::Result<AuthConfig> {
        let mut cfg = AuthConfig { client_cert_auth, ..AuthConfig::default() };
        match auth_token.map(str::trim) {
            None | Some("simple") => {}
            Some(jwt) if jwt == "jwt" || jwt.starts_with("jwt,") => {
                cfg.jwt = Some(Arc::new(JwtConfig::parse(jwt.trim_start_matches("jwt"))?));
            }
            Some(other) => {
                anyhow::bail!("--auth-token {other:?}: not supported by this build (only 'simple' and 'jwt,...')")
            }
        }
        if let Some(ttl) = auth_token_ttl {
            let secs: u64 =
                ttl.trim().parse().map_err(|_| anyhow::anyhow!("--auth-token-ttl {ttl:?}: not a number of seconds"))?;
            anyhow::ensure!(secs > 0, "--auth-token-ttl must be positive");
            cfg.token_ttl = Duration::from_secs(secs);
        }
        if let Some(cost) = bcrypt_cost {
            let cost: u32 = cost.trim().parse().map_err(|_| anyhow::anyhow!("--bcrypt-cost {cost:?}: not a number"))?;
            // bcrypt's own bounds (etcd refuses the same values).
            anyhow::ensure!((4..=31).contains(&cost), "--bcrypt-cost must be between 4 and 31");
            cfg.bcrypt_cost = cost;
        }
        Ok(cfg)
    }
}
