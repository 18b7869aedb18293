#!/usr/bin/env bash
# Make what a secured flowerbed federation needs (Flower 1.42), where missing, in a folder:
#   ca.crt, ca.key               the federation's own certificate authority (keep ca.key private)
#   server.pem, server.key       the SuperLink's TLS certificate, signed by the CA, valid for the
#                                addresses SuperNodes dial (127.0.0.1 and localhost, plus HOSTS)
#   supernode-<k>, .pub          one ECDSA P-384 key pair per SuperNode (authentication)
#
#   scripts/make-keys.sh KEYS_DIR NUM_SUPERNODES [HOST ...]
#   scripts/make-keys.sh keys 3 superlink.lab.example.org 10.0.0.5
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
KEYS="$1" COUNT="$2"
shift 2
mkdir -p "$KEYS"
if [ ! -f "$KEYS/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=flowerbed-ca" \
    -keyout "$KEYS/ca.key" -out "$KEYS/ca.crt" 2>/dev/null
fi
if [ ! -f "$KEYS/server.pem" ]; then  # its subjectAltName must match the address SuperNodes dial
  names="IP:127.0.0.1,DNS:localhost"
  for host in "$@"; do
    if [[ "$host" =~ ^[0-9.]+$ ]]; then names="$names,IP:$host"; else names="$names,DNS:$host"; fi
  done
  openssl req -newkey rsa:2048 -nodes -subj "/CN=${1:-127.0.0.1}" -keyout "$KEYS/server.key" -out "$KEYS/server.csr" 2>/dev/null
  printf 'subjectAltName=%s\n' "$names" >"$KEYS/server.ext"
  openssl x509 -req -days 365 -in "$KEYS/server.csr" -CA "$KEYS/ca.crt" -CAkey "$KEYS/ca.key" -CAcreateserial \
    -extfile "$KEYS/server.ext" -out "$KEYS/server.pem" 2>/dev/null
fi
for k in $(seq 0 $((COUNT - 1))); do
  [ -f "$KEYS/supernode-$k" ] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "flowerbed supernode $k" -f "$KEYS/supernode-$k"
done
