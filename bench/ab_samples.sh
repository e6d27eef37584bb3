#!/usr/bin/env bash
# A/B two builds of a program by perf samples per function, for changes smaller than
# the host's drift between runs (5-15% on the project's VMs): runs the two binaries
# alternately, pinned to CPU 0 under `perf record`, N pairs, and sums each function's
# samples per binary. A change is read from the functions it touched against the ones
# it did not (bench/README.md, "The rest of the step").
#   bench/ab_samples.sh N OLD NEW [ARGS...]
#   e.g. cp build/bench/bench/bench_ours /tmp/old; (change, rebuild)
#        bench/ab_samples.sh 4 /tmp/old build/bench/bench/bench_ours --mode train --threads 1 --steps 300
# Prints: OLD samples, NEW samples, NEW/OLD, function; the 30 largest (by both), then the totals.
set -euo pipefail
n=$1 old=$2 new=$3
shift 3
out=$(mktemp) data=$(mktemp)
trap 'rm -f "$out" "$data"' EXIT
for _ in $(seq "$n"); do
  for b in "$old" "$new"; do
    taskset -c 0 perf record -q -o "$data" -F 4000 "$b" "$@" > /dev/null 2>&1
    tag=$([ "$b" = "$old" ] && echo old || echo new)
    perf report -i "$data" --no-children --sort symbol -F sample,symbol 2> /dev/null | grep -v '^#' | grep '\[' |
      sed 's/  */ /g' | awk -v t="$tag" '{ s = $1; $1 = ""; $2 = ""; print t "\t" s "\t" substr($0, 3, 90) }' >> "$out"
  done
done
awk -F'\t' '{ v[$3, $1] += $2; f[$3] = 1 }
  END { for (k in f) printf "%d %9d %9d %6.3f %s\n", v[k, "old"] + v[k, "new"], v[k, "old"], v[k, "new"],
                             v[k, "old"] ? v[k, "new"] / v[k, "old"] : 0, k }' \
  "$out" | sort -k1,1 -n -r | cut -d' ' -f2- | awk 'NR <= 30'
awk -F'\t' '{ t[$1] += $2 } END { printf "%9d %9d %6.3f TOTAL\n", t["old"], t["new"], t["new"] / t["old"] }' "$out"
