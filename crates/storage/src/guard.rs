//! What a client statement may do on the write path.
//!
//! The engine wraps every group of client requests in one transaction of its own and logs
//! what that transaction changed. A client statement that ends or nests that transaction
//! (`COMMIT`, `SAVEPOINT`), changes how this connection writes (`PRAGMA synchronous`,
//! `journal_mode`, `query_only`, `wal_checkpoint`), attaches another file, or writes
//! tern's own bookkeeping tables would commit changes no log entry describes, or corrupt
//! the log: the replicas would silently diverge. Such statements are refused with an error
//! saying what to do instead; SQLite's own read-only flag cannot tell them apart, since
//! most of them write no page.

use crate::capture::statement::{tokenize, TokenKind};
use rusqlite::config::DbConfig;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, ErrorCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The statement's first keyword, upper-cased, after any whitespace and comments.
pub fn first_keyword(sql: &str) -> String {
    tokenize(sql)
        .into_iter()
        .find(|token| token.kind != TokenKind::Space)
        .filter(|token| token.kind == TokenKind::Word)
        .map(|token| sql[token.start..token.end].to_ascii_uppercase())
        .unwrap_or_default()
}

/// PRAGMAs that change the writer connection's state or the file's layout, in any form.
const CONNECTION_PRAGMAS: &[&str] = &[
    "auto_vacuum",
    "busy_timeout",
    "cache_size",
    "cache_spill",
    "case_sensitive_like",
    "cell_size_check",
    "defer_foreign_keys",
    "foreign_keys",
    "fullfsync",
    "ignore_check_constraints",
    "journal_mode",
    "journal_size_limit",
    "legacy_alter_table",
    "locking_mode",
    "max_page_count",
    "mmap_size",
    "page_size",
    "query_only",
    "read_uncommitted",
    "recursive_triggers",
    "reverse_unordered_selects",
    "secure_delete",
    "synchronous",
    "temp_store",
    "trusted_schema",
    "wal_autocheckpoint",
    "wal_checkpoint",
    "writable_schema",
];

fn significant_tokens(sql: &str) -> Vec<&str> {
    tokenize(sql).into_iter().filter(|token| token.kind != TokenKind::Space).map(|token| &sql[token.start..token.end]).collect()
}

/// Why `sql` may not run on the write path at all, or `None` if it may. Decided from the
/// text alone: SQLite applies some PRAGMAs (`query_only`, `writable_schema`) while merely
/// preparing them.
pub fn refusal(sql: &str) -> Option<String> {
    let tokens = significant_tokens(sql);
    let keyword = tokens.first().map(|word| word.to_ascii_uppercase()).unwrap_or_default();
    match keyword.as_str() {
        "BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => {
            return Some(format!(
                "{keyword} is not allowed: tern runs each request in its own transaction \
                 (send the statements in one request with ?transaction to make them all-or-nothing)"
            ))
        }
        "ATTACH" | "DETACH" => return Some(format!("{keyword} is not allowed: only the replicated database can be written")),
        "PRAGMA" => {
            let name = tokens.get(1).map(|word| word.to_ascii_lowercase()).unwrap_or_default();
            // `PRAGMA main.name`: the schema prefix does not change what it does.
            let name = if tokens.get(2) == Some(&".") { tokens.get(3).map(|word| word.to_ascii_lowercase()).unwrap_or_default() } else { name };
            let sets_value = tokens.contains(&"=");
            if CONNECTION_PRAGMAS.contains(&name.as_str()) || (sets_value && name != "user_version" && name != "application_id") {
                return Some(format!("PRAGMA {name} is not allowed on the write path: it changes how this node stores data, not the data itself"));
            }
        }
        _ => {}
    }
    None
}

/// `VACUUM INTO 'file'` writes a copy of the database anywhere the server may write.
pub fn vacuum_into_refusal(sql: &str) -> Option<String> {
    let tokens = significant_tokens(sql);
    let is_vacuum = tokens.first().is_some_and(|word| word.eq_ignore_ascii_case("VACUUM"));
    (is_vacuum && tokens.iter().any(|word| word.eq_ignore_ascii_case("INTO")))
        .then(|| "VACUUM INTO is not allowed: it writes a file on the server (use /db/backup-style tooling on the node instead)".to_owned())
}

/// Limits on what one client statement may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A statement still running after this long is interrupted (`--query-timeout-ms`).
    pub statement_timeout: Duration,
    /// A query whose rows add up to more than this many bytes is stopped (`--max-result-bytes`).
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { statement_timeout: Duration::from_secs(10), max_result_bytes: 64 << 20 }
    }
}

/// SQLite virtual-instruction count between checks of a statement's deadline.
const PROGRESS_CHECK_EVERY: i32 = 10_000;

struct PolicyState {
    /// Client rules apply only while this is set: tern's own statements on the same
    /// connection (the log, savepoints, re-preparations of them) are never refused.
    active: AtomicBool,
    /// Microseconds after `base` when the running client statement must stop; 0: none.
    deadline_us: AtomicU64,
    interrupted: AtomicBool,
    base: Instant,
    /// The connection applies replicated pages through `sqlite_dbpage` (the physical
    /// format's writer), so its defensive mode is on only inside a scope; on every other
    /// connection it is on always. (Switching it expires every prepared statement, so it
    /// is switched only where it must be.)
    applies_pages: bool,
    refusal: Mutex<Option<String>>,
    limits: Mutex<Limits>,
    /// While set, what a statement being prepared touches.
    recording: Mutex<Option<Touched>>,
}

/// What preparing a statement showed it would touch.
#[derive(Debug, Default)]
pub struct Touched {
    /// Functions called (lower case).
    pub functions: Vec<String>,
    /// Tables inserted into, by the statement or by triggers it fires.
    pub inserts_into: Vec<String>,
    /// Tables whose rows' rowids the statement (or a trigger) sets.
    pub sets_rowid_of: Vec<String>,
    /// Tables the statement (or a trigger) updates.
    pub updates: Vec<String>,
    /// Tables whose columns the statement reads (through views too).
    pub reads: Vec<String>,
}

/// What a client statement may do, enforced by SQLite itself: an authorizer that sees
/// every table, view, trigger, function and pragma a statement touches once it is
/// prepared (through views and triggers too), defensive mode (no raw page or schema
/// writes), and a deadline checked by a progress handler. Cheap to clone.
#[derive(Clone)]
pub struct ClientPolicy {
    state: Arc<PolicyState>,
}

/// Client rules in force on a connection until dropped.
pub struct ClientScope<'policy> {
    policy: &'policy ClientPolicy,
    connection: &'policy Connection,
}

impl Drop for ClientScope<'_> {
    fn drop(&mut self) {
        self.policy.state.active.store(false, Ordering::Release);
        self.policy.state.deadline_us.store(0, Ordering::Release);
        if self.policy.state.applies_pages {
            // tern's own apply path writes pages through sqlite_dbpage (physical format).
            let _ = self.connection.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false);
        }
    }
}

impl ClientPolicy {
    /// Installs the policy on `connection`; its rules apply inside [`ClientPolicy::scope`]
    /// only, since tern runs its own statements on the same connections. `applies_pages`:
    /// the connection writes replicated pages, so defensive mode is on only inside a scope.
    ///
    /// # Errors
    /// If SQLite refuses the hooks.
    pub fn install(connection: &mut Connection, applies_pages: bool, limits: Limits) -> rusqlite::Result<ClientPolicy> {
        let state = Arc::new(PolicyState {
            active: AtomicBool::new(false),
            deadline_us: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            base: Instant::now(),
            applies_pages,
            refusal: Mutex::new(None),
            limits: Mutex::new(limits),
            recording: Mutex::new(None),
        });
        let for_authorizer = state.clone();
        connection.authorizer(Some(move |context: AuthContext<'_>| {
            if !for_authorizer.active.load(Ordering::Acquire) {
                return Authorization::Allow;
            }
            // tern's own temporary triggers (multi-leader rowids) do their bookkeeping
            // inside client statements; no client can make a trigger of that name.
            if context.accessor.is_some_and(|trigger| trigger.starts_with(ROWID_TRIGGER_PREFIX)) {
                return Authorization::Allow;
            }
            if let Some(touched) = for_authorizer.recording.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
                match context.action {
                    AuthAction::Function { function_name } => touched.functions.push(function_name.to_ascii_lowercase()),
                    AuthAction::Insert { table_name } => touched.inserts_into.push(table_name.to_owned()),
                    AuthAction::Read { table_name, .. } if !touched.reads.iter().any(|table| table == table_name) => {
                        touched.reads.push(table_name.to_owned());
                    }
                    // SQLite names the rowid "ROWID" whichever alias the statement used.
                    AuthAction::Update { table_name, column_name } => {
                        if column_name.eq_ignore_ascii_case("ROWID") {
                            touched.sets_rowid_of.push(table_name.to_owned());
                        }
                        if !touched.updates.iter().any(|table| table == table_name) {
                            touched.updates.push(table_name.to_owned());
                        }
                    }
                    _ => {}
                }
            }
            match authorize(&context.action) {
                Ok(()) => Authorization::Allow,
                Err(reason) => {
                    *for_authorizer.refusal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
                    Authorization::Deny
                }
            }
        }))?;
        let for_progress = state.clone();
        connection.progress_handler(
            PROGRESS_CHECK_EVERY,
            Some(move || {
                let deadline = for_progress.deadline_us.load(Ordering::Acquire);
                let late = deadline != 0 && for_progress.base.elapsed().as_micros() as u64 > deadline;
                if late {
                    for_progress.interrupted.store(true, Ordering::Release);
                }
                late
            }),
        )?;
        if !applies_pages {
            connection.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        }
        Ok(ClientPolicy { state })
    }

    pub fn limits(&self) -> Limits {
        *self.state.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_limits(&self, limits: Limits) {
        *self.state.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    fn start_statement(&self) {
        let timeout = self.limits().statement_timeout.as_micros() as u64;
        let now = self.state.base.elapsed().as_micros() as u64;
        self.state.deadline_us.store(now.saturating_add(timeout).max(1), Ordering::Release);
        self.state.interrupted.store(false, Ordering::Release);
        *self.state.refusal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Client rules on `connection` (the one the policy was installed on) for one client
    /// statement, with its deadline started, until the scope drops.
    ///
    /// # Errors
    /// If defensive mode cannot be switched on.
    pub fn scope<'policy>(&'policy self, connection: &'policy Connection) -> rusqlite::Result<ClientScope<'policy>> {
        if self.state.applies_pages {
            connection.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        }
        self.state.active.store(true, Ordering::Release);
        self.start_statement();
        Ok(ClientScope { policy: self, connection })
    }

    /// Every function `sql` calls and every table it inserts into, as SQLite reports them
    /// while preparing it: through views and trigger bodies too, and never a table or CTE
    /// that merely has a function's name. `None` if it does not prepare (SQLite will say
    /// why when it runs).
    pub fn touched(&self, connection: &Connection, sql: &str) -> Option<Touched> {
        let _client = self.scope(connection).ok()?;
        *self.state.recording.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Touched::default());
        // Not the statement cache: a cached statement is not authorized again.
        let prepared = connection.prepare(sql).is_ok();
        let called = self.state.recording.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        prepared.then_some(called).flatten()
    }

    /// Did the running statement's deadline stop it?
    pub fn interrupted(&self) -> bool {
        self.state.interrupted.load(Ordering::Acquire)
    }

    /// A client-facing account of `error`: the policy's reason when the authorizer refused
    /// the statement or its deadline stopped it, else SQLite's own message.
    pub fn explain(&self, error: &rusqlite::Error) -> String {
        if let rusqlite::Error::SqliteFailure(failure, _) = error {
            match failure.code {
                ErrorCode::AuthorizationForStatementDenied => {
                    if let Some(reason) = self.state.refusal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
                        return reason;
                    }
                }
                ErrorCode::OperationInterrupted if self.interrupted() => {
                    return format!(
                        "statement stopped after running longer than {} ms (--query-timeout-ms); nothing it would have written was kept",
                        self.limits().statement_timeout.as_millis()
                    );
                }
                _ => {}
            }
        }
        describe(error)
    }
}

/// SQLite's message for an error, without rusqlite's wrapping.
pub fn describe(error: &rusqlite::Error) -> String {
    match error {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
        other => other.to_string(),
    }
}

/// The names of tern's temporary triggers that place multi-leader rowids.
pub(crate) const ROWID_TRIGGER_PREFIX: &str = "_tern_rowid_";

pub(crate) fn is_internal_table(name: &str) -> bool {
    // `get`, not `[..6]`: byte 6 may fall inside a character ('Andrés').
    name.get(..6).is_some_and(|prefix| prefix.eq_ignore_ascii_case("_tern_")) || name.eq_ignore_ascii_case("sqlite_dbpage")
}

const INTERNAL_TABLE: &str = "tables named _tern_* are tern's own bookkeeping, and sqlite_dbpage is the raw file: clients cannot write them";

/// The client rules, as SQLite reports each action of a statement it prepares.
///
/// # Errors
/// Why the action is refused.
pub fn authorize(action: &AuthAction<'_>) -> Result<(), String> {
    use AuthAction as A;
    let refuse = |reason: &str| Err(reason.to_owned());
    match action {
        A::Attach { .. } | A::Detach { .. } => refuse("ATTACH and DETACH are not allowed: only the replicated database can be read or written"),
        A::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            refuse("load_extension() is not allowed: a node runs only the code it was built with")
        }
        A::Pragma { pragma_name, pragma_value } => {
            let name = pragma_name.to_ascii_lowercase();
            let sets_value = pragma_value.is_some()
                && !matches!(
                    name.as_str(),
                    "user_version"
                        | "application_id"
                        | "table_info"
                        | "table_xinfo"
                        | "index_info"
                        | "index_xinfo"
                        | "index_list"
                        | "foreign_key_list"
                        | "foreign_key_check"
                        | "integrity_check"
                        | "quick_check"
                        | "function_list"
                        | "pragma_list"
                        | "table_list"
                        | "module_list"
                        | "collation_list"
                        | "database_list"
                        | "compile_options"
                );
            if CONNECTION_PRAGMAS.contains(&name.as_str()) || sets_value {
                Err(format!("PRAGMA {name} is not allowed: it changes how this node stores data, not the data itself"))
            } else {
                Ok(())
            }
        }
        A::Transaction { .. } | A::Savepoint { .. } => refuse(
            "transaction control is not allowed: tern runs each request in its own transaction \
             (send the statements in one request with ?transaction to make them all-or-nothing)",
        ),
        A::CreateTempTable { .. } | A::CreateTempIndex { .. } | A::CreateTempTrigger { .. } | A::CreateTempView { .. } => refuse(
            "temporary tables, views, triggers and indexes are not allowed: they would live on one connection of one node, \
             invisible to later requests and to every replica (create an ordinary table instead)",
        ),
        A::CreateVtable { module_name, .. } if module_name.eq_ignore_ascii_case("sqlite_dbpage") => refuse(INTERNAL_TABLE),
        A::CreateTable { table_name, .. } | A::CreateView { view_name: table_name, .. } | A::CreateTrigger { trigger_name: table_name, .. }
            if is_internal_table(table_name) =>
        {
            refuse("names beginning with _tern_ are tern's own: choose another name")
        }
        A::Insert { table_name }
        | A::Update { table_name, .. }
        | A::Delete { table_name }
        | A::DropTable { table_name }
        | A::AlterTable { table_name, .. }
        | A::CreateIndex { table_name, .. }
        | A::DropIndex { table_name, .. }
        | A::CreateTrigger { table_name, .. }
        | A::DropTrigger { table_name, .. }
        | A::DropVtable { table_name, .. }
        | A::Analyze { table_name }
            if is_internal_table(table_name) =>
        {
            refuse(INTERNAL_TABLE)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_keyword_skips_comments_and_whitespace() {
        assert_eq!(first_keyword("-- note\n /* more */ insert into t values (1)"), "INSERT");
        assert_eq!(first_keyword("  VACUUM"), "VACUUM");
        assert_eq!(first_keyword("/* unterminated"), "");
        assert_eq!(first_keyword("'text'"), "");
    }

    #[test]
    fn transaction_control_and_connection_pragmas_are_refused() {
        for sql in [
            "COMMIT",
            "begin immediate",
            "-- c\nSAVEPOINT s",
            "release s",
            "END TRANSACTION",
            "ATTACH 'x.db' AS x",
            "PRAGMA synchronous=OFF",
            "PRAGMA main.journal_mode = DELETE",
            "pragma query_only(1)",
            "PRAGMA wal_checkpoint",
            "PRAGMA cache_size = 10",
        ] {
            assert!(refusal(sql).is_some(), "{sql} must be refused");
        }
    }

    #[test]
    fn ordinary_writes_and_data_pragmas_pass() {
        for sql in ["INSERT INTO t VALUES (1)", "PRAGMA user_version = 7", "PRAGMA table_info(t)", "CREATE TABLE tern_notes (x)", "SELECT '_tern_log'"] {
            assert_eq!(refusal(sql).or(vacuum_into_refusal(sql)), None, "{sql} must pass");
        }
        assert_eq!(refusal("SELECT * FROM _tern_log"), None, "reading the log is allowed");
    }

    #[test]
    fn vacuum_into_is_refused_and_plain_vacuum_is_not() {
        assert!(vacuum_into_refusal("VACUUM INTO '/tmp/x.db'").is_some());
        assert!(vacuum_into_refusal("vacuum main into 'x'").is_some());
        assert_eq!(vacuum_into_refusal("VACUUM"), None);
        assert_eq!(vacuum_into_refusal("INSERT INTO t VALUES ('VACUUM')"), None);
    }

    #[test]
    fn internal_table_names_with_multibyte_text_do_not_panic() {
        assert!(!is_internal_table("Andrés"));
        assert!(!is_internal_table("日本語のテーブル"));
        assert!(!is_internal_table("_tern"));
        assert!(is_internal_table("_TERN_log"));
        assert!(is_internal_table("SQLITE_DBPAGE"));
    }
}
