#!/usr/bin/env bash
# Run an experiment on Flower's deployment engine on this host: a SuperLink with TLS and
# SuperNode authentication, and one flower-supernode process per client, each bound to its
# data partition through its node config. Then stop everything it started.
#
#   scripts/deploy-local.sh experiments/tiny.toml                 # secured (the default)
#   scripts/deploy-local.sh --keys ~/fl-keys experiments/tiny.toml  # certificates and keys kept there
#   scripts/deploy-local.sh --insecure experiments/tiny.toml      # plain gRPC, no authentication
#
# What it does, as docs/deployment.md does it across hosts (Flower 1.42):
#   1. validates the experiment (bad input fails here, naming the key); N = its num-clients;
#   2. makes, where missing, a CA, a server certificate for 127.0.0.1/localhost and one ECDSA
#      key pair per SuperNode in the keys folder (scripts/make-keys.sh; default .flwr-deploy/keys);
#   3. starts flower-superlink with --ssl-* and --enable-supernode-auth on 127.0.0.1:PORT;
#   4. registers every SuperNode's public key (`flwr supernode register`);
#   5. starts N flower-supernode processes, node config "partition-id=k num-partitions=N";
#   6. `flwr run . deploy --stream --run-config <experiment>`; fails when the run fails.
# Options: --port P (SuperLink, default 39400; SuperNodes use P+10+k for their local API).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
# shellcheck source=lib/flower-processes.sh
. "$ROOT/scripts/lib/flower-processes.sh"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

INSECURE=0 KEYS="$ROOT/.flwr-deploy/keys" PORT=39400 EXPERIMENT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --insecure) INSECURE=1 ;;
    --keys) KEYS="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "deploy-local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) EXPERIMENT="$1" ;;
  esac
  shift
done
[ -n "$EXPERIMENT" ] || { echo "deploy-local.sh: name an experiment file, e.g. experiments/tiny.toml" >&2; exit 2; }
EXPERIMENT="$(cd "$(dirname "$EXPERIMENT")" && pwd)/$(basename "$EXPERIMENT")"
cd "$ROOT"
RUN_SHAPE="$("$PYTHON" -m flowerbed.cli check-flwr-args -- --run-config "$EXPERIMENT")"  # exits here on bad input
read -r NUM_CLIENTS _ <<<"$RUN_SHAPE"

# A private Flower home (connections, the SuperLink's database, logs), new for every call.
export FLWR_HOME="${FLWR_HOME:-$(mktemp -d "${TMPDIR:-/tmp}/flowerbed-deploy.XXXXXX")}"
LOGS="$FLWR_HOME/logs"
mkdir -p "$LOGS" "$KEYS"

if [ "$INSECURE" = 1 ]; then
  echo "deploy-local.sh: --insecure: no TLS, no SuperNode authentication" >&2
  LINK_SECURITY=(--insecure) NODE_SECURITY=(--insecure) SCHEME=http
  printf '[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:%s"\ninsecure = true\n' "$PORT" >"$FLWR_HOME/config.toml"
else
  "$ROOT/scripts/make-keys.sh" "$KEYS" "$NUM_CLIENTS"  # CA, SuperLink certificate, SuperNode key pairs
  LINK_SECURITY=(--ssl-ca-certfile "$KEYS/ca.crt" --ssl-certfile "$KEYS/server.pem" --ssl-keyfile "$KEYS/server.key" --enable-supernode-auth)
  NODE_SECURITY=(--root-certificates "$KEYS/ca.crt") SCHEME=https
  printf '[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:%s"\nroot-certificates = "%s"\ninsecure = false\n' \
    "$PORT" "$KEYS/ca.crt" >"$FLWR_HOME/config.toml"
fi

SESSIONS=() OUTPUT="$LOGS/flwr-run.out"
cleanup() {  # each process was started in its own session, which holds what it started
  for session in "${SESSIONS[@]}"; do stop_session "$session"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

setsid flower-superlink "${LINK_SECURITY[@]}" --host 127.0.0.1 --port "$PORT" --database "$FLWR_HOME/state.db" \
  --disable-runtime-dependency-installation >"$LOGS/superlink.log" 2>&1 &
SESSIONS+=("$!")
healthy() {
  "$PYTHON" - "$SCHEME://127.0.0.1:$PORT/health" "$KEYS/ca.crt" <<'PY' >/dev/null 2>&1
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[1].startswith("https") else None
urllib.request.urlopen(sys.argv[1], timeout=1, context=context)
PY
}
for _ in $(seq 100); do
  healthy && break
  if ! kill -0 "${SESSIONS[0]}" 2>/dev/null; then
    echo "flower-superlink died on port $PORT; its last output ($LOGS/superlink.log):" >&2
    tail -n 5 "$LOGS/superlink.log" >&2
    exit 1
  fi
  sleep 0.2
done
healthy || { echo "flower-superlink did not answer on port $PORT within 20 s ($LOGS/superlink.log)" >&2; exit 1; }

for k in $(seq 0 $((NUM_CLIENTS - 1))); do
  NODE_AUTH=()
  if [ "$INSECURE" = 0 ]; then
    flwr supernode register "$KEYS/supernode-$k.pub" deploy >"$LOGS/register-$k.log" 2>&1 \
      || { echo "registering SuperNode $k failed:" >&2; tail -n 3 "$LOGS/register-$k.log" >&2; exit 1; }
    NODE_AUTH=(--auth-supernode-private-key "$KEYS/supernode-$k")
  fi
  setsid flower-supernode "${NODE_SECURITY[@]}" "${NODE_AUTH[@]}" --superlink "127.0.0.1:$PORT" \
    --node-config "partition-id=$k num-partitions=$NUM_CLIENTS" --port $((PORT + 10 + k)) >"$LOGS/supernode-$k.log" 2>&1 &
  SESSIONS+=("$!")
done
echo "deploy-local.sh: SuperLink on 127.0.0.1:$PORT, $NUM_CLIENTS SuperNodes; logs in $LOGS"

flwr run . deploy --stream --run-config "$EXPERIMENT" > >(tee "$OUTPUT") 2>&1
STATUS="$(run_status deploy "$OUTPUT")"
echo "flwr run: $STATUS"
[ "$STATUS" = finished:completed ]
