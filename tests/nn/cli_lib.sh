# Sourced by the command-line tests in tests/nn (train_cli_test.sh, resnet_cli_test.sh,
# train_weights_test.sh), not run: a scratch directory $tmp (removed on exit) and the
# helpers below. The sourcing script sets `bin`, the program under test, and may set
# `run_flags`, an array of flags every run passes first.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

run() {  # run <expected exit code> args...; output in $tmp/out
  local want=$1
  shift
  # A hang is a failure too: SIGKILL after 10 minutes (exit code 137).
  timeout -s KILL 600 "$bin" ${run_flags+"${run_flags[@]}"} "$@" >"$tmp/out" 2>&1
  local got=$?
  cat "$tmp/out"
  [ "$got" -gt 128 ] && fail "killed by signal $((got - 128)) for: $*"
  [ "$got" -eq "$want" ] || fail "exit code $got, expected $want for: $*"
}

says() {  # says <text>...: the last run's output contains every text
  local t
  for t in "$@"; do grep -qF -- "$t" "$tmp/out" || fail "the message does not say \"$t\""; done
}
