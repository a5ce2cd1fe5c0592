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
/// ones (and ones holding only comments) dropped. A `CREATE TRIGGER` statement's body
/// (`BEGIN … ; … END`) is not split: there a `;` ends the statement only after `END`.
pub fn split_statements(text: &str) -> Vec<&str> {
    let mut ends = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    walk(text, |at, c| {
        if c.is_alphanumeric() || c == '_' {
            word.extend(c.to_uppercase());
            return;
        }
        if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        if c == ';' {
            let trigger = words.iter().take(4).any(|word| word == "TRIGGER") && words.first().is_some_and(|first| first == "CREATE");
            if !trigger || words.last().is_some_and(|last| last == "END") {
                ends.push(at);
                words.clear();
            }
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

/// `sql` with quoted text and comments left out: what the statement says in SQL itself
/// (a table named in a string is not a table it reads).
pub fn plain_code(sql: &str) -> String {
    let mut code = String::with_capacity(sql.len());
    walk(sql, |_, c| code.push(c));
    code
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

/// PostgreSQL's `operand::type` casts become SQLite's `CAST(operand AS type)`, for an
/// operand that is one token (a `?N` or `$N` placeholder, a quoted literal, a number, a
/// name such as `t.x`) or a parenthesized group with the function name before it
/// (`count(*)::float`). Types map to SQLite's (`int` → INTEGER, `float8` → REAL, `text` →
/// TEXT, `bytea` → BLOB, `bool` → INTEGER).
///
/// # Errors
/// A cast SQLite could not honour: to a type it has no counterpart for (dates, json, …),
/// or of an operand that is not one of the above.
pub fn translate_casts(sql: &str) -> Result<String, String> {
    let mut casts: Vec<usize> = Vec::new();
    let mut previous: Option<usize> = None;
    walk(sql, |at, c| {
        if c == ':' && previous.is_some_and(|before| before + 1 == at) {
            casts.push(at - 1);
            previous = None;
            return;
        }
        previous = (c == ':').then_some(at);
    });
    if casts.is_empty() {
        return Ok(sql.to_string());
    }
    let mut out = String::with_capacity(sql.len() + 16 * casts.len());
    let mut copied = 0;
    for colons in casts {
        if colons < copied {
            return Err("a cast (::) inside another cast's type is not supported; use CAST(x AS type)".to_string());
        }
        let before = &sql[copied..colons];
        let operand_start = copied
            + operand_start(before)
                .ok_or_else(|| "this :: cast's operand is not a single value, name or function call; write CAST(expression AS type)".to_string())?;
        let rest = &sql[colons + 2..];
        let (type_name, type_length) = cast_type(rest);
        let sqlite_type = sqlite_type(&type_name).ok_or_else(|| {
            format!("casts to {type_name:?} are not supported: SQLite has no such type (values keep theirs); drop the cast or cast to text, integer or real")
        })?;
        out.push_str(&sql[copied..operand_start]);
        out.push_str("CAST(");
        out.push_str(sql[operand_start..colons].trim_end());
        out.push_str(" AS ");
        out.push_str(sqlite_type);
        out.push(')');
        copied = colons + 2 + type_length;
    }
    out.push_str(&sql[copied..]);
    Ok(out)
}

/// Where the operand that ends `before` starts (an offset into `before`).
fn operand_start(before: &str) -> Option<usize> {
    let trimmed = before.trim_end();
    let last = trimmed.chars().next_back()?;
    let chars: Vec<(usize, char)> = trimmed.char_indices().collect();
    let mut index = chars.len() - 1;
    match last {
        '\'' | '"' => {
            // A quoted literal: back to its opening quote (doubled quotes inside).
            loop {
                index = index.checked_sub(1)?;
                if chars[index].1 == last {
                    if index > 0 && chars[index - 1].1 == last {
                        index -= 1;
                        continue;
                    }
                    return Some(chars[index].0);
                }
            }
        }
        ')' => {
            let mut depth = 0usize;
            loop {
                match chars[index].1 {
                    ')' => depth += 1,
                    '(' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                index = index.checked_sub(1)?;
            }
            // The function's name, if any, goes with its parentheses.
            while index > 0 && (chars[index - 1].1.is_alphanumeric() || chars[index - 1].1 == '_' || chars[index - 1].1 == '.') {
                index -= 1;
            }
            Some(chars[index].0)
        }
        c if c.is_alphanumeric() || c == '_' || c == '.' || c == '?' || c == '$' => {
            while index > 0 && {
                let c = chars[index - 1].1;
                c.is_alphanumeric() || c == '_' || c == '.' || c == '?' || c == '$'
            } {
                index -= 1;
            }
            Some(chars[index].0)
        }
        _ => None,
    }
}

/// The type after `::` (words, `(n)`, `[]`), lowercased, and how many bytes it took.
fn cast_type(rest: &str) -> (String, usize) {
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
            ' ' => ["precision", "varying", "without", "with", "time", "zone"].iter().any(|word| rest[offset..].trim_start().starts_with(word)) && end > 0,
            _ => false,
        };
        if !keep {
            break;
        }
        end = offset + c.len_utf8();
    }
    (rest[..end].trim().to_lowercase(), end)
}

fn sqlite_type(postgres: &str) -> Option<&'static str> {
    let base = postgres.split(['(', '[']).next().unwrap_or("").trim().trim_start_matches("pg_catalog.");
    Some(match base {
        "int" | "int2" | "int4" | "int8" | "integer" | "bigint" | "smallint" | "bool" | "boolean" | "oid" => "INTEGER",
        "float" | "float4" | "float8" | "real" | "double precision" | "numeric" | "decimal" => "REAL",
        "text" | "varchar" | "char" | "character varying" | "character" | "bpchar" | "name" | "regclass" => "TEXT",
        "bytea" => "BLOB",
        _ => return None,
    })
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
    fn casts_become_sqlite_casts_or_a_clear_refusal() {
        let translated = translate_casts("SELECT ?1::text, '1'::int + t.x::double precision, 'a::b', count(*)::float / 2, y::varchar(20)");
        assert_eq!(
            translated.unwrap(),
            "SELECT CAST(?1 AS TEXT), CAST('1' AS INTEGER) + CAST(t.x AS REAL), 'a::b', CAST(count(*) AS REAL) / 2, CAST(y AS TEXT)"
        );
        assert_eq!(translate_casts("SELECT 'it''s'::text").unwrap(), "SELECT CAST('it''s' AS TEXT)");
        assert_eq!(translate_casts("SELECT 1").unwrap(), "SELECT 1");
        assert!(translate_casts("SELECT '2024-01-01'::date + 1").unwrap_err().contains("\"date\""));
        assert!(translate_casts("SELECT 1 + ::int").is_err());
    }

    #[test]
    fn a_trigger_body_is_not_split() {
        let text = "CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); UPDATE c SET n = n + 1; END; SELECT 1";
        assert_eq!(split_statements(text), vec!["CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); UPDATE c SET n = n + 1; END", "SELECT 1"]);
        assert_eq!(plain_code("SELECT 'pg_class' -- pg_catalog\n FROM x"), "SELECT '  FROM x");
    }

    proptest! {
        #[test]
        fn any_text_is_handled_without_panicking(text in "\\PC*") {
            let statements = split_statements(&text);
            for statement in &statements {
                prop_assert!(text.contains(statement));
            }
            let _ = keywords(&text, 3);
            let _ = translate_casts(&text);
            let _ = plain_code(&text);
            let (rewritten, _) = rewrite_placeholders(&text);
            prop_assert_eq!(rewritten.replace('?', "$").len(), text.replace('?', "$").len());
        }

        #[test]
        fn any_bytes_as_lossy_text_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = split_statements(&text);
            let _ = rewrite_placeholders(&text);
            let _ = translate_casts(&text);
        }
    }
}
