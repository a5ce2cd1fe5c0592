//! Client authentication and permissions, compatible with rqlite's `-auth` file: a JSON
//! list of users, each with a bcrypt-hashed password and permissions, checked on every
//! HTTP request through basic auth. The user `*` names what anyone may do without
//! credentials (health endpoints left open, say).
//!
//! ```json
//! [{"username": "ann", "password": "$2b$12$...", "perms": ["all"]},
//!  {"username": "*", "perms": ["ready", "status"]}]
//! ```
//!
//! Passwords are never kept in plain text: the file must hold bcrypt hashes (`tern auth
//! hash`). bcrypt is slow by design, so a password once verified is remembered (as a keyed
//! hash, not the text) for the process's life.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    All,
    Execute,
    Query,
    Status,
    Ready,
    Backup,
    Load,
    Join,
    Remove,
    /// tern's own: leadership transfer and fault injection.
    Cluster,
    /// tern's own: multi-leader conflicts, policies and homes.
    Conflicts,
}

impl Permission {
    pub fn parse(text: &str) -> Result<Permission, String> {
        Ok(match text {
            "all" => Permission::All,
            "execute" => Permission::Execute,
            "query" => Permission::Query,
            "status" => Permission::Status,
            "ready" => Permission::Ready,
            "backup" => Permission::Backup,
            "load" => Permission::Load,
            "join" | "join-read-only" => Permission::Join,
            "remove" => Permission::Remove,
            "cluster" => Permission::Cluster,
            "conflicts" => Permission::Conflicts,
            other => {
                return Err(format!(
                    "unknown permission {other:?}: expected all, execute, query, status, ready, backup, load, join, remove, cluster or conflicts"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Permission::All => "all",
            Permission::Execute => "execute",
            Permission::Query => "query",
            Permission::Status => "status",
            Permission::Ready => "ready",
            Permission::Backup => "backup",
            Permission::Load => "load",
            Permission::Join => "join",
            Permission::Remove => "remove",
            Permission::Cluster => "cluster",
            Permission::Conflicts => "conflicts",
        }
    }
}

/// Who made a request, and what they may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// `None`: no credentials (what `*` may do).
    pub user: Option<String>,
    permissions: BTreeSet<Permission>,
}

impl Caller {
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&Permission::All) || self.permissions.contains(&permission)
    }

    /// Why this caller may not, for a 401 or 403.
    pub fn refusal(&self, permission: Permission) -> Refusal {
        match &self.user {
            None => Refusal::Unauthenticated(format!("this needs the {} permission: send credentials (HTTP basic auth)", permission.name())),
            Some(user) => Refusal::Forbidden(format!("user {user:?} lacks the {} permission", permission.name())),
        }
    }
}

tokio::task_local! {
    /// The user a request is served for (HTTP basic auth, a PostgreSQL login), within the
    /// task serving it: a write or read forwarded to the leader carries it.
    static ACTING_USER: Option<String>;
}

/// Runs `work` as done for `user`.
pub async fn acting_as<F: std::future::Future>(user: Option<String>, work: F) -> F::Output {
    ACTING_USER.scope(user, work).await
}

/// The user the current task serves, if one logged in.
pub fn acting_user() -> Option<String> {
    ACTING_USER.try_with(Clone::clone).ok().flatten()
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials where some are needed, or wrong ones (401).
    Unauthenticated(String),
    /// Valid credentials without the permission (403).
    Forbidden(String),
}

#[derive(Deserialize)]
struct FileEntry {
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    perms: Vec<String>,
}

/// The users of an auth file (its hashes are not shown by `Debug`).
pub struct Users {
    /// By name: the bcrypt hash and the permissions.
    users: BTreeMap<String, (String, BTreeSet<Permission>)>,
    /// What anyone may do (the `*` entry), with or without credentials.
    anyone: BTreeSet<Permission>,
    /// Keyed hashes of (user, password) pairs bcrypt has verified.
    verified: Mutex<HashSet<u64>>,
    keys: std::collections::hash_map::RandomState,
}

impl Users {
    /// Reads an auth file.
    ///
    /// # Errors
    /// If it cannot be read or parsed, names an unknown permission, or holds a password
    /// that is not a bcrypt hash.
    pub fn load(path: &std::path::Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read the auth file {}: {error}", path.display()))?;
        Users::parse(&text).map_err(|error| format!("auth file {}: {error}", path.display()))
    }

    /// # Errors
    /// As [`Users::load`].
    pub fn parse(text: &str) -> Result<Users, String> {
        let entries: Vec<FileEntry> =
            serde_json::from_str(text).map_err(|error| format!("expected a JSON list of {{\"username\", \"password\", \"perms\"}}: {error}"))?;
        let mut users = BTreeMap::new();
        let mut anyone = BTreeSet::new();
        for entry in entries {
            let permissions = entry.perms.iter().map(|perm| Permission::parse(perm)).collect::<Result<BTreeSet<_>, _>>()?;
            if entry.username == "*" {
                anyone.extend(permissions);
                continue;
            }
            let Some(hash) = entry.password else { return Err(format!("user {:?} has no password", entry.username)) };
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(format!(
                    "the password of user {:?} is not a bcrypt hash: tern keeps no passwords in plain text (make one with `tern auth hash`)",
                    entry.username
                ));
            }
            if users.insert(entry.username.clone(), (hash, permissions)).is_some() {
                return Err(format!("user {:?} is listed twice", entry.username));
            }
        }
        Ok(Users { users, anyone, verified: Mutex::new(HashSet::new()), keys: std::collections::hash_map::RandomState::new() })
    }

    /// Whether a user this node's file names (or anyone, through `*`) has `permission`:
    /// the leader's own check of a request a follower forwarded in that user's name.
    pub fn permits(&self, user: &str, permission: Permission) -> bool {
        let has = |permissions: &BTreeSet<Permission>| permissions.contains(&Permission::All) || permissions.contains(&permission);
        has(&self.anyone) || self.users.get(user).is_some_and(|(_, permissions)| has(permissions))
    }

    /// Who sent a request with this `Authorization` header (or none).
    ///
    /// # Errors
    /// 401 for malformed, unknown or wrong credentials.
    pub fn caller(&self, authorization: Option<&[u8]>) -> Result<Caller, Refusal> {
        let Some(header) = authorization else {
            return Ok(Caller { user: None, permissions: self.anyone.clone() });
        };
        let bad = || Refusal::Unauthenticated("bad credentials: expected HTTP basic auth (Authorization: Basic base64(user:password))".to_string());
        let encoded = std::str::from_utf8(header).ok().and_then(|text| text.strip_prefix("Basic ")).ok_or_else(bad)?;
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
        self.login(user, password)
    }

    /// The caller `user` is, if `password` is theirs.
    ///
    /// # Errors
    /// 401 for an unknown user or a wrong password.
    pub fn login(&self, user: &str, password: &str) -> Result<Caller, Refusal> {
        let wrong = || Refusal::Unauthenticated("wrong user name or password".to_string());
        let (hash, permissions) = self.users.get(user).ok_or_else(wrong)?;
        let key = {
            let mut hasher = self.keys.build_hasher();
            hasher.write(user.as_bytes());
            hasher.write_u8(0);
            hasher.write(password.as_bytes());
            hasher.finish()
        };
        let known = self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&key);
        if !known {
            if !bcrypt::verify(password, hash).unwrap_or(false) {
                return Err(wrong());
            }
            self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key);
        }
        let mut permissions = permissions.clone();
        permissions.extend(self.anyone.iter().copied());
        Ok(Caller { user: Some(user.to_string()), permissions })
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Users").field("users", &self.users.keys().collect::<Vec<_>>()).field("anyone", &self.anyone).finish()
    }
}

/// A bcrypt hash of `password`, for an auth file.
///
/// # Errors
/// If bcrypt refuses it (over 72 bytes).
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.len() > 72 {
        return Err("bcrypt uses at most 72 bytes of a password: choose a shorter one".to_string());
    }
    bcrypt::hash(password, bcrypt::DEFAULT_COST).map_err(|error| error.to_string())
}

/// The permission an HTTP request needs, by method and path. `/db/request` needs `query`
/// here and `execute` as well when it writes (its handler checks that).
pub fn needed(method: &str, path: &str) -> Permission {
    match path {
        "/db/execute" | "/db/sync/push" => Permission::Execute,
        "/db/query" | "/db/request" | "/db/changes" | "/db/sync/pull" | "/db/sync/snapshot" => Permission::Query,
        "/db/backup" => Permission::Backup,
        "/db/load" => Permission::Load,
        "/readyz" => Permission::Ready,
        "/status" | "/nodes" | "/metrics" | "/debug/vars" | "/" | "/dashboard/state" | "/db/verify" | "/db/rollback" => Permission::Status,
        "/cluster" if method == "GET" => Permission::Status,
        "/cluster/add" => Permission::Join,
        "/cluster/remove" | "/remove" => Permission::Remove,
        "/cluster/transfer-leader" | "/debug/partition" | "/debug/panic" | "/db/repair" => Permission::Cluster,
        _ if path.starts_with("/db/conflicts") || path.starts_with("/db/homes") => Permission::Conflicts,
        _ => Permission::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn basic(user: &str, password: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))).into_bytes()
    }

    #[test]
    fn credentials_and_permissions_are_checked() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Users::parse(&format!(
            r#"[{{"username": "ann", "password": "{hash}", "perms": ["query"]}}, {{"username": "root", "password": "{hash}", "perms": ["all"]}}, {{"username": "*", "perms": ["ready"]}}]"#
        ))
        .unwrap();
        let anyone = users.caller(None).unwrap();
        assert!(anyone.may(Permission::Ready) && !anyone.may(Permission::Query));
        assert!(matches!(anyone.refusal(Permission::Query), Refusal::Unauthenticated(_)));
        let ann = users.caller(Some(&basic("ann", "s3cret"))).unwrap();
        assert!(ann.may(Permission::Query) && ann.may(Permission::Ready) && !ann.may(Permission::Execute));
        assert!(matches!(ann.refusal(Permission::Execute), Refusal::Forbidden(_)));
        assert!(users.caller(Some(&basic("ann", "s3cret"))).is_ok(), "remembered");
        assert!(users.caller(Some(&basic("root", "s3cret"))).unwrap().may(Permission::Load));
        for header in [basic("ann", "wrong"), basic("nobody", "s3cret"), b"Basic !!!".to_vec(), b"Bearer x".to_vec(), vec![0xff, 0xfe]] {
            assert!(matches!(users.caller(Some(&header)), Err(Refusal::Unauthenticated(_))), "{header:?}");
        }
    }

    #[test]
    fn plain_text_passwords_and_unknown_permissions_are_refused() {
        assert!(Users::parse(r#"[{"username": "ann", "password": "plain", "perms": ["all"]}]"#).unwrap_err().contains("bcrypt"));
        assert!(Users::parse(r#"[{"username": "*", "perms": ["everything"]}]"#).unwrap_err().contains("unknown permission"));
        assert!(Users::parse("{}").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Any bytes as an Authorization header, and any text as user and password, are
        /// refused with a 401 (never a panic, never a caller).
        #[test]
        fn any_header_or_text_is_refused_cleanly(header in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), user in ".{0,12}", password in ".{0,12}") {
            let users = Users::parse(&format!(r#"[{{"username": "ann", "password": "{}", "perms": ["all"]}}]"#, bcrypt::hash("s3cret", 4).unwrap())).unwrap();
            proptest::prop_assert!(matches!(users.caller(Some(&header)), Err(Refusal::Unauthenticated(_))));
            if !(user == "ann" && password == "s3cret") {
                proptest::prop_assert!(matches!(users.login(&user, &password), Err(Refusal::Unauthenticated(_))));
            }
        }
    }

    #[test]
    fn every_endpoint_needs_a_permission() {
        assert_eq!(needed("POST", "/db/execute"), Permission::Execute);
        assert_eq!(needed("GET", "/readyz"), Permission::Ready);
        assert_eq!(needed("POST", "/db/conflicts/resolve"), Permission::Conflicts);
        assert_eq!(needed("POST", "/cluster/add"), Permission::Join);
        assert_eq!(needed("GET", "/nowhere"), Permission::All);
    }
}
