//! `GET /db/changes`: the change stream as newline-delimited JSON, one event per changed
//! row (or per statement the log ships), in log order, each with a `cursor` to resume
//! after it (`from=<cursor>` or `from=<position>`). Only committed entries are streamed, so
//! nothing streamed is ever rolled back. With `follow`, the response stays open and new
//! events arrive as they commit.

use super::*;
use tern_storage::{ChangeCursor, ChangeEvent, ChangesError};

/// Events per page read from the log.
const PAGE_EVENTS: usize = 1000;

pub(super) async fn changes(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    if node.config.log_format == tern_core::LogFormat::Physical {
        return bad_request(
            "the physical log format ships pages, which name no rows: a change stream needs --log-format row (row events) or statement (statement events)",
        );
    }
    let mut cursor = match params.get("from").map(parse_cursor).transpose() {
        Ok(cursor) => cursor.unwrap_or(ChangeCursor { index: 0, number: None }),
        Err(message) => return bad_request(message),
    };
    let limit = match params.get("limit").map(str::parse::<usize>) {
        None => usize::MAX,
        Some(Ok(limit)) if limit > 0 => limit,
        Some(_) => return bad_request("bad limit=: expected a positive number of events"),
    };
    // The first page answers the request's status: a compacted cursor is a 410, not a
    // stream that ends at once.
    let first = match node.change_page(cursor, PAGE_EVENTS.min(limit)).await {
        Ok(page) => page,
        Err(error) => return changes_error(&error),
    };
    let follow = params.flag("follow");
    let mut sent = 0usize;
    let lines = take_page(&first, limit, &mut sent, &mut cursor);
    let state = (node, cursor, sent, limit, follow, first.events.is_empty());
    let rest = futures::stream::unfold(Some(state), |state| async move {
        let (node, mut cursor, mut sent, limit, follow, mut idle) = state?;
        loop {
            if sent >= limit {
                return None;
            }
            if idle {
                if !follow {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let page = match node.change_page(cursor, PAGE_EVENTS.min(limit - sent)).await {
                Ok(page) => page,
                Err(error) => {
                    let line = format!("{}\n", json!({ "error": changes_message(&error) }));
                    return Some((Ok::<_, std::io::Error>(Bytes::from(line)), None));
                }
            };
            idle = page.events.is_empty();
            if idle && !follow {
                return None;
            }
            let lines = take_page(&page, limit, &mut sent, &mut cursor);
            if !lines.is_empty() {
                return Some((Ok(Bytes::from(lines)), Some((node, cursor, sent, limit, follow, idle))));
            }
        }
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(lines)) }).chain(rest);
    ([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(body)).into_response()
}

use futures::StreamExt;

/// A page's events as NDJSON lines, up to `limit` events sent in all; `sent` and `cursor`
/// move past what was taken (past the whole page when all of it was).
fn take_page(page: &tern_storage::ChangePage, limit: usize, sent: &mut usize, cursor: &mut ChangeCursor) -> String {
    let mut lines = String::new();
    for event in page.events.iter().take(limit - *sent) {
        lines.push_str(&event_json(event).to_string());
        lines.push('\n');
        *sent += 1;
        *cursor = cursor_after(event);
    }
    if *sent < limit {
        *cursor = page.next;
    }
    lines
}

/// `from=`: a position (`epoch.index`: after that whole entry) or an event's cursor
/// (`epoch.index.number`: after that event). The epoch is not needed to find the place
/// (log indexes only grow), but it must be a number.
fn parse_cursor(text: &str) -> Result<ChangeCursor, String> {
    let bad = || format!("bad from={text:?}: expected a position (epoch.index) or an event's cursor (epoch.index.number)");
    let parts: Vec<&str> = text.split('.').collect();
    let number = |part: &str| part.parse::<u64>().map_err(|_| bad());
    match parts.as_slice() {
        ["0"] => Ok(ChangeCursor { index: 0, number: None }),
        [epoch, index] => {
            number(epoch)?;
            Ok(ChangeCursor { index: number(index)?, number: None })
        }
        [epoch, index, event] => {
            number(epoch)?;
            let event = u32::try_from(number(event)?).map_err(|_| bad())?;
            Ok(ChangeCursor { index: number(index)?, number: Some(event) })
        }
        _ => Err(bad()),
    }
}

fn cursor_after(event: &ChangeEvent) -> ChangeCursor {
    ChangeCursor { index: event.position.index, number: Some(event.number) }
}

fn changes_message(error: &ChangesError) -> String {
    match error {
        ChangesError::Compacted { oldest } => format!(
            "the log no longer holds the changes after that point: this node compacted it; the oldest change it holds is in entry {oldest} \
             (resume from={}.{} to read from there, or start from a backup)",
            oldest.epoch,
            oldest.index.saturating_sub(1)
        ),
        ChangesError::Storage(message) => format!("cannot read the log: {message}"),
    }
}

fn changes_error(error: &ChangesError) -> Response {
    match error {
        ChangesError::Compacted { oldest } => {
            (StatusCode::GONE, Json(json!({ "error": changes_message(error), "oldest": oldest.to_string() }))).into_response()
        }
        ChangesError::Storage(_) => error_response(&RequestError::new(500, changes_message(error))),
    }
}

fn event_json(event: &ChangeEvent) -> Value {
    let values = |columns: &Option<Vec<(String, tern_storage::SqlValue)>>| match columns {
        Some(columns) => Value::Object(columns.iter().map(|(name, value)| (name.clone(), value.to_json())).collect()),
        None => Value::Null,
    };
    let mut body = json!({
        "position": event.position.to_string(),
        "cursor": format!("{}.{}", event.position, event.number),
        "op": event.op,
    });
    if let Some(table) = &event.table {
        body["table"] = json!(table);
        body["key"] = Value::Array(event.key.iter().map(|value| value.to_json()).collect());
        body["before"] = values(&event.before);
        body["after"] = values(&event.after);
    }
    if let Some((sql, params)) = &event.sql {
        body["sql"] = json!(sql);
        if *params != tern_storage::Params::None {
            body["params"] = json!(format!("{params:?}"));
        }
    }
    if let Some((region, unix_ms)) = &event.origin {
        body["region"] = json!(region);
        body["time_ms"] = json!(unix_ms);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_positions_or_event_cursors() {
        assert_eq!(parse_cursor("0"), Ok(ChangeCursor { index: 0, number: None }));
        assert_eq!(parse_cursor("2.17"), Ok(ChangeCursor { index: 17, number: None }));
        assert_eq!(parse_cursor("2.17.3"), Ok(ChangeCursor { index: 17, number: Some(3) }));
        for bad in ["", "x", "1.x", "1.2.3.4", "1.2.99999999999", "-1.2", "1..2"] {
            assert!(parse_cursor(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

        /// Any text as `from=` is a cursor or an explanation, never a panic.
        #[test]
        fn any_from_is_parsed_or_explained(text in ".{0,40}", digits in "[0-9.]{0,30}") {
            for candidate in [text, digits] {
                if let Err(message) = parse_cursor(&candidate) {
                    proptest::prop_assert!(message.contains("bad from="));
                }
            }
        }
    }
}
