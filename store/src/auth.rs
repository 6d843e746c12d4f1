//! etcd's auth store: users, roles, key permissions, the enabled flag and the auth revision,
//! replicated through the log like the keyspace.
//!
//! The state of a group is one [`AuthState`], kept in memory in the group's
//! `ApplyMeta` record (behind an `Arc`, so the per-command save points and the
//! readers' clones stay cheap) and persisted under the group's meta key `g | 'u'` in the same
//! WriteBatch as the command that changed it. A restart reads it back with the applied index
//! it belongs to, and a snapshot carries it with the rest of the meta column family.
//!
//! Every mutation is a log command ([`crate::CommandBody`] `Auth*`, `User*`, `Role*`) applied
//! by [`AuthState::apply`], whose checks and errors are etcd's (`server/auth/store.go`). Each
//! change bumps the auth revision, as etcd does, so a proposer that checked a request's
//! permissions at revision R learns at apply that they may have changed
//! ([`Error::AuthOldRevision`]). Passwords arrive already hashed (bcrypt, by the proposing
//! member): no plaintext password is ever in the log or the store.
//!
//! The permission rules ([`AuthState::check_read`], [`AuthState::check_write`],
//! [`AuthState::check_admin`]) are etcd's `isOpPermitted` / `IsAdminPermitted`: with auth
//! disabled everything is allowed; a user with the `root` role may do anything; otherwise
//! the union of the user's roles' permissions of the wanted type must cover the whole
//! requested key range.
//!
//! Simple tokens are not state of the log: [`TokenTable`] holds, per member, the tokens
//! whose `Authenticate` entries it applied, with their local expiry (etcd keeps them the same
//! way, in memory, with a TTL that each use renews).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};

/// etcd's name of the super-user and of the role that makes a user one.
pub const ROOT: &str = "root";

/// Most users, roles, and permissions per role a group holds: every auth command is refused
/// past them, so the auth record (rewritten whole by each change) stays small.
pub const AUTH_USERS_MAX: usize = 10_000;
/// See [`AUTH_USERS_MAX`].
pub const AUTH_ROLES_MAX: usize = 10_000;
/// See [`AUTH_USERS_MAX`].
pub const AUTH_PERMISSIONS_PER_ROLE_MAX: usize = 10_000;

/// etcd `authpb.Permission.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PermissionType {
    Read = 0,
    Write = 1,
    Readwrite = 2,
}

/// etcd `authpb.Permission`: `range_end` empty = the key alone, `"\0"` = every key `>= key`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Permission {
    #[prost(enumeration = "PermissionType", tag = "1")]
    pub perm_type: i32,
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub range_end: Bytes,
}

/// One user. `password_hash` is a bcrypt hash, empty for a `no_password` user.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthUser {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub password_hash: Bytes,
    /// Sorted, no duplicates (etcd keeps them sorted).
    #[prost(string, repeated, tag = "3")]
    pub roles: Vec<String>,
    #[prost(bool, tag = "4")]
    pub no_password: bool,
}

/// One role and its permissions, sorted by key as etcd keeps them.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthRole {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub permissions: Vec<Permission>,
}

/// The auth store of one group. Users and roles are sorted by name, so the encoding (and
/// [`AuthState::hash`]) is the same on every member that applied the same entries.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AuthState {
    #[prost(bool, tag = "1")]
    pub enabled: bool,
    /// etcd's auth revision: 1 for a new store, +1 per change of users, roles or the flag.
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    #[prost(message, repeated, tag = "3")]
    pub users: Vec<AuthUser>,
    #[prost(message, repeated, tag = "4")]
    pub roles: Vec<AuthRole>,
}

/// etcd `AuthenticateRequest` as it goes through the log: the proposer has checked the
/// password against the user's hash `password_hash` and picked `simple_token` (empty for
/// JWT, which needs no state). Apply issues the token only if that hash is still the user's:
/// a password change or deletion committed in between refuses it, while unrelated auth
/// changes do not (etcd checks again in a loop instead).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthenticateRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub simple_token: String,
    /// The bcrypt hash the password was checked against (tag 3 is retired).
    #[prost(bytes = "bytes", tag = "4")]
    pub password_hash: Bytes,
}

/// Every auth mutation, as one log command each (etcd's `Auth*Request` messages). Names
/// and field meanings follow etcd's `rpc.proto`; passwords are bcrypt hashes.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AuthCommand {
    #[prost(message, tag = "1")]
    Enable(AuthEnableRequest),
    #[prost(message, tag = "2")]
    Disable(AuthDisableRequest),
    #[prost(message, tag = "3")]
    Authenticate(AuthenticateRequest),
    #[prost(message, tag = "4")]
    UserAdd(UserAddRequest),
    #[prost(message, tag = "5")]
    UserDelete(UserDeleteRequest),
    #[prost(message, tag = "6")]
    UserChangePassword(UserChangePasswordRequest),
    #[prost(message, tag = "7")]
    UserGrantRole(UserGrantRoleRequest),
    #[prost(message, tag = "8")]
    UserRevokeRole(UserRevokeRoleRequest),
    #[prost(message, tag = "9")]
    RoleAdd(RoleAddRequest),
    #[prost(message, tag = "10")]
    RoleDelete(RoleDeleteRequest),
    #[prost(message, tag = "11")]
    RoleGrantPermission(RoleGrantPermissionRequest),
    #[prost(message, tag = "12")]
    RoleRevokePermission(RoleRevokePermissionRequest),
}

/// The log payload of [`crate::CommandBody::Auth`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthRequest {
    #[prost(oneof = "AuthCommand", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
    pub command: Option<AuthCommand>,
}

/// etcd `AuthEnableRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthEnableRequest {}
/// etcd `AuthDisableRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthDisableRequest {}
/// etcd `AuthUserAddRequest`, with the password already hashed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserAddRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub password_hash: Bytes,
    #[prost(bool, tag = "3")]
    pub no_password: bool,
}
/// etcd `AuthUserDeleteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserDeleteRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}
/// etcd `AuthUserChangePasswordRequest`, with the password already hashed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserChangePasswordRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub password_hash: Bytes,
}
/// etcd `AuthUserGrantRoleRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserGrantRoleRequest {
    #[prost(string, tag = "1")]
    pub user: String,
    #[prost(string, tag = "2")]
    pub role: String,
}
/// etcd `AuthUserRevokeRoleRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRevokeRoleRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub role: String,
}
/// etcd `AuthRoleAddRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoleAddRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}
/// etcd `AuthRoleDeleteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoleDeleteRequest {
    #[prost(string, tag = "1")]
    pub role: String,
}
/// etcd `AuthRoleGrantPermissionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoleGrantPermissionRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub perm: Option<Permission>,
}
/// etcd `AuthRoleRevokePermissionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoleRevokePermissionRequest {
    #[prost(string, tag = "1")]
    pub role: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub range_end: Bytes,
}

/// What applying an auth command answers (besides the new state), with what it means for
/// the member's live tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthResponse {
    /// A change that leaves every token valid.
    Done,
    /// `Authenticate` applied: the user, its token (empty for JWT) and the auth revision it
    /// was issued at.
    Authenticated { name: String, simple_token: String, revision: u64 },
    /// The user was deleted or its password changed: its tokens are no longer valid.
    UserInvalidated(String),
    /// Auth was disabled: no token is valid any more.
    Disabled,
}

/// A new store: disabled, revision 1 (etcd starts its auth revision at 1).
pub fn initial() -> AuthState {
    AuthState { enabled: false, revision: 1, users: Vec::new(), roles: Vec::new() }
}

impl AuthState {
    /// Decodes the persisted record; a record that does not decode is corruption.
    pub fn decode_stored(bytes: &[u8]) -> Result<AuthState> {
        AuthState::decode(bytes).map_err(|e| Error::Corruption(format!("auth record: {e}")))
    }

    /// crc32 of the encoding: equal on members that applied the same auth commands.
    pub fn hash(&self) -> u32 {
        crc32fast::hash(&self.encode_to_vec())
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&AuthUser> {
        self.users.binary_search_by(|u| u.name.as_str().cmp(name)).ok().map(|i| &self.users[i])
    }

    /// The role named `name`.
    pub fn role(&self, name: &str) -> Option<&AuthRole> {
        self.roles.binary_search_by(|r| r.name.as_str().cmp(name)).ok().map(|i| &self.roles[i])
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut AuthUser> {
        match self.users.binary_search_by(|u| u.name.as_str().cmp(name)) {
            Ok(i) => Ok(&mut self.users[i]),
            Err(_) => Err(Error::AuthUserNotFound),
        }
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut AuthRole> {
        match self.roles.binary_search_by(|r| r.name.as_str().cmp(name)) {
            Ok(i) => Ok(&mut self.roles[i]),
            Err(_) => Err(Error::AuthRoleNotFound),
        }
    }

    /// Applies one auth command to a copy of the state: `Ok` with the new state, or etcd's
    /// error and the state unchanged. Deterministic: the same on every member.
    pub fn apply(&self, cmd: &AuthCommand) -> Result<(AuthState, AuthResponse)> {
        let mut next = self.clone();
        let response = next.apply_in_place(cmd)?;
        Ok((next, response))
    }

    fn apply_in_place(&mut self, cmd: &AuthCommand) -> Result<AuthResponse> {
        match cmd {
            AuthCommand::Enable(_) => {
                if self.enabled {
                    // etcd answers an enable of an enabled store as done, changing nothing.
                    return Ok(AuthResponse::Done);
                }
                let root = self.user(ROOT).ok_or(Error::AuthRootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(Error::AuthRootRoleNotExist);
                }
                self.enabled = true;
                // etcd keeps the auth revision on enable (and bumps it on disable).
                return Ok(AuthResponse::Done);
            }
            AuthCommand::Disable(_) => {
                if !self.enabled {
                    return Ok(AuthResponse::Done);
                }
                self.enabled = false;
                self.revision += 1;
                return Ok(AuthResponse::Disabled);
            }
            AuthCommand::Authenticate(a) => {
                if !self.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                // The password the proposer checked must still be the user's.
                match self.user(&a.name) {
                    Some(u) if !u.no_password && u.password_hash == a.password_hash => {}
                    _ => return Err(Error::AuthFailed),
                }
                // A token changes no state: the auth revision stays.
                return Ok(AuthResponse::Authenticated {
                    name: a.name.clone(),
                    simple_token: a.simple_token.clone(),
                    revision: self.revision,
                });
            }
            AuthCommand::UserAdd(u) => {
                if u.name.is_empty() {
                    return Err(Error::AuthUserEmpty);
                }
                let at = match self.users.binary_search_by(|x| x.name.cmp(&u.name)) {
                    Ok(_) => return Err(Error::AuthUserAlreadyExists),
                    Err(at) => at,
                };
                if self.users.len() >= AUTH_USERS_MAX {
                    return Err(Error::InvalidCommand(format!("more than {AUTH_USERS_MAX} users")));
                }
                let password_hash = if u.no_password { Bytes::new() } else { u.password_hash.clone() };
                self.users.insert(
                    at,
                    AuthUser { name: u.name.clone(), password_hash, roles: Vec::new(), no_password: u.no_password },
                );
            }
            AuthCommand::UserDelete(u) => {
                if self.enabled && u.name == ROOT {
                    return Err(Error::AuthInvalidMgmt);
                }
                let at = self
                    .users
                    .binary_search_by(|x| x.name.as_str().cmp(&u.name))
                    .map_err(|_| Error::AuthUserNotFound)?;
                self.users.remove(at);
                self.revision += 1;
                return Ok(AuthResponse::UserInvalidated(u.name.clone()));
            }
            AuthCommand::UserChangePassword(u) => {
                let user = self.user_mut(&u.name)?;
                // As etcd's: a user added without a password keeps none (its logins stay
                // refused), though the change still counts as one.
                if !user.no_password {
                    user.password_hash = u.password_hash.clone();
                }
                self.revision += 1;
                return Ok(AuthResponse::UserInvalidated(u.name.clone()));
            }
            AuthCommand::UserGrantRole(g) => {
                if self.user(&g.user).is_none() {
                    return Err(Error::AuthUserNotFound);
                }
                // etcd lets `root` be granted before the role exists (it is implicit).
                if g.role != ROOT && self.role(&g.role).is_none() {
                    return Err(Error::AuthRoleNotFound);
                }
                let user = self.user_mut(&g.user)?;
                match user.roles.binary_search(&g.role) {
                    // etcd ignores a grant of a role the user has, without a new revision.
                    Ok(_) => return Ok(AuthResponse::Done),
                    Err(at) => user.roles.insert(at, g.role.clone()),
                }
            }
            AuthCommand::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(Error::AuthInvalidMgmt);
                }
                let user = self.user_mut(&r.name)?;
                let at = user.roles.binary_search(&r.role).map_err(|_| Error::AuthRoleNotGranted)?;
                user.roles.remove(at);
            }
            AuthCommand::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::AuthRoleEmpty);
                }
                let at = match self.roles.binary_search_by(|x| x.name.cmp(&r.name)) {
                    Ok(_) => return Err(Error::AuthRoleAlreadyExists),
                    Err(at) => at,
                };
                if self.roles.len() >= AUTH_ROLES_MAX {
                    return Err(Error::InvalidCommand(format!("more than {AUTH_ROLES_MAX} roles")));
                }
                self.roles.insert(at, AuthRole { name: r.name.clone(), permissions: Vec::new() });
            }
            AuthCommand::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(Error::AuthInvalidMgmt);
                }
                let at = self
                    .roles
                    .binary_search_by(|x| x.name.as_str().cmp(&r.role))
                    .map_err(|_| Error::AuthRoleNotFound)?;
                self.roles.remove(at);
                // Like etcd, every user loses the deleted role.
                for u in &mut self.users {
                    if let Ok(i) = u.roles.binary_search(&r.role) {
                        u.roles.remove(i);
                    }
                }
            }
            AuthCommand::RoleGrantPermission(g) => {
                let perm = g.perm.clone().ok_or(Error::AuthPermissionNotGiven)?;
                if PermissionType::try_from(perm.perm_type).is_err() {
                    return Err(Error::InvalidCommand(format!("unknown permission type {}", perm.perm_type)));
                }
                let role = self.role_mut(&g.name)?;
                match role.permissions.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    // The same range granted again takes the new type (etcd overwrites it).
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        if role.permissions.len() >= AUTH_PERMISSIONS_PER_ROLE_MAX {
                            return Err(Error::InvalidCommand(format!(
                                "more than {AUTH_PERMISSIONS_PER_ROLE_MAX} permissions in a role"
                            )));
                        }
                        // Sorted by key, ties in grant order (a stable insert after equal keys).
                        let at = role.permissions.partition_point(|p| p.key <= perm.key);
                        role.permissions.insert(at, perm);
                    }
                }
            }
            AuthCommand::RoleRevokePermission(r) => {
                let role = self.role_mut(&r.role)?;
                let at = role
                    .permissions
                    .iter()
                    .position(|p| p.key == r.key && p.range_end == r.range_end)
                    .ok_or(Error::AuthPermissionNotGranted)?;
                role.permissions.remove(at);
            }
        }
        self.revision += 1;
        Ok(AuthResponse::Done)
    }

    /// etcd's `IsAdminPermitted`: with auth enabled, only a user with the root role.
    pub fn check_admin(&self, user: Option<&str>, auth_revision: u64) -> Result<()> {
        let Some(user) = self.known_user(user, auth_revision)? else { return Ok(()) };
        if user.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(Error::AuthPermissionDenied)
        }
    }

    /// etcd's `IsRangePermitted`: may `user` read every key of `[key, range_end)`?
    pub fn check_read(&self, user: Option<&str>, auth_revision: u64, key: &[u8], range_end: &[u8]) -> Result<()> {
        self.check_range(user, auth_revision, key, range_end, PermissionType::Read)
    }

    /// etcd's `IsPutPermitted` / `IsDeleteRangePermitted`: may `user` write every key of
    /// `[key, range_end)`?
    pub fn check_write(&self, user: Option<&str>, auth_revision: u64, key: &[u8], range_end: &[u8]) -> Result<()> {
        self.check_range(user, auth_revision, key, range_end, PermissionType::Write)
    }

    /// The user a request acts as, after etcd's common checks; `None` when auth is disabled
    /// (everything is allowed).
    fn known_user(&self, user: Option<&str>, auth_revision: u64) -> Result<Option<&AuthUser>> {
        if !self.enabled {
            return Ok(None);
        }
        let name = match user {
            Some(n) if !n.is_empty() => n,
            _ => return Err(Error::AuthUserEmpty),
        };
        if auth_revision < self.revision {
            return Err(Error::AuthOldRevision);
        }
        // etcd answers a request of a deleted user (a still valid token) as denied.
        self.user(name).map(Some).ok_or(Error::AuthPermissionDenied)
    }

    fn check_range(
        &self,
        user: Option<&str>,
        auth_revision: u64,
        key: &[u8],
        range_end: &[u8],
        want: PermissionType,
    ) -> Result<()> {
        let Some(user) = self.known_user(user, auth_revision)? else { return Ok(()) };
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let granted = user
            .roles
            .iter()
            .filter_map(|r| self.role(r))
            .flat_map(|r| r.permissions.iter())
            .filter(|p| p.perm_type == PermissionType::Readwrite as i32 || p.perm_type == want as i32);
        if covers(granted, key, range_end) {
            Ok(())
        } else {
            Err(Error::AuthPermissionDenied)
        }
    }
}

/// An interval end: a key, or past every key (`range_end` `"\0"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End<'a> {
    Key(&'a [u8]),
    Infinity,
}

/// The half-open interval a (key, range_end) pair names; `None` for an empty range.
fn interval<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<(&'a [u8], End<'a>)> {
    match range_end {
        [] => None,
        [0] => Some((key, End::Infinity)),
        end if end > key => Some((key, End::Key(end))),
        _ => None,
    }
}

/// Whether the permissions cover the request: a single key (`range_end` empty) needs a
/// permission on that key or a range holding it; a range needs the union of the permitted
/// ranges to hold all of it (etcd merges the intervals of the user's permissions).
fn covers<'a>(granted: impl Iterator<Item = &'a Permission>, key: &[u8], range_end: &[u8]) -> bool {
    let mut ranges: Vec<(&[u8], End<'_>)> = Vec::new();
    let mut single = false;
    for p in granted {
        if p.range_end.is_empty() {
            single |= p.key[..] == *key;
        } else if let Some(r) = interval(&p.key, &p.range_end) {
            ranges.push(r);
        }
    }
    let holds_key = |ranges: &[(&[u8], End<'_>)]| ranges.iter().any(|(s, e)| *s <= key && End::Key(key) < *e);
    let Some((mut from, to)) = interval(key, range_end) else {
        // A single key; an empty range (`range_end <= key`) is checked as its first key,
        // the conservative reading of a request that names no key.
        return single_ok(single, range_end) || holds_key(&ranges);
    };
    ranges.sort();
    for (s, e) in ranges {
        if s > from {
            break;
        }
        if End::Key(from) < e {
            if e >= to {
                return true;
            }
            let End::Key(next) = e else { return true };
            from = next;
        }
    }
    false
}

/// A single-key permission on the requested key satisfies a single-key request only.
fn single_ok(granted_on_key: bool, range_end: &[u8]) -> bool {
    granted_on_key && range_end.is_empty()
}

/// Most live simple tokens a member keeps; the oldest is dropped past it.
pub const SIMPLE_TOKENS_MAX: usize = 100_000;

/// How long a simple token lives without use unless the member sets another TTL (etcd's
/// `--auth-token-ttl` default, 300 s).
pub const SIMPLE_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);

/// Simple tokens this member applied, with the user each stands for and when it was last
/// used. Not replicated state: every member fills it from the `Authenticate` entries it
/// applies, and a token expires after its TTL without use, on each member by its own clock
/// (etcd's simple token keeper does the same).
pub struct TokenTable {
    tokens: HashMap<String, (Arc<str>, Instant)>,
    ttl: Duration,
}

impl Default for TokenTable {
    fn default() -> Self {
        TokenTable { tokens: HashMap::new(), ttl: SIMPLE_TOKEN_TTL_DEFAULT }
    }
}

impl TokenTable {
    /// Sets the TTL of every token (the member's `--auth-token-ttl`).
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// Adds `token` for `user`, dropping expired tokens and, past [`SIMPLE_TOKENS_MAX`], the
    /// least recently used one.
    pub fn insert(&mut self, token: String, user: &str) {
        let now = Instant::now();
        let ttl = self.ttl;
        if self.tokens.len() >= SIMPLE_TOKENS_MAX {
            self.tokens.retain(|_, (_, used)| now.duration_since(*used) < ttl);
        }
        if self.tokens.len() >= SIMPLE_TOKENS_MAX {
            if let Some(oldest) = self.tokens.iter().min_by_key(|(_, (_, used))| *used).map(|(t, _)| t.clone()) {
                self.tokens.remove(&oldest);
            }
        }
        self.tokens.insert(token, (Arc::from(user), now));
    }

    /// The user of `token` if it is live, renewing its TTL (etcd resets it on each use).
    pub fn user(&mut self, token: &str) -> Option<Arc<str>> {
        let now = Instant::now();
        let (user, used) = self.tokens.get_mut(token)?;
        if now.duration_since(*used) >= self.ttl {
            self.tokens.remove(token);
            return None;
        }
        *used = now;
        Some(user.clone())
    }

    /// Drops every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.tokens.retain(|_, (u, _)| &**u != user);
    }

    /// Drops every token (auth disabled).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermissionType, k: &str, e: &str) -> Permission {
        Permission { perm_type: t as i32, key: Bytes::from(k.to_string()), range_end: Bytes::from(e.to_string()) }
    }

    fn run(s: &AuthState, cmds: Vec<AuthCommand>) -> AuthState {
        cmds.iter().fold(s.clone(), |s, c| s.apply(c).unwrap_or_else(|e| panic!("{c:?}: {e}")).0)
    }

    fn user_add(n: &str) -> AuthCommand {
        AuthCommand::UserAdd(UserAddRequest { name: n.into(), password_hash: "h".into(), no_password: false })
    }
    fn role_add(n: &str) -> AuthCommand {
        AuthCommand::RoleAdd(RoleAddRequest { name: n.into() })
    }
    fn grant_role(u: &str, r: &str) -> AuthCommand {
        AuthCommand::UserGrantRole(UserGrantRoleRequest { user: u.into(), role: r.into() })
    }
    fn grant(r: &str, p: Permission) -> AuthCommand {
        AuthCommand::RoleGrantPermission(RoleGrantPermissionRequest { name: r.into(), perm: Some(p) })
    }

    /// As etcd's: a password change leaves a user added without a password with none (its
    /// logins stay refused), and still counts as a change of the auth store.
    #[test]
    fn a_password_change_keeps_a_user_without_a_password_without_one() {
        let s = initial();
        let no_password =
            AuthCommand::UserAdd(UserAddRequest { name: "np".into(), password_hash: Bytes::new(), no_password: true });
        let s = run(&s, vec![no_password]);
        let before = s.revision;
        let change =
            AuthCommand::UserChangePassword(UserChangePasswordRequest { name: "np".into(), password_hash: "h".into() });
        let s = run(&s, vec![change]);
        let user = s.user("np").unwrap();
        assert!(user.no_password && user.password_hash.is_empty(), "{user:?}");
        assert_eq!(s.revision, before + 1);
    }

    #[test]
    fn etcd_errors_and_revisions() {
        let s = initial();
        let err = |s: &AuthState, c: AuthCommand| s.apply(&c).err().map(|e| e.to_string());
        assert_eq!(err(&s, AuthCommand::Enable(AuthEnableRequest {})), Some(Error::AuthRootUserNotExist.to_string()));
        let s = run(&s, vec![user_add("root")]);
        assert_eq!(s.revision, 2);
        assert_eq!(err(&s, AuthCommand::Enable(AuthEnableRequest {})), Some(Error::AuthRootRoleNotExist.to_string()));
        assert_eq!(err(&s, user_add("root")), Some(Error::AuthUserAlreadyExists.to_string()));
        assert_eq!(err(&s, user_add("")), Some(Error::AuthUserEmpty.to_string()));
        assert_eq!(err(&s, grant_role("nobody", "root")), Some(Error::AuthUserNotFound.to_string()));
        assert_eq!(err(&s, grant_role("root", "nope")), Some(Error::AuthRoleNotFound.to_string()));
        let s = run(&s, vec![grant_role("root", "root"), AuthCommand::Enable(AuthEnableRequest {})]);
        assert!(s.enabled);
        assert_eq!(s.revision, 3, "enabling keeps the revision, as etcd's");
        let again = run(&s, vec![grant_role("root", "root")]);
        assert_eq!(again.revision, 3, "granting a role the user has changes nothing");
        assert_eq!(
            err(&s, AuthCommand::UserDelete(UserDeleteRequest { name: "root".into() })),
            Some(Error::AuthInvalidMgmt.to_string())
        );
        assert_eq!(
            err(&s, AuthCommand::UserRevokeRole(UserRevokeRoleRequest { name: "root".into(), role: "x".into() })),
            Some(Error::AuthRoleNotGranted.to_string())
        );
        assert_eq!(
            err(
                &s,
                AuthCommand::RoleRevokePermission(RoleRevokePermissionRequest {
                    role: "r".into(),
                    ..Default::default()
                })
            ),
            Some(Error::AuthRoleNotFound.to_string())
        );
        let s = run(&s, vec![role_add("r"), grant("r", perm(PermissionType::Read, "a", "c"))]);
        assert_eq!(
            err(
                &s,
                AuthCommand::RoleRevokePermission(RoleRevokePermissionRequest {
                    role: "r".into(),
                    key: "a".into(),
                    range_end: "b".into()
                })
            ),
            Some(Error::AuthPermissionNotGranted.to_string())
        );
        assert_eq!(err(&s, role_add("r")), Some(Error::AuthRoleAlreadyExists.to_string()));
        // Deleting a role takes it from every user.
        let s = run(
            &s,
            vec![user_add("u"), grant_role("u", "r"), AuthCommand::RoleDelete(RoleDeleteRequest { role: "r".into() })],
        );
        assert!(s.user("u").unwrap().roles.is_empty());
        // An authenticate against a hash that is no longer the user's, or of an unknown user,
        // fails; one against the current hash issues the token whatever else changed.
        let auth = |n: &str, hash: &'static str| {
            AuthCommand::Authenticate(AuthenticateRequest {
                name: n.into(),
                simple_token: "t".into(),
                password_hash: hash.into(),
            })
        };
        assert_eq!(err(&s, auth("u", "old")), Some(Error::AuthFailed.to_string()));
        assert_eq!(err(&s, auth("x", "h")), Some(Error::AuthFailed.to_string()));
        let (same, r) = s.apply(&auth("u", "h")).unwrap();
        assert_eq!(same, s);
        assert_eq!(r, AuthResponse::Authenticated { name: "u".into(), simple_token: "t".into(), revision: s.revision });
    }

    #[test]
    fn permissions_follow_etcds_rules() {
        let s = run(
            &initial(),
            vec![
                user_add("root"),
                grant_role("root", "root"),
                user_add("u"),
                role_add("r1"),
                role_add("r2"),
                grant("r1", perm(PermissionType::Read, "a", "c")),
                grant("r2", perm(PermissionType::Readwrite, "c", "e")),
                grant("r2", perm(PermissionType::Write, "k", "")),
                grant("r2", perm(PermissionType::Read, "z", "\0")),
                grant_role("u", "r1"),
                grant_role("u", "r2"),
            ],
        );
        // Disabled: everything is allowed, even without a user.
        assert!(s.check_write(None, 0, b"q", b"").is_ok());
        let s = run(&s, vec![AuthCommand::Enable(AuthEnableRequest {})]);
        let rev = s.revision;
        let u = Some("u");
        assert!(matches!(s.check_read(None, rev, b"a", b""), Err(Error::AuthUserEmpty)));
        assert!(matches!(s.check_read(u, rev - 1, b"a", b""), Err(Error::AuthOldRevision)));
        assert!(matches!(s.check_read(Some("gone"), rev, b"a", b""), Err(Error::AuthPermissionDenied)));
        assert!(s.check_read(u, rev, b"a", b"").is_ok());
        assert!(s.check_read(u, rev, b"b", b"e").is_ok(), "two roles' ranges merge");
        assert!(s.check_read(u, rev, b"a", b"f").is_err());
        assert!(s.check_write(u, rev, b"b", b"").is_err(), "read only");
        assert!(s.check_write(u, rev, b"c", b"d").is_ok());
        assert!(s.check_write(u, rev, b"k", b"").is_ok());
        assert!(s.check_read(u, rev, b"k", b"").is_err(), "write only");
        assert!(s.check_write(u, rev, b"k", b"l").is_err(), "a single key does not cover a range");
        assert!(s.check_read(u, rev, b"zz", b"\0").is_ok(), "from-key permission");
        assert!(s.check_read(u, rev, b"y", b"\0").is_err());
        assert!(s.check_admin(u, rev).is_err());
        assert!(s.check_admin(Some("root"), rev).is_ok());
        assert!(s.check_write(Some("root"), rev, b"\0", b"\0").is_ok());
        // Revoking takes effect at once.
        let s = run(
            &s,
            vec![AuthCommand::RoleRevokePermission(RoleRevokePermissionRequest {
                role: "r1".into(),
                key: "a".into(),
                range_end: "c".into(),
            })],
        );
        assert!(s.check_read(u, s.revision, b"a", b"").is_err());
    }

    #[test]
    fn tokens_expire_and_are_invalidated() {
        let mut t = TokenTable::default();
        t.insert("a".into(), "u");
        t.insert("b".into(), "v");
        assert_eq!(t.user("a").as_deref(), Some("u"));
        t.set_ttl(Duration::ZERO);
        assert_eq!(t.user("a"), None, "expired");
        t.set_ttl(Duration::from_secs(60));
        assert_eq!(t.user("a"), None, "an expired token is gone");
        assert_eq!(t.user("b").as_deref(), Some("v"));
        t.invalidate_user("v");
        assert_eq!(t.user("b"), None);
    }
}
