//! Claim 6 of the issue: followers add read throughput. Every node of a test cluster runs
//! on the same cores here, so adding one adds no capacity unless each node is held to a
//! share of a core of its own, as a node on its own small machine would be: a cgroup CPU
//! quota per `tern server` process.

use super::plot::Plot;
use super::{Finding, Scale};
use crate::bench_sizing::{fill_kv, read_by_key, start_ready, READ_ROWS};
use std::path::PathBuf;
use std::time::Duration;

/// The share of one core each node gets: small enough that 7 nodes and the load
/// generator fit on 2 cores with room to spare.
const CORES_PER_NODE: f64 = 0.1;
/// The quota's period: short, so a throttled node waits milliseconds, not a tenth of a second.
const PERIOD_US: u64 = 10_000;

/// A cgroup that holds processes to a share of one core (cgroup v1's `cpu` controller or
/// v2's `cpu.max`); removed when dropped (after its processes have exited).
pub struct CpuLimit {
    directory: PathBuf,
}

impl CpuLimit {
    /// A new group named `name` limited to `cores` of one core, or why there cannot be
    /// one here (not root, no CPU controller).
    pub fn new(name: &str, cores: f64) -> Result<CpuLimit, String> {
        let quota_us = ((cores * PERIOD_US as f64) as u64).max(1_000);
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (directory, settings): (PathBuf, Vec<(&str, String)>) = if v1.join("cpu.cfs_quota_us").exists() {
            (v1.join(name), vec![("cpu.cfs_period_us", PERIOD_US.to_string()), ("cpu.cfs_quota_us", quota_us.to_string())])
        } else if std::fs::read_to_string(v2.join("cgroup.controllers")).is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu")) {
            // The root must hand the controller down to its children first.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            (v2.join(name), vec![("cpu.max", format!("{quota_us} {PERIOD_US}"))])
        } else {
            return Err("this machine has no cgroup CPU controller at /sys/fs/cgroup".to_string());
        };
        let _ = std::fs::remove_dir(&directory);
        std::fs::create_dir(&directory).map_err(|error| format!("cannot create the cgroup {} ({error}; it needs root)", directory.display()))?;
        let limit = CpuLimit { directory };
        for (file, value) in settings {
            std::fs::write(limit.directory.join(file), &value).map_err(|error| format!("cannot set {file} of {}: {error}", limit.directory.display()))?;
        }
        Ok(limit)
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.directory.join("cgroup.procs"), pid.to_string())
            .map_err(|error| format!("cannot move process {pid} into {}: {error}", self.directory.display()))
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.directory);
    }
}

/// CPU time (user + system) a process has used, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub fn followers_add_read_throughput(scale: &Scale) -> Result<Finding, String> {
    let counts: Vec<usize> = if scale.quick { vec![1, 3] } else { vec![1, 3, 5, 7] };
    let duration = Duration::from_millis(scale.pick(1_500, 4_000) as u64);
    // Clients grow with the nodes, so every node is as busy in every case (12 clients on
    // one throttled node spent 2.6× the CPU per read of 4, queueing behind its quota).
    const CLIENTS_PER_NODE: usize = 4;
    let setup = format!(
        "Real `tern server` processes on this machine's loopback (single-leader, semi-sync), {} node(s). Each node is held to {CORES_PER_NODE} \
         of a core by a cgroup CPU quota, as if each ran on a small machine of its own (unlimited, every node would share this \
         machine's cores, and adding nodes could add no capacity). {CLIENTS_PER_NODE} clients per node, in the lab's own \
         process, read a {READ_ROWS}-row table by key at `level=none`, for {:.1} s after a 1 s warm-up.",
        counts.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
        duration.as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut throughput = Vec::new();
    for &nodes in &counts {
        let limits: Vec<CpuLimit> = match (1..=nodes).map(|node| CpuLimit::new(&format!("tern-lab-n{node}"), CORES_PER_NODE)).collect() {
            Ok(limits) => limits,
            Err(reason) => return Ok(Finding::not_measured(setup, format!("no node could be held to a share of a core: {reason}"))),
        };
        // A slower election tick: a node held to its quota answers heartbeats late.
        let (data_dir, processes, addresses) = start_ready("lab-reads", nodes, &["--election-tick-ms".to_string(), "100".to_string()])?;
        // Filled at full speed, then held to the quota for the reads.
        fill_kv(&addresses, READ_ROWS)?;
        for (limit, process) in limits.iter().zip(&processes) {
            limit.add(process.child.id())?;
        }
        let before: Vec<f64> = processes.iter().map(|process| cpu_seconds(process.child.id()).unwrap_or(0.0)).collect();
        let latency = read_by_key(&addresses, CLIENTS_PER_NODE * nodes, READ_ROWS, Duration::from_secs(1), duration)?;
        let used: Vec<f64> = processes.iter().zip(&before).map(|(process, before)| cpu_seconds(process.child.id()).unwrap_or(0.0) - before).collect();
        drop(processes);
        drop(limits);
        let _ = std::fs::remove_dir_all(&data_dir);
        let reads = latency.len() as f64 / duration.as_secs_f64();
        // Over the warm-up too: an estimate of how close each node ran to its quota.
        let mean_cores = used.iter().sum::<f64>() / used.len() as f64 / (duration.as_secs_f64() + 1.0);
        throughput.push(reads);
        rows.push(vec![
            nodes.to_string(),
            format!("{reads:.0}"),
            format!("{:.0}", reads / nodes as f64),
            latency.percentile(50.0).map_or("-".into(), crate::stats::millis),
            latency.percentile(99.0).map_or("-".into(), crate::stats::millis),
            format!("{mean_cores:.2}"),
        ]);
    }
    let (first, last) = (throughput[0], *throughput.last().unwrap_or(&0.0));
    let most = *counts.last().unwrap_or(&1);
    // At least half of linear growth: each node brings its quota's worth of reads.
    let holds = last >= first * most as f64 / 2.0;
    let verdict = format!("{first:.0} reads/s with 1 node, {last:.0} with {most} ({:.1}×, linear would be {most}×)", last / first.max(1.0));
    Ok(Finding {
        setup,
        headers: vec!["nodes", "reads/s", "reads/s per node", "p50 ms", "p99 ms", "CPU per node (cores, quota 0.1)"],
        rows,
        plots: vec![Plot {
            title: format!("Follower reads as nodes are added ({CORES_PER_NODE} core each)"),
            x_label: "nodes".to_string(),
            y_label: "reads per second".to_string(),
            cases: counts.iter().map(usize::to_string).collect(),
            series: vec![("level=none reads/s".to_string(), throughput)],
        }],
        holds,
        verdict: if holds { verdict } else { format!("{verdict}: less than half of linear") },
        not_measured: None,
    })
}
