#!/usr/bin/env bash
# Reads a report of libserial_time.so (bench/serial_time.cpp) and prints the serial time
# per step and, per call site, the gap before its regions and the time inside them:
#   bench/serial_time.sh REPORT BINARY STEPS
# BINARY: the program measured, unstripped (for addr2line; a stripped copy's build
# directory has the same offsets). STEPS: the steps it ran (bench_ours: --warmup, 5 by
# default, plus --blocks times --steps).
set -euo pipefail
report=$1 binary=$2 steps=$3
read -r _ _ regions _ span _ serial _ share < <(head -1 "$report")
awk -v r="$regions" -v sp="$span" -v se="$serial" -v sh="$share" -v n="$steps" 'BEGIN {
  printf "%d steps: %.1f regions, %.3f ms a step, of which %.3f ms (%.2f%%) between regions\n",
         n, r / n, 1e3 * sp / n, 1e3 * se / n, 100 * sh }'
printf '%12s %12s %7s  %s\n' "gap us/step" "in us/step" "calls" "site (the region that ends the gap)"
tail -n +2 "$report" | sort -t' ' -k7 -g -r | while read -r _ module off _ calls _ gap _ inside; do
  file=$binary  # the measured program, or a library it loaded (found by its path)
  if [ "$(basename "$module")" != "$(basename "$binary")" ] && [ -e "$module" ]; then file=$module; fi
  name=$(addr2line -f -C -e "$file" "$off" 2>/dev/null | head -1 | cut -c1-90)
  awk -v g="$gap" -v i="$inside" -v c="$calls" -v n="$steps" -v s="${name:-$module+$off}" \
    'BEGIN { printf "%12.1f %12.1f %7.1f  %s\n", 1e6 * g / n, 1e6 * i / n, c / n, s }'
done
