# Shell helpers shared by scripts/flwr-local.sh and scripts/deploy-local.sh (sourced, not run).

# Stop one process: TERM, up to 10 s, then KILL.
stop_pid() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null || true
}

# Stop every process of a session (a process started with setsid and all it started).
stop_session() {
  pkill -TERM -s "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do pgrep -s "$1" >/dev/null || return 0; sleep 0.2; done
  pkill -KILL -s "$1" 2>/dev/null || true
}

# The status Flower recorded for the run `flwr run` started (its output is in file $2) on
# connection $1; `flwr run --stream` exits 0 even when the ServerApp failed.
run_status() {
  local run_id
  run_id="$(sed -n 's/.*Successfully started run \([0-9]*\).*/\1/p' "$2")"
  [ -n "$run_id" ] || { echo "flwr run did not start a run" >&2; return 1; }
  flwr list "$1" --run-id "$run_id" --format json | "${PYTHON:-python}" -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])'
}
