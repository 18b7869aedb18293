#!/usr/bin/env bash
# Run flowerbed with `flwr run .` on a private local simulation SuperLink, then stop it.
#
#   scripts/flwr-local.sh                                    # the default experiment (DMBA)
#   scripts/flwr-local.sh --run-config experiments/tiny.toml
#   scripts/flwr-local.sh --run-config "num-server-rounds=5 partition.alpha=0.1"
#
# A run-config file path is read relative to the app directory (this script's parent), as
# `flwr run .` reads it there; absolute paths work from anywhere.
#
# Why not plain `flwr run .`: its auto-started SuperLink syncs the app's dependencies
# with uv into a fresh environment (several GB: a CUDA torch) and stays running after
# the run. This script starts the SuperLink with runtime dependency installation
# disabled (the app runs in this Python environment), keeps Flower's state in a
# project-local FLWR_HOME, sizes the federation from the run config's `num-clients`,
# streams the logs, fails when the run fails, and leaves no process behind.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FLWR_HOME="${FLWR_HOME:-$ROOT/.flwr}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT="${FLWR_LOCAL_SUPERLINK_HTTP_API_PORT:-39091}"
PORT="$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"
PYTHON="${PYTHON:-python}"
# shellcheck source=lib/flower-processes.sh
. "$ROOT/scripts/lib/flower-processes.sh"

# Without a run config, run the default experiment: DMBA (experiments/dmba.toml).
case " $* " in
  *" --run-config"*|*" -c "*) ;;
  *) set -- "$@" --run-config "$ROOT/experiments/dmba.toml" ;;
esac

# The app's directory: `flwr run .` reads run-config files relative to it and the app's
# pyproject.toml defaults (e.g. `plugins`); the ServerApp and ClientApps inherit it.
cd "$ROOT"
# Validate the run config first (bad input fails here, naming the key); the federation
# needs as many simulated nodes as the run config has clients.
RUN_SHAPE="$("$PYTHON" -m flowerbed.cli check-flwr-args -- "$@")"  # exits here on bad input
read -r NUM_CLIENTS CLIENT_CPUS CLIENT_GPUS RAY_CLUSTER <<<"$RUN_SHAPE"
FEDERATION_CONFIG="num-supernodes=$NUM_CLIENTS client-resources-num-cpus=$CLIENT_CPUS client-resources-num-gpus=$CLIENT_GPUS"
# backend.ray-address: Flower's simulation attaches to a running Ray cluster through Ray's own
# discovery (RAY_ADDRESS), which the SuperLink passes on to the simulation process; "local"
# (no address) starts a private Ray even where `ray start` left a cluster on this host.
if [ "$RAY_CLUSTER" = - ]; then export RAY_ADDRESS=local; else export RAY_ADDRESS="$RAY_CLUSTER"; fi

mkdir -p "$FLWR_HOME/local-superlink"
[ -f "$FLWR_HOME/config.toml" ] || printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n' >"$FLWR_HOME/config.toml"
healthy() { "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" >/dev/null 2>&1; }
if healthy; then
  echo "A SuperLink already listens on :$PORT (it may install dependencies with uv); stop it or set FLWR_LOCAL_SUPERLINK_HTTP_API_PORT" >&2
  exit 2
fi
setsid flower-superlink --insecure --simulation --isolation subprocess \
  --disable-runtime-dependency-installation --host 127.0.0.1 --port "$PORT" \
  --log-file "$FLWR_HOME/local-superlink/superlink.log" >"$FLWR_HOME/local-superlink/superlink.out" 2>&1 &
SUPERLINK_PID=$! RUN_PID="" OUTPUT="$(mktemp)"

cleanup() {  # the SuperExec (its own session) holds flwr-simulation and every Ray process
  [ -n "$RUN_PID" ] && stop_pid "$RUN_PID"
  local superexec
  superexec="$(pgrep -P "$SUPERLINK_PID" | head -n1 || true)"
  stop_pid "$SUPERLINK_PID"
  if [ -n "$superexec" ]; then
    sleep 1
    pkill -TERM -s "$superexec" 2>/dev/null && sleep 2
    pkill -KILL -s "$superexec" 2>/dev/null || true
  fi
  rm -f "$OUTPUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 75); do
  healthy && break
  if ! kill -0 "$SUPERLINK_PID" 2>/dev/null; then  # e.g. port $PORT taken by something that is not a SuperLink
    echo "flower-superlink died on port $PORT; its last output ($FLWR_HOME/local-superlink/superlink.out):" >&2
    tail -n 5 "$FLWR_HOME/local-superlink/superlink.out" >&2
    echo "its log: $FLWR_HOME/local-superlink/superlink.log (another port: FLWR_LOCAL_SUPERLINK_HTTP_API_PORT)" >&2
    exit 1
  fi
  sleep 0.2
done
flwr run . local --stream --federation-config "$FEDERATION_CONFIG" "$@" > >(tee "$OUTPUT") 2>&1 &
RUN_PID=$!
wait "$RUN_PID"
RUN_PID=""
STATUS="$(run_status local "$OUTPUT")"
echo "flwr run: $STATUS"
[ "$STATUS" = finished:completed ]  # `flwr run --stream` exits 0 even when the ServerApp failed
