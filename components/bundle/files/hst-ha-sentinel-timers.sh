#!/bin/bash
# hst-ha: Sentinel's ping period. Runs after every Sentinel start (Sentinel does not keep its timers
# in sentinel.conf). Same on every node; the node's values: ../etc/node.env.
set -uo pipefail
# shellcheck source=/dev/null
source "$(dirname "$(readlink -f "$0")")/../etc/node.env" || exit 1

log() { echo "hst-ha-sentinel-timers $NODE_NAME: $*" >&2; }
# SENTINEL DEBUG is the operator's (the default Sentinel user only reads).
PASSWORD="$("$(dirname "$(readlink -f "$0")")/hst-ha-secret" operator)" || { log "could not read the operator password"; exit 1; }
export REDISCLI_AUTH="$PASSWORD"
unset PASSWORD
answer=""
for _ in $(seq 50); do
  answer="$(timeout 2 redis-cli --no-auth-warning --raw ${TLS_CA_FILE:+--tls --cacert "$TLS_CA_FILE"} --user "$OPERATOR_USER" -h "$SELF" -p "$SENTINEL_PORT" SENTINEL DEBUG ping-period "$SENTINEL_PING_PERIOD_MS" 2>&1)"
  if [[ "$answer" == OK ]]; then
    log "ping period $SENTINEL_PING_PERIOD_MS ms"
    exit 0
  fi
  sleep 0.1
done
log "Sentinel did not take ping-period $SENTINEL_PING_PERIOD_MS (last answer: $answer); it pings every 1 s"
exit 1
