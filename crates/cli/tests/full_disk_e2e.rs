//! A follower whose disk fills up under load, on real processes: its data directory is a
//! 24 MiB tmpfs. It must not spin, not disturb the healthy majority (no election), stay
//! up serving reads, and catch up by itself once space returns. Needs root to mount a
//! tmpfs; skips, saying why, where it cannot.

mod support;

use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const LONG: Duration = Duration::from_secs(90);

/// A tmpfs mounted on a directory, unmounted (lazily) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(directory: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(directory).map_err(|error| error.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(directory)
            .status()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status}): not root, or no mount permission here"));
        }
        Ok(Tmpfs(directory.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().expect("mount runs");
        assert!(status.success(), "remount to {size} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A 3-node cluster whose node `small` keeps its data on a 24 MiB tmpfs, started, with
/// table `t`; `None` (the test skips, saying why) where no tmpfs can be mounted.
fn cluster_with_a_small_disk(name: &str, small: usize) -> Option<(Cluster, Tmpfs, std::sync::MutexGuard<'static, ()>)> {
    // One full-disk cluster at a time: two loaded clusters on 2 cores starve each other.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cluster = Cluster::new(name, 3, &[]);
    let disk = match Tmpfs::mount(&cluster.nodes[small].data, "24m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            return None;
        }
    };
    for node in &mut cluster.nodes {
        node.start();
    }
    cluster.wait_ready();
    let reply = execute(&mut cluster.nodes[0].client(), "?w=all", json!(["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    Some((cluster, disk, turn))
}

/// Gives the full node room again; it must catch up with `leader` by itself, still running.
fn catch_up_once_space_returns(mut cluster: Cluster, disk: Tmpfs, leader: usize, full: usize) {
    disk.resize("512m");
    let leader_rows = count(&mut cluster.nodes[leader].client(), "SELECT count(*) FROM t", "level=none");
    eventually(LONG, "the full node to catch up by itself once space returned", || {
        count(&mut cluster.nodes[full].client(), "SELECT count(*) FROM t", "level=none") == leader_rows
    });
    assert!(cluster.nodes[full].is_running());
    for node in &mut cluster.nodes {
        node.kill();
    }
    drop(disk);
}

fn log_count(node: &ServerNode, needle: &str) -> usize {
    node.log_text().matches(needle).count()
}

#[test]
fn a_follower_with_a_full_disk_backs_off_stays_up_and_catches_up_when_space_returns() {
    let Some((mut cluster, disk, _turn)) = cluster_with_a_small_disk("full-disk", 2) else { return };

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, acknowledged, address) = (stop.clone(), acknowledged.clone(), cluster.nodes[0].http.clone());
            std::thread::spawn(move || {
                let mut client = tern_server::client::HttpClient::new(&address).with_timeout(Duration::from_secs(10));
                let value = "x".repeat(4000);
                while !stop.load(Ordering::Relaxed) {
                    if client.post_json("/db/execute", &json!([["INSERT INTO t (v) VALUES (?)", value]])).is_ok_and(|reply| reply.status == 200) {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    eventually(LONG, "n3's disk to fill up", || log_count(&cluster.nodes[2], "disk is full") > 0);
    let errors_at_full = log_count(&cluster.nodes[2], "cannot apply");
    let acknowledged_at_full = acknowledged.load(Ordering::Relaxed);
    let watched = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let errors_while_full = log_count(&cluster.nodes[2], "cannot apply") - errors_at_full;
    let acknowledged_while_full = acknowledged.load(Ordering::Relaxed) - acknowledged_at_full;
    eprintln!(
        "while n3's disk was full for {:?}: {errors_while_full} apply errors on n3, {acknowledged_while_full} writes acknowledged by the majority",
        watched.elapsed()
    );

    assert!(cluster.nodes[2].is_running(), "the full node must stay up\n{}", cluster.nodes[2].log_text());
    // Before: an apply retry every few milliseconds (about 100 errors in 3 s).
    assert!(errors_while_full < 40, "n3 retried {errors_while_full} times in 10 s: it must back off");
    assert!(acknowledged_while_full > 0, "the healthy majority kept acknowledging writes");
    // The full node never leads. (On this shared 2-core machine a loaded cluster may still
    // hold an election of its own; what matters is that the majority goes on writing.)
    let status = cluster.nodes[2].client().get("/status").unwrap().body;
    assert_eq!(status["node"]["role"], "follower", "the full node must not lead: {status}");
    eprintln!("epoch at the end of the full-disk window: {} (1: no election)", status["node"]["epoch"]);
    let reply = query(&mut cluster.nodes[2].client(), "SELECT count(*) FROM t", "level=none");
    assert_eq!(reply.status, 200, "the full node still serves the reads it can: {}", reply.body);

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    catch_up_once_space_returns(cluster, disk, 0, 2);
}

#[test]
fn a_leader_with_a_full_disk_refuses_writes_and_hands_leadership_to_a_healthy_node() {
    let Some((mut cluster, disk, _turn)) = cluster_with_a_small_disk("full-disk-leader", 0) else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let addresses: Vec<String> = cluster.nodes.iter().map(|node| node.http.clone()).collect();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (stop, acknowledged, addresses) = (stop.clone(), acknowledged.clone(), addresses.clone());
            std::thread::spawn(move || {
                let value = "x".repeat(4000);
                let mut target = writer;
                while !stop.load(Ordering::Relaxed) {
                    // Any node: followers forward to whoever leads.
                    let mut client = tern_server::client::HttpClient::new(&addresses[target % addresses.len()]).with_timeout(Duration::from_secs(10));
                    match client.post_json("/db/execute", &json!([["INSERT INTO t (v) VALUES (?)", value]])) {
                        Ok(reply) if reply.status == 200 && reply.body["results"][0]["error"].is_null() => {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            target += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        })
        .collect();
    eventually(LONG, "n1's disk to fill up", || log_count(&cluster.nodes[0], "disk is full") > 0);
    eventually(LONG, "leadership to move to a node with room", || {
        cluster.nodes[1..].iter().any(|node| node.client().get("/status").is_ok_and(|reply| reply.body["node"]["role"] == "leader"))
    });
    let handed_over_at = acknowledged.load(Ordering::Relaxed);
    eventually(LONG, "writes to be acknowledged again after the handover", || acknowledged.load(Ordering::Relaxed) > handed_over_at + 50);
    assert!(cluster.nodes[0].is_running(), "the full node must stay up\n{}", cluster.nodes[0].log_text());
    assert!(cluster.nodes[0].log_text().contains("disk full: handing leadership to"), "{}", cluster.nodes[0].log_text());
    let reply = query(&mut cluster.nodes[0].client(), "SELECT count(*) FROM t", "level=none");
    assert_eq!(reply.status, 200, "the full node still serves the reads it can: {}", reply.body);

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let leader =
        (1..3).find(|index| cluster.nodes[*index].client().get("/status").is_ok_and(|reply| reply.body["node"]["role"] == "leader")).expect("a leader");
    catch_up_once_space_returns(cluster, disk, leader, 0);
}
