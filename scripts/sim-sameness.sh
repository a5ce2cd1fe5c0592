#!/usr/bin/env bash
# Checks that a change leaves the simulator's behaviour exactly as it was: full event
# traces of 15 seeds (3, 17, 42 under five configurations) byte for byte, and the
# verdict lines of 1,000 seeds per configuration (timings ignored).
#
#   scripts/sim-sameness.sh baseline DIR   # with the binary of the code before the change
#   scripts/sim-sameness.sh compare DIR    # with the binary of the code after it
#
# Uses target/release/tern (build it first: cargo build --release).
set -euo pipefail
mode=${1:?usage: $0 baseline|compare DIR}
dir=${2:?usage: $0 baseline|compare DIR}
tern="$(cd "$(dirname "$0")/.." && pwd)/target/release/tern"
configs=("--failover" "--failover --ack sync" "--failover --nodes 5" "" "--ack async --failover")
out="$dir/$mode"
rm -rf "$out" && mkdir -p "$out"
for config in "${configs[@]}"; do
    name=$(echo "x$config" | tr ' -' '__')
    # A seed that violates a property is part of the behaviour compared (async, for one,
    # loses acknowledged writes by design), so exit codes are not failures here.
    # shellcheck disable=SC2086
    { "$tern" sim $config --seeds 1000 2>&1 || true; } | sed 's/, [0-9.]* s)/)/' > "$out/summary$name.txt"
    for seed in 3 17 42; do
        # shellcheck disable=SC2086
        "$tern" sim $config --seed "$seed" --seeds 1 --trace "$out/trace$name-$seed.txt" > /dev/null 2>&1 || true
    done
done
if [ "$mode" = compare ]; then
    different=0
    for file in "$dir/baseline"/*.txt; do
        cmp -s "$file" "$out/$(basename "$file")" || { echo "DIFFERENT: $(basename "$file")"; different=1; }
    done
    [ "$different" = 0 ] && echo "same: 15 traces byte-identical, 5 x 1000 verdicts identical"
    exit "$different"
fi
echo "baseline written to $out"
