//! etcd's `Auth` service, the caller of every request (the `token` metadata), and the
//! permission checks the other services make before they read or propose.
//!
//! The auth store itself (users, roles, permissions, enabled flag, auth revision) is state
//! of the log, in `store::auth`: every mutation here is a [`store::CommandBody::Auth`]
//! proposal, applied with etcd's checks on every member. Passwords are hashed with bcrypt
//! at `--bcrypt-cost` on the proposing member, off the runtime, before anything is proposed:
//! no plaintext password reaches the log.
//!
//! `Authenticate` checks the password against the local auth store, picks a simple token
//! (`<16 letters>.<n>`, etcd's shape) and proposes it: every member learns the token when it
//! applies the entry, so a client may use it on any member (etcd assigns simple tokens
//! through Raft for the same reason). A simple token lives `--auth-token-ttl` seconds
//! without use on each member.
//!
//! With `--auth-token jwt,...` the token is instead a JWT signed by the authenticating
//! member ([`JwtConfig`]) with the user and the auth revision it was issued at; members keep
//! no token state. With `--client-cert-auth`, a request without a token acts as its verified
//! client certificate's Common Name.
//!
//! Permission rules are etcd's (`store::auth::AuthState::check_*`): reads are checked here
//! against the local auth store, after the read barrier of a linearizable read; writes are
//! checked here too and proposed wrapped in [`store::CommandBody::Checked`] with the auth
//! revision they were checked at, so a permission change that applies first refuses them on
//! every member with `etcdserver: revision of auth store is old` instead of letting them
//! through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::Rng;
use tonic::{Request, Response, Status};

use crate::auth_config::JwtConfig;
use crate::error::{store_status, EtcdError};
use crate::node::Node;
use crate::pb::authpb;
use crate::pb::etcdserverpb::{self as pb, auth_server::Auth};
use store::auth::{self as sa, AuthCommand, AuthState};

/// Letters of a simple token before its `.<n>` suffix (etcd's length).
const SIMPLE_TOKEN_LETTERS: usize = 16;

/// The claims of a JWT token, with etcd's names.
#[derive(serde::Serialize, serde::Deserialize)]
struct JwtClaims {
    username: String,
    revision: u64,
    exp: u64,
    /// The group (tenant) whose auth store issued the token: every tenant has its own users,
    /// so a token is valid in its tenant only. Absent in tokens of the default tenant.
    #[serde(default = "default_group", skip_serializing_if = "is_default_group")]
    plinth_group: u64,
}

fn default_group() -> u64 {
    crate::node::DEFAULT_GROUP
}

fn is_default_group(group: &u64) -> bool {
    *group == crate::node::DEFAULT_GROUP
}

impl JwtConfig {
    /// A token for `user` at auth revision `revision`, expiring `ttl` from `now`.
    fn sign(&self, user: &str, revision: u64, group: u64, now: std::time::SystemTime) -> Result<String, Status> {
        let key = self
            .signing
            .as_ref()
            .ok_or_else(|| Status::unknown("auth: this member has no JWT private key to sign tokens with"))?;
        let exp = (now + self.ttl).duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = JwtClaims { username: user.to_owned(), revision, exp, plinth_group: group };
        jsonwebtoken::encode(&jsonwebtoken::Header::new(self.algorithm), &claims, key)
            .map_err(|e| Status::internal(format!("jwt: {e}")))
    }

    /// The user and auth revision of a valid, unexpired token signed with this key for
    /// `group`'s auth store.
    fn verify(&self, token: &str, group: u64) -> Option<(String, u64)> {
        let mut validation = jsonwebtoken::Validation::new(self.algorithm);
        // etcd's jwt library allows no leeway on expiry.
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<JwtClaims>(token, &self.verifying, &validation).ok()?;
        if data.claims.plinth_group != group {
            return None;
        }
        Some((data.claims.username, data.claims.revision))
    }
}

/// Who a request acts as: its user (`None` without a token) and the auth store it is
/// checked against.
pub struct Caller {
    user: Option<Arc<str>>,
    /// The auth revision the request is checked at (a simple token stands for the store's
    /// current revision, as in etcd).
    revision: u64,
    state: Arc<AuthState>,
}

/// The metadata keys etcd reads a token from (`rpctypes.TokenFieldNameGRPC`, and the
/// gateway's `authorization`).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// The caller of `request` (etcd's `AuthInfoFromCtx`): with auth disabled nobody in
/// particular, but a token sent anyway must be one this member knows; otherwise the user of its token, `etcdserver: invalid auth token` for a
/// token this member does not know (expired, or from before a password change); without a
/// token, with `--client-cert-auth`, the Common Name of the connection's verified client
/// certificate (etcd's `AuthInfoFromTLS`); else no user (every check then answers
/// `etcdserver: user name is empty`).
pub fn caller<T>(node: &Node, request: &Request<T>) -> Result<Caller, Status> {
    caller_of(node, request.metadata(), certificate_user(node, request))
}

/// The user a request's client certificate names, when `--client-cert-auth` makes it one.
pub fn certificate_user<T>(node: &Node, request: &Request<T>) -> Option<String> {
    if !node.cfg.auth.client_cert_auth {
        return None;
    }
    crate::tls::client_common_name(request).filter(|cn| !cn.is_empty())
}

/// The root check of etcd's maintenance RPCs, with their unmapped errors: `Unknown` with
/// the auth store's text (an unknown token too).
pub fn check_admin_unmapped<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    match caller(node, request) {
        Ok(c) => c.check_admin_unmapped(),
        Err(s) if s.message() == EtcdError::InvalidAuthToken.message() => Err(crate::error::unmapped_invalid_token()),
        Err(s) => Err(s),
    }
}

/// [`caller`] from a request's metadata (a watch stream keeps its opening metadata and
/// resolves its caller again at every create, as etcd does).
pub fn caller_of(
    node: &Node,
    metadata: &tonic::metadata::MetadataMap,
    certificate_user: Option<String>,
) -> Result<Caller, Status> {
    let state = node.store.auth(node.group());
    let revision = state.revision;
    let token = TOKEN_KEYS.iter().find_map(|k| metadata.get(*k)).and_then(|v| v.to_str().ok());
    if !state.enabled {
        // etcd resolves a request's token whether or not auth is enabled, and refuses one it
        // does not know: a simple token from before `auth disable` (disabling drops every
        // simple token), or garbage. A JWT token that verifies is accepted. Nobody is checked
        // either way.
        if let Some(token) = token {
            let known = match &node.cfg.auth.jwt {
                Some(jwt) => jwt.verify(token, node.group().0).is_some(),
                None => node.store.simple_token_user(node.group(), token, node.cfg.auth.token_ttl).is_some(),
            };
            if !known {
                return Err(EtcdError::InvalidAuthToken.status());
            }
        }
        return Ok(Caller { user: None, revision, state });
    }
    let (user, revision) = match (token, &node.cfg.auth.jwt) {
        (None, _) => (certificate_user.map(Arc::from), revision),
        // A JWT token stands for the auth revision it was issued at.
        (Some(token), Some(jwt)) => {
            let (user, issued_at) =
                jwt.verify(token, node.group().0).ok_or_else(|| EtcdError::InvalidAuthToken.status())?;
            (Some(Arc::from(user)), issued_at)
        }
        (Some(token), None) => {
            let user = node
                .store
                .simple_token_user(node.group(), token, node.cfg.auth.token_ttl)
                .ok_or_else(|| EtcdError::InvalidAuthToken.status())?;
            (Some(user), revision)
        }
    };
    Ok(Caller { user, revision, state })
}

fn denied(e: store::Error) -> Status {
    store_status(&e)
}

impl Caller {
    /// Whether the request is checked at all (auth enabled).
    pub fn enabled(&self) -> bool {
        self.state.enabled
    }

    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Read permission on `[key, range_end)`.
    pub fn check_read(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.state.check_read(self.user(), self.revision, key, range_end).map_err(denied)
    }

    /// Write permission on `[key, range_end)`.
    pub fn check_write(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.state.check_write(self.user(), self.revision, key, range_end).map_err(denied)
    }

    /// The root role (etcd's `IsAdminPermitted`).
    pub fn check_admin(&self) -> Result<(), Status> {
        self.state.check_admin(self.user(), self.revision).map_err(denied)
    }

    /// [`Caller::check_admin`] answered as etcd's maintenance RPCs answer it (see
    /// [`crate::error::unmapped_auth_status`]).
    pub fn check_admin_unmapped(&self) -> Result<(), Status> {
        self.state.check_admin(self.user(), self.revision).map_err(|e| crate::error::unmapped_auth_status(&e))
    }

    /// A put: write on its key, and read too when it asks for the previous value.
    pub fn check_put(&self, p: &store::PutRequest) -> Result<(), Status> {
        self.check_write(&p.key, b"")?;
        if p.prev_kv {
            self.check_read(&p.key, b"")?;
        }
        Ok(())
    }

    /// A delete: write on its range, and read too when it asks for the previous values.
    pub fn check_delete(&self, d: &store::DeleteRangeRequest) -> Result<(), Status> {
        self.check_write(&d.key, &d.range_end)?;
        if d.prev_kv {
            self.check_read(&d.key, &d.range_end)?;
        }
        Ok(())
    }

    /// A txn (etcd's `checkTxnAuth`): read on every compare, and every op of both branches,
    /// nested txns included, whichever branch will run.
    pub fn check_txn(&self, t: &store::TxnRequest) -> Result<(), Status> {
        if !self.enabled() {
            return Ok(());
        }
        for c in &t.compare {
            self.check_read(&c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(store::Request::Range(r)) => self.check_read(&r.key, &r.range_end)?,
                Some(store::Request::Put(p)) => self.check_put(p)?,
                Some(store::Request::DeleteRange(d)) => self.check_delete(d)?,
                Some(store::Request::Txn(t)) => self.check_txn(t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// The keys attached to lease `lease` must all be writable (etcd's `checkLeasePuts`, for
    /// a put with that lease and a revoke of it), unless the caller is root.
    pub fn check_lease_keys(&self, node: &Node, lease: i64) -> Result<(), Status> {
        if !self.enabled() || lease == 0 || self.check_admin().is_ok() {
            return Ok(());
        }
        let keys = node.store.lease_keys(node.group(), lease).map_err(|e| store_status(&e))?;
        for key in keys {
            self.check_write(&key, b"")?;
        }
        Ok(())
    }

    /// `body` as proposed for this caller: with auth enabled, wrapped with the auth revision
    /// its permissions were checked at, so apply refuses it if they may have changed since.
    pub fn checked(&self, body: store::CommandBody) -> store::CommandBody {
        if !self.enabled() {
            return body;
        }
        store::CommandBody::Checked(Box::new(store::CheckedCommand {
            auth_revision: self.revision,
            command: Some(Box::new(store::Command::new(0, body))),
        }))
    }
}

/// The Auth service.
pub struct AuthService {
    node: Arc<Node>,
    /// Makes simple tokens unique on this member (the `.<n>` suffix).
    tokens_issued: AtomicU64,
}

impl AuthService {
    /// The service of `node`.
    pub fn new(node: Arc<Node>) -> AuthService {
        AuthService { node, tokens_issued: AtomicU64::new(0) }
    }

    /// Proposes an auth command for a root caller (or anyone while auth is disabled).
    async fn admin_propose<T>(&self, request: &Request<T>, cmd: AuthCommand) -> Result<sa::AuthResponse, Status> {
        caller(&self.node, request)?.check_admin()?;
        self.propose(cmd).await
    }

    async fn propose(&self, cmd: AuthCommand) -> Result<sa::AuthResponse, Status> {
        let body = store::CommandBody::Auth(sa::AuthRequest { command: Some(cmd) });
        match self.node.propose(body).await? {
            store::CommandResponse::Auth(r) => Ok(r),
            other => Err(Status::internal(format!("auth command applied with {other:?}"))),
        }
    }

    /// The local auth store after a read barrier (etcd serves auth reads through the log),
    /// for a root caller checked after the barrier too.
    async fn admin_read<T>(&self, request: &Request<T>) -> Result<Arc<AuthState>, Status> {
        self.node.read_barrier_as_proposal().await?;
        caller(&self.node, request)?.check_admin()?;
        Ok(self.node.store.auth(self.node.group()))
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.node.current_header())
    }

    /// A bcrypt hash of `password` at the member's cost, computed off the runtime (a cost
    /// of 10 takes tens of milliseconds).
    async fn hash(&self, password: String) -> Result<bytes::Bytes, Status> {
        let cost = self.node.cfg.auth.bcrypt_cost;
        let hashed = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("bcrypt: {e}")))?;
        Ok(hashed.into())
    }
}

fn simple_token(n: u64) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let letters: String =
        (0..SIMPLE_TOKEN_LETTERS).map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char).collect();
    format!("{letters}.{n}")
}

fn perm_to_pb(p: &sa::Permission) -> authpb::Permission {
    authpb::Permission { perm_type: p.perm_type, key: p.key.clone(), range_end: p.range_end.clone() }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        // Nobody is checked before auth is enabled; once enabled, enabling again is a no-op
        // for root only, as etcd's.
        self.admin_propose(&request, AuthCommand::Enable(sa::AuthEnableRequest {})).await?;
        Ok(Response::new(pb::AuthEnableResponse { header: self.header() }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.admin_propose(&request, AuthCommand::Disable(sa::AuthDisableRequest {})).await?;
        Ok(Response::new(pb::AuthDisableResponse { header: self.header() }))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        // Root only once enabled (etcd's needAdminPermission lists AuthStatus).
        let state = self.admin_read(&request).await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        // Ordering: as etcd's `Authenticate`, a linearizable read point first, so the password
        // is checked against an auth store that holds every change acknowledged before the
        // call (a user just added, auth just enabled, through another member). It answers as a
        // linearizable read does when the member knows no leader.
        self.node.read_barrier().await?;
        let req = request.into_inner();
        let state = self.node.store.auth(self.node.group());
        if !state.enabled {
            return Err(EtcdError::AuthNotEnabled.status());
        }
        let password_hash = match state.user(&req.name) {
            Some(u) if u.no_password => return Err(EtcdError::NoPasswordUser.status()),
            Some(u) => u.password_hash.clone(),
            None => return Err(EtcdError::AuthFailed.status()),
        };
        let password = req.password;
        let hash = String::from_utf8_lossy(&password_hash).into_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !ok {
            return Err(EtcdError::AuthFailed.status());
        }
        // A simple token is learned by every member from the log; a JWT token needs no
        // state, but still goes through the log. Apply issues either only if the hash the
        // password was checked against is still the user's (a password change or deletion
        // committed meanwhile refuses it; other auth changes do not, so logins go through
        // while the auth store changes).
        let jwt = self.node.cfg.auth.jwt.clone();
        let simple = match &jwt {
            Some(_) => String::new(),
            None => simple_token(self.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1),
        };
        let issued = self
            .propose(AuthCommand::Authenticate(sa::AuthenticateRequest {
                name: req.name.clone(),
                simple_token: simple.clone(),
                password_hash,
            }))
            .await?;
        let sa::AuthResponse::Authenticated { revision, .. } = issued else {
            return Err(Status::internal(format!("authenticate applied as {issued:?}")));
        };
        let token = match jwt {
            // The token stands for the auth revision it was issued at.
            Some(jwt) => jwt.sign(&req.name, revision, self.node.group().0, std::time::SystemTime::now())?,
            None => simple,
        };
        Ok(Response::new(pb::AuthenticateResponse { header: self.header(), token }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        caller(&self.node, &request)?.check_admin()?;
        let req = request.into_inner();
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            bytes::Bytes::new()
        } else if !req.hashed_password.is_empty() {
            req.hashed_password.into()
        } else {
            self.hash(req.password).await?
        };
        self.propose(AuthCommand::UserAdd(sa::UserAddRequest { name: req.name, password_hash, no_password })).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header: self.header() }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        // A user may read its own roles (etcd's authApplierV3.UserGet).
        self.node.read_barrier_as_proposal().await?;
        let c = caller(&self.node, &request)?;
        let name = &request.get_ref().name;
        if let Err(denied) = c.check_admin() {
            if c.user() != Some(name.as_str()) {
                return Err(denied);
            }
        }
        let state = &c.state;
        let user = state.user(name).ok_or_else(|| EtcdError::UserNotFound.status())?;
        Ok(Response::new(pb::AuthUserGetResponse { header: self.header(), roles: user.roles.clone() }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let state = self.admin_read(&request).await?;
        let users = state.users.iter().map(|u| u.name.clone()).collect();
        Ok(Response::new(pb::AuthUserListResponse { header: self.header(), users }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.admin_propose(&request, AuthCommand::UserDelete(sa::UserDeleteRequest { name })).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header: self.header() }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        caller(&self.node, &request)?.check_admin()?;
        let req = request.into_inner();
        // etcd hashes a new password only when one is given: an empty one stores an empty
        // hash, which no password matches, so the user can no longer log in.
        let password_hash = if !req.hashed_password.is_empty() {
            req.hashed_password.into()
        } else if req.password.is_empty() {
            bytes::Bytes::new()
        } else {
            self.hash(req.password).await?
        };
        self.propose(AuthCommand::UserChangePassword(sa::UserChangePasswordRequest { name: req.name, password_hash }))
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header: self.header() }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let r = request.get_ref();
        let cmd = AuthCommand::UserGrantRole(sa::UserGrantRoleRequest { user: r.user.clone(), role: r.role.clone() });
        self.admin_propose(&request, cmd).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header: self.header() }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let r = request.get_ref();
        let cmd = AuthCommand::UserRevokeRole(sa::UserRevokeRoleRequest { name: r.name.clone(), role: r.role.clone() });
        self.admin_propose(&request, cmd).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header: self.header() }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.admin_propose(&request, AuthCommand::RoleAdd(sa::RoleAddRequest { name })).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header: self.header() }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        // A user may read the roles it has (etcd's authApplierV3.RoleGet).
        self.node.read_barrier_as_proposal().await?;
        let c = caller(&self.node, &request)?;
        let name = &request.get_ref().role;
        if let Err(denied) = c.check_admin() {
            let has_role = c.user().and_then(|u| c.state.user(u)).is_some_and(|u| u.roles.iter().any(|r| r == name));
            if !has_role {
                return Err(denied);
            }
        }
        let role = c.state.role(name).ok_or_else(|| EtcdError::RoleNotFound.status())?;
        let perm = role.permissions.iter().map(perm_to_pb).collect();
        Ok(Response::new(pb::AuthRoleGetResponse { header: self.header(), perm }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let state = self.admin_read(&request).await?;
        let roles = state.roles.iter().map(|r| r.name.clone()).collect();
        Ok(Response::new(pb::AuthRoleListResponse { header: self.header(), roles }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let role = request.get_ref().role.clone();
        self.admin_propose(&request, AuthCommand::RoleDelete(sa::RoleDeleteRequest { role })).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header: self.header() }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let r = request.get_ref();
        let perm = r.perm.as_ref().map(|p| sa::Permission {
            perm_type: p.perm_type,
            key: p.key.clone(),
            range_end: p.range_end.clone(),
        });
        let cmd = AuthCommand::RoleGrantPermission(sa::RoleGrantPermissionRequest { name: r.name.clone(), perm });
        self.admin_propose(&request, cmd).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header: self.header() }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let r = request.get_ref();
        let cmd = AuthCommand::RoleRevokePermission(sa::RoleRevokePermissionRequest {
            role: r.role.clone(),
            key: r.key.clone(),
            range_end: r.range_end.clone(),
        });
        self.admin_propose(&request, cmd).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header: self.header() }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth_config::AuthConfig;

    #[test]
    fn flags_parse_like_etcds() {
        let cfg = AuthConfig::from_flags(None, None, None, false).unwrap();
        assert_eq!((cfg.token_ttl, cfg.bcrypt_cost), (Duration::from_secs(300), 10));
        let cfg = AuthConfig::from_flags(Some("simple"), Some("5"), Some("4"), true).unwrap();
        assert_eq!((cfg.token_ttl, cfg.bcrypt_cost), (Duration::from_secs(5), 4));
        assert!(AuthConfig::from_flags(None, None, Some("3"), false).is_err());
        assert!(AuthConfig::from_flags(None, Some("0"), None, false).is_err());
        assert!(AuthConfig::from_flags(Some("magic"), None, None, false).is_err());
    }

    /// An ES256 key pair made with rcgen, written under `dir`: (private PEM path, public).
    fn es256_keys(dir: &std::path::Path) -> (String, String) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let private = dir.join("jwt.key");
        let public = dir.join("jwt.pub");
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        (private.display().to_string(), public.display().to_string())
    }

    #[test]
    fn jwt_tokens_carry_user_and_revision_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = es256_keys(dir.path());
        let flag = format!("jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=1m");
        let cfg = AuthConfig::from_flags(Some(&flag), None, None, false).unwrap();
        let jwt = cfg.jwt.expect("jwt configured");
        let now = std::time::SystemTime::now();
        let token = jwt.sign("alice", 7, 1, now).unwrap();
        assert_eq!(jwt.verify(&token, 1), Some(("alice".to_owned(), 7)));
        assert_eq!(jwt.verify(&token, 65536), None, "another tenant's token");
        let tenant = jwt.sign("alice", 7, 65536, now).unwrap();
        assert_eq!(jwt.verify(&tenant, 65536), Some(("alice".to_owned(), 7)));
        assert_eq!(jwt.verify(&tenant, 1), None, "a tenant's token in the default tenant");
        assert_eq!(jwt.verify(&format!("{token}x"), 1), None, "a tampered token");
        let old = jwt.sign("alice", 7, 1, now - Duration::from_secs(120)).unwrap();
        assert_eq!(jwt.verify(&old, 1), None, "an expired token");
        // A member with only the public key verifies but cannot sign.
        let verify_only = format!("jwt,pub-key={public},sign-method=ES256");
        let other = AuthConfig::from_flags(Some(&verify_only), None, None, false).unwrap().jwt.unwrap();
        assert_eq!(other.verify(&token, 1), Some(("alice".to_owned(), 7)));
        assert!(other.sign("alice", 7, 1, now).is_err());
        // Another key pair's tokens are refused.
        let dir2 = tempfile::tempdir().unwrap();
        let (_, public2) = es256_keys(dir2.path());
        let stranger = format!("jwt,pub-key={public2},sign-method=ES256");
        let stranger = AuthConfig::from_flags(Some(&stranger), None, None, false).unwrap().jwt.unwrap();
        assert_eq!(stranger.verify(&token, 1), None);
        for bad in ["jwt,sign-method=ES256", "jwt,pub-key=/nonexistent,sign-method=ES256", "jwt,pub-key=x", "jwt,x=y"] {
            assert!(AuthConfig::from_flags(Some(bad), None, None, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn simple_tokens_have_etcds_shape() {
        let t = simple_token(7);
        let (letters, n) = t.split_once('.').unwrap();
        assert_eq!(letters.len(), SIMPLE_TOKEN_LETTERS);
        assert!(letters.chars().all(|c| c.is_ascii_alphabetic()));
        assert_eq!(n, "7");
    }
}
