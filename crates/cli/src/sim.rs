//! `tern sim`: run many seeds of the deterministic simulator and report violations.

use crate::args::{AckArg, FaultsArg, LogFormatArg, MutationArg, PolicyArg, TopologyArg};
use clap::Args;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tern_sim::leaderless::{run_leaderless_seed, LeaderlessOptions};
use tern_sim::regions::{run_regions_seed, RegionOptions};
use tern_sim::{run_seed, Options, SeedReport};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed (seeds run from here upwards).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes in the simulated cluster (3 to 7); with `--topology multi-leader`, regions.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The replication topology simulated.
    #[arg(long, value_enum, default_value_t = TopologyArg::SingleLeader)]
    topology: TopologyArg,
    /// Multi-leader: how concurrent writes of one row are settled.
    #[arg(long, value_enum, default_value_t = PolicyArg::Lww)]
    policy: PolicyArg,
    /// Leaderless: replicas of each key.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Multi-leader and leaderless: run with a deliberate bug, which the checkers must report.
    #[arg(long, value_enum)]
    mutate: Option<MutationArg>,
    /// Multi-leader: every key has a home region, the only one that writes it, and keys
    /// move between regions by fenced handovers; the checkers then require 0 conflicts.
    #[arg(long)]
    homes: bool,
    /// Default ack mode.
    #[arg(long, value_enum, default_value_t = AckArg::SemiSync)]
    ack: AckArg,
    /// Log format (the simulated storage model is the same for every format).
    #[arg(long, value_enum, default_value_t = LogFormatArg::Row)]
    log_format: LogFormatArg,
    /// Faults to inject.
    #[arg(long, value_enum, default_value_t = FaultsArg::All)]
    faults: FaultsArg,
    /// Client operations per seed during the fault phase.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Write the event trace of the (single) seed to this file.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Losses of writes acknowledged with fewer than a majority of copies are the
    /// expected outcome (async honesty): succeed only if at least one seed finds one.
    #[arg(long)]
    expect_loss: bool,
    /// Automatic failover: nodes elect their leader (raft-rs) instead of a fixed one.
    #[arg(long)]
    failover: bool,
    /// With --failover: random leader priorities and one or two non-voters (with 4 or
    /// more nodes); checks that leadership returns to the highest priority after healing
    /// and that no non-voter votes or leads.
    #[arg(long, requires = "failover")]
    placement: bool,
    /// One write in five changes nothing (its rows already hold what it writes): it
    /// makes no log entry, and is acknowledged once the last entry it saw has the copies
    /// it asked for; a checker requires that entry to survive as a write's would.
    #[arg(long)]
    rewrites: bool,
}

pub fn run(args: SimArgs) -> Result<(), String> {
    if !(3..=7).contains(&args.nodes) {
        return Err(format!("--nodes {} is out of range: the simulator runs 3 to 7 nodes", args.nodes));
    }
    let options = Options {
        nodes: args.nodes,
        ack: args.ack.into(),
        faults: args.faults.into(),
        steps: args.steps,
        log_format: tern_core::LogFormat::from(args.log_format).name().to_string(),
        failover: args.failover,
        placement: args.placement,
        rewrites: args.rewrites,
    };
    if args.trace.is_some() && args.seeds != 1 {
        return Err("--trace needs --seeds 1".to_string());
    }
    let mutation_fits = match (args.topology, args.mutate) {
        (_, None) => true,
        (TopologyArg::SingleLeader, Some(_)) => false,
        (TopologyArg::MultiLeader, Some(mutation)) => mutation.regions().is_some(),
        (TopologyArg::Leaderless, Some(mutation)) => mutation.leaderless().is_some(),
    };
    if !mutation_fits {
        return Err(format!("--mutate {:?} does not apply to --topology {}", args.mutate, tern_core::Topology::from(args.topology).name()));
    }
    if args.topology == TopologyArg::Leaderless && !(1..=args.nodes).contains(&args.replicas) {
        return Err(format!("--replicas {} is out of range: 1 to --nodes ({})", args.replicas, args.nodes));
    }
    if args.mutate == Some(MutationArg::NaiveRehome) && !args.homes {
        return Err("--mutate naive-rehome needs --homes".to_string());
    }
    let regions = RegionOptions {
        regions: args.nodes,
        policy: args.policy.into(),
        steps: args.steps,
        mutation: args.mutate.and_then(MutationArg::regions),
        homes: args.homes,
    };
    let leaderless =
        LeaderlessOptions { nodes: args.nodes, replicas: args.replicas, steps: args.steps, mutation: args.mutate.and_then(MutationArg::leaderless) };
    let topology = args.topology;
    let run_one = |seed: u64, keep_trace: bool| match topology {
        TopologyArg::MultiLeader => run_regions_seed(&regions, seed, keep_trace),
        TopologyArg::Leaderless => run_leaderless_seed(&leaderless, seed, keep_trace),
        TopologyArg::SingleLeader => run_seed(&options, seed, keep_trace),
    };
    let replay = |seed: u64| match topology {
        TopologyArg::MultiLeader => regions.replay_command(seed),
        TopologyArg::Leaderless => leaderless.replay_command(seed),
        TopologyArg::SingleLeader => options.replay_command(seed),
    };
    let started = Instant::now();
    let next = AtomicU64::new(args.seed);
    let end = args.seed + args.seeds;
    let reports: Mutex<Vec<SeedReport>> = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |count| count.get()).min(args.seeds.max(1) as usize);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                // A panic in the core is a failed seed like any other: report it with
                // its replay command instead of losing which seed it was.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_one(seed, args.trace.is_some())));
                let report = run.unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                        .unwrap_or_else(|| "unknown panic".to_string());
                    SeedReport {
                        seed,
                        violations: vec![format!("panicked: {message}")],
                        lost_async: 0,
                        operations: 0,
                        destroyed_disks: 0,
                        replaced_nodes: 0,
                        leader_below_top_at_heal: false,
                        rewrites_acknowledged: 0,
                        trace: None,
                    }
                });
                reports.lock().expect("reports lock").push(report);
            });
        }
    });
    let mut reports = reports.into_inner().expect("reports lock");
    reports.sort_by_key(|report| report.seed);
    if let (Some(path), Some(trace)) = (&args.trace, reports.first().and_then(|report| report.trace.as_ref())) {
        std::fs::write(path, trace).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }

    let mut violating = 0;
    let mut seeds_with_loss = 0;
    let mut operations = 0;
    let (mut destroyed, mut replaced) = (0, 0);
    for report in &reports {
        operations += report.operations;
        destroyed += report.destroyed_disks;
        replaced += report.replaced_nodes;
        let loss_is_violation = !args.expect_loss;
        if report.lost_async > 0 {
            seeds_with_loss += 1;
        }
        let mut problems = report.violations.clone();
        if report.lost_async > 0 {
            let line = format!("{} acknowledged write(s) with fewer than a majority of copies lost with the leader", report.lost_async);
            if loss_is_violation {
                problems.push(line);
            } else {
                println!("seed {}: expected loss: {line}", report.seed);
            }
        }
        if !problems.is_empty() {
            violating += 1;
            println!("seed {} FAILED (replay: {}): {}", report.seed, replay(report.seed), problems.join("; "));
        }
    }
    let tally = format!("seeds: {}, passed: {}, violations: {violating}", reports.len(), reports.len() - violating);
    let seconds = started.elapsed().as_secs_f64();
    if topology == TopologyArg::Leaderless {
        let (nodes, replicas) = (leaderless.nodes, leaderless.replicas);
        println!(
            "{tally}  (leaderless, {nodes} nodes, {replicas} replicas per key, {operations} acknowledged writes and completed reads, {seconds:.1} s; \
             each seed ends by wiping a node and repairing it)"
        );
        return if violating > 0 { Err(format!("{violating} seed(s) violated a property")) } else { Ok(()) };
    }
    if topology == TopologyArg::MultiLeader {
        let (count, policy) = (regions.regions, regions.policy.name());
        println!("{tally}  (multi-leader, {count} regions, --policy {policy}, {operations} writes, {seconds:.1} s)");
        return if violating > 0 { Err(format!("{violating} seed(s) violated a property")) } else { Ok(()) };
    }
    let (nodes, ack, faults) = (options.nodes, options.ack.name(), options.faults.name());
    println!("{tally}  ({nodes} nodes, --ack {ack}, --faults {faults}, {operations} client operations, {seconds:.1} s)");
    if destroyed + replaced > 0 {
        println!("faults that wipe a disk: {destroyed} leader disks destroyed, {replaced} nodes removed, wiped and added back");
    }
    if options.placement {
        let moved_back = reports.iter().filter(|report| report.leader_below_top_at_heal).count();
        println!("placement: in {moved_back} seeds no voter of the highest priority led when the faults healed, and leadership had to move back to one");
    }
    if options.rewrites {
        let acknowledged: usize = reports.iter().map(|report| report.rewrites_acknowledged).sum();
        println!("rewrites: {acknowledged} writes that changed nothing were acknowledged, each on the last entry it saw");
    }
    if args.expect_loss {
        if seeds_with_loss == 0 {
            return Err(format!("--expect-loss: no seed lost an acknowledged write; the durability checker would be vacuous ({} seeds)", reports.len()));
        }
        println!("async honesty: {seeds_with_loss} of {} seeds lost acknowledged writes, as async permits", reports.len());
    }
    if violating > 0 {
        return Err(format!("{violating} seed(s) violated a property"));
    }
    Ok(())
}
