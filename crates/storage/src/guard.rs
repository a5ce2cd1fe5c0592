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

use crate::rewrite::{tokenize, TokenKind};

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

/// Why a statement that writes (as SQLite says once it is prepared) may not, or `None`:
/// tern's own tables are readable but not writable by clients.
pub fn write_refusal(sql: &str) -> Option<String> {
    let names_tern_table = significant_tokens(sql).iter().any(|token| {
        let unquoted = token.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']'));
        unquoted.len() >= 6 && unquoted[..6].eq_ignore_ascii_case("_tern_")
    });
    names_tern_table.then(|| "tables named _tern_* are tern's own bookkeeping and cannot be written by clients".to_owned())
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
            assert_eq!(refusal(sql).or(write_refusal(sql)), None, "{sql} must pass");
        }
        assert_eq!(refusal("SELECT * FROM _tern_log"), None, "reading the log is allowed");
    }

    #[test]
    fn tern_tables_cannot_be_written() {
        assert!(write_refusal("DELETE FROM _tern_log").is_some());
        assert!(write_refusal("UPDATE \"_TERN_META\" SET value = 0").is_some());
        assert!(write_refusal("DROP TABLE [_tern_log]").is_some());
    }
}
