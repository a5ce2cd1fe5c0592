#!/bin/sh
# Runs a wider part of SQLite's sqllogictest corpus than the vendored scripts: select3-5,
# the first 10-row file of each index/* directory and three files of each random/*
# directory (179,690 records per format), in every log format, through tern's HTTP API
# on 3-node clusters, followers compared after each file.
#
#   scripts/sqllogictest-wide.sh /path/to/sqllogictest        # a checkout with test/ in it
#
# e.g. git clone https://github.com/gregrahn/sqllogictest (a mirror of sqlite.org/sqllogictest).
set -eu
checkout=${1:?usage: $0 /path/to/sqllogictest-checkout}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for file in select3 select4 select5; do
    cp "$checkout/test/$file.test" "$work/"
done
for directory in commute delete orderby orderby_nosort random; do
    cp "$checkout/test/index/$directory/10/slt_good_0.test" "$work/index_${directory}_10_slt_good_0.test"
done
for directory in aggregates expr groupby select; do
    for number in 0 1 2; do
        cp "$checkout/test/random/$directory/slt_good_$number.test" "$work/random_${directory}_slt_good_$number.test"
    done
done
echo "running $(ls "$work" | wc -l) files from $checkout"
# The allowed-failure counts in the test cover only the vendored files: any failure here
# fails the run, and the table printed says where.
TERN_SLT_DIR="$work" cargo test --release -p tern --test sqllogictest corpus -- --nocapture
