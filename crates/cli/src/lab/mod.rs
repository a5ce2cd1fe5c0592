//! `tern lab`: the primer's claims about replication as experiments measured on this
//! machine, each ending in a verdict, written up as a Markdown report with plots (SVG
//! and PNG).
//!
//! An experiment (`experiments.rs`) runs on the deterministic simulators, on tern's own
//! storage engine, or (catch-up) on real `tern server` processes, and returns a
//! [`Finding`]: the setup in words, a table, plots, and whether what it measured agrees
//! with its claim. A finding that contradicts its claim makes `tern lab` fail, so
//! `tern lab --quick` in the test suite guards every verdict.

mod experiments;
mod failover;
mod offline;
mod plot;
mod real;
mod scaling;

use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Experiments to run, by name (all of them when none is named; see --list).
    experiments: Vec<String>,
    /// Name every experiment and its claim, and run nothing.
    #[arg(long)]
    list: bool,
    /// Run each experiment small enough for a test suite (seconds, not minutes).
    #[arg(long)]
    quick: bool,
    /// Where the report (report.md) and its plots (*.svg, *.png) go.
    #[arg(long, default_value = "tern-lab")]
    out: PathBuf,
    /// First seed of the simulated runs (each run derives its own from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run each simulated experiment that has a real-process form again as real `tern
    /// server` processes on the emulated WAN, to check that the two agree.
    #[arg(long)]
    real: bool,
}

/// How big a run each experiment makes.
pub struct Scale {
    pub quick: bool,
    pub seed: u64,
}

impl Scale {
    /// `full` normally, `quick` with `--quick`.
    pub fn pick(&self, quick: usize, full: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// One claim of the primer, and how to test it.
pub struct Experiment {
    pub name: &'static str,
    /// The claim, in one sentence.
    pub claim: &'static str,
    pub run: fn(&Scale) -> Result<Finding, String>,
    /// The same claim measured on real processes (`--real`), for a simulated experiment.
    pub real: Option<fn(&Scale) -> Result<Finding, String>>,
}

/// What an experiment measured.
pub struct Finding {
    /// How it was measured, in a few sentences.
    pub setup: String,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// The first is `<name>.svg`, the next `<name>-2.svg` and so on.
    pub plots: Vec<plot::Plot>,
    /// Whether the measurement agrees with the claim, and the verdict in one line.
    pub holds: bool,
    pub verdict: String,
    /// Why the experiment could not measure on this machine (then `holds` and `verdict`
    /// say nothing, and the run does not fail).
    pub not_measured: Option<String>,
}

impl Finding {
    /// An experiment this machine cannot run, and why (said in the report).
    pub fn not_measured(setup: String, reason: String) -> Finding {
        Finding {
            setup,
            headers: vec!["result"],
            rows: vec![vec!["not measured".to_string()]],
            plots: Vec::new(),
            holds: true,
            verdict: String::new(),
            not_measured: Some(reason),
        }
    }

    fn verdict_word(&self) -> &'static str {
        match (&self.not_measured, self.holds) {
            (Some(_), _) => "Not measured:",
            (None, true) => "Holds:",
            (None, false) => "Contradicted:",
        }
    }

    fn verdict_text(&self) -> &str {
        self.not_measured.as_deref().unwrap_or(&self.verdict)
    }
}

pub fn run(args: LabArgs) -> Result<(), String> {
    let all = experiments::all();
    if args.list {
        for experiment in &all {
            println!("{:<22} {}", experiment.name, experiment.claim);
        }
        return Ok(());
    }
    let chosen: Vec<&Experiment> = if args.experiments.is_empty() {
        all.iter().collect()
    } else {
        args.experiments
            .iter()
            .map(|name| {
                all.iter().find(|experiment| experiment.name == name.as_str()).ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|experiment| experiment.name).collect();
                    format!("no experiment is named {name:?}; there are: {}", names.join(", "))
                })
            })
            .collect::<Result<_, _>>()?
    };
    std::fs::create_dir_all(&args.out).map_err(|error| format!("cannot create {}: {error}", args.out.display()))?;
    let scale = Scale { quick: args.quick, seed: args.seed };
    // What runs: each experiment, and with --real its real-process form right after it.
    let mut runs: Vec<(String, &Experiment, fn(&Scale) -> Result<Finding, String>)> = Vec::new();
    for experiment in &chosen {
        runs.push((experiment.name.to_string(), experiment, experiment.run));
        if let (true, Some(real)) = (args.real, experiment.real) {
            runs.push((format!("{}-real", experiment.name), experiment, real));
        }
    }
    let started = Instant::now();
    let mut report = String::new();
    let mut contradicted = Vec::new();
    for (number, (name, experiment, run)) in runs.iter().enumerate() {
        let left = match number {
            0 => String::new(),
            done => format!(", about {} s left", (started.elapsed() / done as u32 * (runs.len() - done) as u32).as_secs()),
        };
        println!("[{}/{}] {name}: {} ({} s so far{left})", number + 1, runs.len(), experiment.claim, started.elapsed().as_secs());
        let began = Instant::now();
        let finding = run(&scale).map_err(|error| format!("experiment {name} failed to run: {error}"))?;
        let plot_files: Vec<String> =
            (1..=finding.plots.len()).map(|number| if number == 1 { format!("{name}.svg") } else { format!("{name}-{number}.svg") }).collect();
        for (plot, file) in finding.plots.iter().zip(&plot_files) {
            plot::draw(plot, &args.out.join(file))?;
        }
        let said = match finding.verdict_word() {
            "Contradicted:" => "CONTRADICTED:".to_string(),
            word => word.to_lowercase(),
        };
        println!("        {said} {} ({:.1} s)", finding.verdict_text(), began.elapsed().as_secs_f64());
        if !finding.holds {
            contradicted.push(format!("{name}: {}", finding.verdict));
        }
        write_section(&mut report, name, experiment.claim, &finding, &plot_files);
    }
    let report = header(&args, &scale, runs.len(), started.elapsed()) + &report;
    let path = args.out.join("report.md");
    std::fs::write(&path, report).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    println!("report: {}", path.display());
    if contradicted.is_empty() {
        Ok(())
    } else {
        Err(format!("{} experiment(s) contradicted their claim:\n  {}", contradicted.len(), contradicted.join("\n  ")))
    }
}

fn header(args: &LabArgs, scale: &Scale, experiments: usize, took: Duration) -> String {
    let mut command = String::from("tern lab");
    if scale.quick {
        command.push_str(" --quick");
    }
    if scale.seed != 1 {
        let _ = write!(command, " --seed {}", scale.seed);
    }
    if args.real {
        command.push_str(" --real");
    }
    for name in &args.experiments {
        let _ = write!(command, " {name}");
    }
    format!(
        "# tern lab: the primer's claims, measured\n\n\
         Generated by `{command}` ({experiments} experiment(s), {} s). Every figure below comes from that run; \
         the simulated experiments are deterministic for a given seed, so the same command prints the same tables.\n\n",
        took.as_secs()
    )
}

fn write_section(report: &mut String, name: &str, claim: &str, finding: &Finding, plot_files: &[String]) {
    let _ = writeln!(report, "## {name}\n");
    let _ = writeln!(report, "**Claim.** {claim}\n");
    let _ = writeln!(report, "**Setup.** {}\n", finding.setup);
    let _ = writeln!(report, "| {} |", finding.headers.join(" | "));
    let _ = writeln!(report, "|{}", "---|".repeat(finding.headers.len()));
    for row in &finding.rows {
        let _ = writeln!(report, "| {} |", row.join(" | "));
    }
    let _ = writeln!(report);
    for (plot, file) in finding.plots.iter().zip(plot_files) {
        let png = file.trim_end_matches(".svg").to_string() + ".png";
        let _ = writeln!(report, "![{}]({file})\n\n([PNG]({png}))\n", plot.title());
    }
    let _ = writeln!(report, "**Verdict.** {} {}\n", finding.verdict_word(), finding.verdict_text());
}
