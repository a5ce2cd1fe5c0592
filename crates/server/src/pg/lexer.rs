//! Just enough of SQL's lexical structure for the PostgreSQL door: where statements end,
//! which keyword starts one, and PostgreSQL's `$1` placeholders turned into SQLite's `?1`.
//! Quotes ('…', "…", `…`, […]) and comments (-- and /* */) are skipped as SQLite reads
//! them. Every offset used to cut a string comes from that string's own `char_indices`.

/// Where a character sits: in plain SQL, or inside something whose content is not SQL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inside {
    Code,
    Quoted(char),
    LineComment,
    BlockComment,
}

/// Walks `text`, calling `code` for every character that is plain SQL (not quoted, not
/// in a comment), with its byte offset.
fn walk(text: &str, mut code: impl FnMut(usize, char)) {
    let mut inside = Inside::Code;
    let mut previous = '\0';
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let next = chars.peek().map(|(_, next)| *next);
        inside = match inside {
            Inside::Code => match c {
                // The opening quote counts as code: a statement that is only a string
                // literal is still a statement (one SQLite refuses).
                '\'' | '"' | '`' => {
                    code(at, c);
                    Inside::Quoted(c)
                }
                '[' => {
                    code(at, c);
                    Inside::Quoted(']')
                }
                '-' if next == Some('-') => Inside::LineComment,
                '/' if next == Some('*') => {
                    // Consume the '*' so "/*/" does not close the comment it opens.
                    chars.next();
                    Inside::BlockComment
                }
                _ => {
                    code(at, c);
                    Inside::Code
                }
            },
            // A doubled quote inside a quoted run closes it and opens it again at once,
            // which leaves the run open: the escape needs no special case.
            Inside::Quoted(close) if c == close => Inside::Code,
            Inside::LineComment if c == '\n' => Inside::Code,
            Inside::BlockComment if c == '/' && previous == '*' => Inside::Code,
            other => other,
        };
        previous = c;
    }
}

/// The statements of a simple-query string, split at `;` in plain SQL, trimmed, empty
/// ones (and ones holding only comments) dropped.
pub fn split_statements(text: &str) -> Vec<&str> {
    let mut ends = Vec::new();
    walk(text, |at, c| {
        if c == ';' {
            ends.push(at);
        }
    });
    let mut statements = Vec::new();
    let mut start = 0;
    for end in ends.into_iter().chain(std::iter::once(text.len())) {
        let statement = text[start..end].trim();
        if has_code(statement) {
            statements.push(statement);
        }
        start = (end + 1).min(text.len());
    }
    statements
}

/// Whether any plain SQL (not whitespace, not a comment) is in `text`.
fn has_code(text: &str) -> bool {
    let mut found = false;
    walk(text, |_, c| found |= !c.is_whitespace());
    found
}

/// The first word of plain SQL, uppercased (`""` if there is none).
pub fn first_keyword(sql: &str) -> String {
    keywords(sql, 1).pop().unwrap_or_default()
}

/// Up to `count` leading words of plain SQL, uppercased, skipping opening parentheses.
pub fn keywords(sql: &str, count: usize) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut done = false;
    walk(sql, |_, c| {
        if done {
            return;
        }
        if c.is_alphanumeric() || c == '_' || c == '.' {
            current.extend(c.to_uppercase());
        } else if !current.is_empty() {
            words.push(std::mem::take(&mut current));
            done = words.len() >= count || !(c.is_whitespace() || c == '(');
        } else if !(c.is_whitespace() || c == '(') {
            done = true;
        }
    });
    if !done && !current.is_empty() {
        words.push(current);
    }
    words.truncate(count);
    words
}

/// PostgreSQL's `$N` placeholders in plain SQL become SQLite's `?N` (numbered, so the
/// values bind by number whatever order they appear in); returns the rewritten SQL and the
/// highest N (how many values the statement takes).
pub fn rewrite_placeholders(sql: &str) -> (String, usize) {
    let mut dollars: Vec<(usize, usize, usize)> = Vec::new();
    let mut pending: Option<(usize, usize)> = None;
    let mut digits_end = 0;
    walk(sql, |at, c| {
        match (&mut pending, c) {
            (Some((_, number)), '0'..='9') => {
                *number = number.saturating_mul(10).saturating_add(c as usize - '0' as usize);
                digits_end = at + 1;
                return;
            }
            (Some((start, number)), _) => {
                if digits_end > *start + 1 {
                    dollars.push((*start, digits_end, *number));
                }
                pending = None;
            }
            (None, _) => {}
        }
        if c == '$' {
            pending = Some((at, 0));
            digits_end = at + 1;
        }
    });
    if let Some((start, number)) = pending {
        if digits_end > start + 1 {
            dollars.push((start, digits_end, number));
        }
    }
    let mut rewritten = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut highest = 0;
    for (start, end, number) in dollars {
        rewritten.push_str(&sql[copied..start]);
        rewritten.push('?');
        rewritten.push_str(&sql[start + 1..end]);
        copied = end;
        highest = highest.max(number);
    }
    rewritten.push_str(&sql[copied..]);
    (rewritten, highest)
}

/// PostgreSQL's `expr::type` casts (`::text`, `::varchar(20)`, `::int[]`) in plain SQL
/// are dropped: SQLite has no such syntax, and its values keep their own types.
pub fn strip_casts(sql: &str) -> String {
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut previous: Option<usize> = None;
    walk(sql, |at, c| {
        if c == ':' && previous == Some(at.wrapping_sub(1)) {
            cuts.push((at - 1, at + 1));
        }
        previous = (c == ':').then_some(at);
    });
    if cuts.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for (start, after_colons) in cuts {
        if start < copied {
            continue;
        }
        // The type name: words, spaces between words (`double precision`), a (n) and [].
        let rest = &sql[after_colons..];
        let mut end = 0;
        let mut depth = 0usize;
        for (offset, c) in rest.char_indices() {
            let keep = match c {
                '(' | '[' => {
                    depth += 1;
                    true
                }
                ')' | ']' if depth > 0 => {
                    depth -= 1;
                    true
                }
                _ if depth > 0 => true,
                c if c.is_alphanumeric() || c == '_' || c == '.' => true,
                ' ' => rest[offset..].trim_start().starts_with("precision") || rest[offset..].trim_start().starts_with("varying"),
                _ => false,
            };
            if !keep {
                break;
            }
            end = offset + c.len_utf8();
        }
        out.push_str(&sql[copied..start]);
        copied = after_colons + end;
    }
    out.push_str(&sql[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let text = "INSERT INTO t VALUES ('a;b', \"c;d\"); -- one; two\nSELECT 1 /* ; */ ;; ;  -- only a comment";
        assert_eq!(split_statements(text), vec!["INSERT INTO t VALUES ('a;b', \"c;d\")", "-- one; two\nSELECT 1 /* ; */"]);
        assert!(split_statements("  ; -- nothing\n ; /* at all */").is_empty());
        assert_eq!(split_statements("SELECT 'it''s; fine'"), vec!["SELECT 'it''s; fine'"]);
    }

    #[test]
    fn the_first_keywords_skip_comments_and_parentheses() {
        assert_eq!(first_keyword("  -- hi\n /* x */ (select 1)"), "SELECT");
        assert_eq!(keywords("create  unique index i on t(x)", 2), vec!["CREATE", "UNIQUE"]);
        assert_eq!(keywords("SET tern.read_level = 'session'", 2), vec!["SET", "TERN.READ_LEVEL"]);
        assert_eq!(first_keyword("'quoted'"), "");
        assert_eq!(first_keyword(""), "");
    }

    #[test]
    fn placeholders_become_numbered_sqlite_ones_outside_quotes() {
        let (sql, count) = rewrite_placeholders("SELECT $2, '$1', \"$3\", $1 -- $9\n, $10");
        assert_eq!(sql, "SELECT ?2, '$1', \"$3\", ?1 -- $9\n, ?10");
        assert_eq!(count, 10);
        assert_eq!(rewrite_placeholders("SELECT $ , $a, x$1"), ("SELECT $ , $a, x?1".to_string(), 1));
        assert_eq!(rewrite_placeholders("SELECT 1").1, 0);
    }

    #[test]
    fn casts_are_dropped_outside_quotes() {
        assert_eq!(strip_casts("SELECT ?1::text, '1'::int + x::double precision, 'a::b', y::varchar(20)[]"), "SELECT ?1, '1' + x, 'a::b', y");
        assert_eq!(strip_casts("SELECT 1"), "SELECT 1");
        assert_eq!(strip_casts("SELECT :name, a::"), "SELECT :name, a");
    }

    proptest! {
        #[test]
        fn any_text_is_handled_without_panicking(text in "\\PC*") {
            let statements = split_statements(&text);
            for statement in &statements {
                prop_assert!(text.contains(statement));
            }
            let _ = keywords(&text, 3);
            let _ = strip_casts(&text);
            let (rewritten, _) = rewrite_placeholders(&text);
            prop_assert_eq!(rewritten.replace('?', "$").len(), text.replace('?', "$").len());
        }

        #[test]
        fn any_bytes_as_lossy_text_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = split_statements(&text);
            let _ = rewrite_placeholders(&text);
            let _ = strip_casts(&text);
        }
    }
}
