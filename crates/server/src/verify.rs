//! Comparing replicas (`tern verify`, `GET /db/verify`): per-table row checksums for every
//! format, and whole-file page hashes for the physical format. Reports name the node that
//! differs and where (which table, which pages).

use serde_json::{json, Value};

/// Compares node reports (as made by `Node::verify_local`) against the first one.
pub fn compare(reports: &[Value]) -> Value {
    let Some(reference) = reports.first() else { return json!({"agree": false, "differences": ["no reports"]}) };
    let mut differences = Vec::new();
    let mut comparable = true;
    for report in &reports[1..] {
        let (id, reference_id) = (report["id"].as_str().unwrap_or("?"), reference["id"].as_str().unwrap_or("?"));
        if report["error"].is_string() {
            differences.push(format!("{id}: {}", report["error"].as_str().unwrap_or_default()));
            comparable = false;
            continue;
        }
        if report["position"] != reference["position"] {
            differences.push(format!(
                "{id} is at {} and {reference_id} at {}: not comparable while writes are flowing; retry when they pause",
                report["position"].as_str().unwrap_or("?"),
                reference["position"].as_str().unwrap_or("?")
            ));
            comparable = false;
            continue;
        }
        let tables = |value: &Value| -> Vec<(String, String)> {
            value["tables"].as_array().map_or_else(Vec::new, |tables| {
                tables
                    .iter()
                    .map(|table| {
                        (
                            table["table"].as_str().unwrap_or("").to_string(),
                            format!("{} rows, checksum {}", table["rows"], table["checksum"].as_str().unwrap_or("")),
                        )
                    })
                    .collect()
            })
        };
        let (mine, theirs) = (tables(report), tables(reference));
        for (name, summary) in &theirs {
            match mine.iter().find(|(other, _)| other == name) {
                None => differences.push(format!("{id} lacks table {name} that {reference_id} has")),
                Some((_, other)) if other != summary => differences.push(format!("table {name}: {id} has {other}, {reference_id} has {summary}")),
                _ => {}
            }
        }
        for (name, _) in mine.iter().filter(|(name, _)| !theirs.iter().any(|(other, _)| other == name)) {
            differences.push(format!("{id} has table {name} that {reference_id} lacks"));
        }
        if let (Some(mine), Some(theirs)) = (report["pages"].as_array(), reference["pages"].as_array()) {
            if mine.len() != theirs.len() {
                differences.push(format!("{id} has {} pages, {reference_id} has {}", mine.len(), theirs.len()));
            }
            let differing: Vec<usize> = mine.iter().zip(theirs).enumerate().filter(|(_, (a, b))| a != b).map(|(index, _)| index + 1).collect();
            if !differing.is_empty() {
                let shown: Vec<String> = differing.iter().take(20).map(usize::to_string).collect();
                differences.push(format!(
                    "{id} differs from {reference_id} in {} page(s): {}{}",
                    differing.len(),
                    shown.join(", "),
                    if differing.len() > 20 { ", ..." } else { "" }
                ));
            }
        }
    }
    let nodes: Vec<Value> = reports
        .iter()
        .map(|report| {
            json!({
                "id": report["id"],
                "position": report["position"],
                "tables": report["tables"].as_array().map_or(0, Vec::len),
                "pages": report["pages"].as_array().map(Vec::len),
                "error": report["error"],
            })
        })
        .collect();
    json!({"agree": comparable && differences.is_empty(), "comparable": comparable, "nodes": nodes, "differences": differences})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, position: &str, checksum: &str, pages: &[&str]) -> Value {
        json!({"id": id, "position": position, "tables": [{"table": "t", "rows": 2, "checksum": checksum}], "pages": pages})
    }

    #[test]
    fn identical_reports_agree() {
        let verdict = compare(&[report("n1", "1.5", "aa", &["1", "2"]), report("n2", "1.5", "aa", &["1", "2"])]);
        assert_eq!(verdict["agree"], true, "{verdict}");
    }

    #[test]
    fn differences_name_the_node_the_table_and_the_pages() {
        let verdict = compare(&[report("n1", "1.5", "aa", &["1", "2", "3"]), report("n3", "1.5", "bb", &["1", "9", "3"])]);
        assert_eq!(verdict["agree"], false);
        let text = verdict["differences"].to_string();
        assert!(text.contains("table t: n3 has 2 rows, checksum bb"), "{text}");
        assert!(text.contains("n3 differs from n1 in 1 page(s): 2"), "{text}");
    }

    #[test]
    fn different_positions_are_not_compared() {
        let verdict = compare(&[report("n1", "1.6", "aa", &[]), report("n2", "1.5", "bb", &[])]);
        assert_eq!(verdict["comparable"], false);
        assert!(verdict["differences"][0].as_str().unwrap().contains("not comparable"));
    }
}
