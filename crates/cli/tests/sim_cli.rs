//! `tern sim` as a user runs it: summary line, exit codes, byte-identical traces.

use std::process::Command;

fn tern_sim(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern")).arg("sim").args(args).output().expect("tern runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
}

#[test]
fn passing_seeds_end_with_the_summary_line_and_exit_zero() {
    let (ok, output) = tern_sim(&["--seeds", "30", "--ack", "sync", "--faults", "all"]);
    assert!(ok, "{output}");
    assert!(output.contains("seeds: 30, passed: 30, violations: 0"), "{output}");
}

#[test]
fn async_losses_fail_plainly_unless_expected() {
    let (ok, output) = tern_sim(&["--seeds", "200", "--ack", "async", "--faults", "all"]);
    assert!(!ok, "async losses must not pass silently: {output}");
    assert!(output.contains("lost with the leader"), "{output}");
    assert!(output.contains("replay: tern sim --seed"), "{output}");
    let (ok, output) = tern_sim(&["--seeds", "200", "--ack", "async", "--faults", "all", "--expect-loss"]);
    assert!(ok, "{output}");
    assert!(output.contains("async honesty:"), "{output}");
}

#[test]
fn the_same_seed_writes_byte_identical_traces() {
    let directory = std::env::temp_dir().join(format!("tern-sim-trace-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let (first, second) = (directory.join("a.trace"), directory.join("b.trace"));
    for path in [&first, &second] {
        let (ok, output) = tern_sim(&["--seed", "7", "--seeds", "1", "--trace", path.to_str().unwrap()]);
        assert!(ok, "{output}");
    }
    let (first, second) = (std::fs::read(first).unwrap(), std::fs::read(second).unwrap());
    assert!(first.len() > 10_000);
    assert!(first == second, "two runs of seed 7 wrote different traces");
    let _ = std::fs::remove_dir_all(directory);
}

#[test]
fn bad_flags_are_refused_clearly() {
    let (ok, output) = tern_sim(&["--faults", "meteor"]);
    assert!(!ok);
    assert!(output.contains("invalid value 'meteor'") && output.contains("none, crash, partition, all"), "the refusal names the allowed values: {output}");
    let (ok, output) = tern_sim(&["--nodes", "9"]);
    assert!(!ok);
    assert!(output.contains("3 to 7"), "{output}");
}
