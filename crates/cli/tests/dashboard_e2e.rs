//! The dashboard in a real headless browser (Debian's `chromium`, installed when missing;
//! the test says why and skips when it cannot be): the page loads without script errors,
//! shows the three regions and the leader, and updates after a write. A screenshot is
//! left in the test's temporary directory.

mod support;

use serde_json::json;
use std::process::Command;
use support::*;

fn chromium() -> Result<String, String> {
    let found = || {
        ["chromium", "chromium-browser"]
            .into_iter()
            .find(|program| Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|output| output.status.success()))
    };
    if let Some(program) = found() {
        return Ok(program.to_string());
    }
    let script = "(apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null 2>&1";
    let _ = Command::new("sh").args(["-c", script]).status();
    found().map(str::to_string).ok_or_else(|| "chromium is not installed and apt-get could not install it".to_string())
}

/// Loads `url` headless, gives its scripts `budget_ms` of virtual time, and returns the
/// DOM and the browser's log (console messages included).
fn load(program: &str, url: &str, budget_ms: u32, extra: &[&str]) -> (String, String) {
    let profile = std::env::temp_dir().join(format!("tern-chromium-{}", std::process::id()));
    let budget = format!("--virtual-time-budget={budget_ms}");
    let data = format!("--user-data-dir={}", profile.display());
    let mut args = vec!["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", &budget, &data];
    args.extend_from_slice(extra);
    args.push(url);
    let output = Command::new("timeout").arg("90").arg(program).args(&args).output().expect("chromium runs");
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The number inside the element with this id (`<td ... id="write-total">12</td>`).
fn number_in(dom: &str, id: &str) -> Option<f64> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[start..];
    let open = rest.find('>')? + 1;
    let close = rest[open..].find('<')? + open;
    rest[open..close].trim().parse().ok()
}

#[test]
fn the_dashboard_shows_regions_and_the_leader_and_updates_after_a_write() {
    let program = match chromium() {
        Ok(program) => program,
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let mut cluster = Cluster::new_in_regions("dashboard", &["us-east", "eu-west", "antarctica"], &[]);
    cluster.start_all();
    let leader = cluster.leader();
    let mut client = leader.client();
    assert_eq!(execute(&mut client, "", json!(["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"])).status, 200);
    // Served by a follower: it gathers every node's state itself.
    let follower = cluster.nodes.iter().find(|node| node.id != leader.id).expect("a follower");
    let url = format!("http://{}/", follower.http);

    let (dom, log) = load(&program, &url, 3000, &["--dump-dom"]);
    for region in ["us-east", "eu-west", "antarctica"] {
        assert!(dom.contains(&format!("data-region=\"{region}\"")), "region {region} shown:\n{dom}");
    }
    assert!(dom.contains("class=\"badge leader\""), "the leader is marked:\n{dom}");
    assert!(dom.contains(&format!("leader {}", leader.id)), "the summary names the leader:\n{dom}");
    // The page writes script errors into #errors (headless chromium does not log the
    // console here); it stays empty and hidden.
    assert!(dom.contains("<pre id=\"errors\" hidden=\"\"></pre>"), "script errors on the page:\n{dom}\n{log}");
    assert!(!dom.contains("connecting…"), "the page rendered the cluster's state:\n{dom}");
    let writes_before = number_in(&dom, "write-total").expect("the write total is shown");
    assert!(writes_before >= 1.0, "{writes_before}");

    for value in 0..5 {
        assert_eq!(execute(&mut client, "", json!([["INSERT INTO t VALUES (?)", value]])).status, 200);
    }
    let (dom, _) = load(&program, &url, 3000, &["--dump-dom"]);
    let writes_after = number_in(&dom, "write-total").expect("the write total is shown");
    assert!(writes_after >= writes_before + 5.0, "the page shows the new writes: {writes_before} -> {writes_after}");

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let shot = format!("--screenshot={}", screenshot.display());
    let _ = load(&program, &url, 3000, &[&shot, "--window-size=1280,720"]);
    assert!(std::fs::metadata(&screenshot).is_ok_and(|metadata| metadata.len() > 1000), "a screenshot at {}", screenshot.display());
    println!("screenshot: {}", screenshot.display());
}
