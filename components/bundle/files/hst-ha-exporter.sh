#!/bin/bash
# hst-ha-exporter redis|sentinel: redis_exporter for this node's Redis or its Sentinel (its own
# target), listening on the node's private address only. Same on every node; values: ../etc/node.env.
set -euo pipefail
here="$(dirname "$(readlink -f "$0")")"
# shellcheck source=/dev/null
source "$here/../etc/node.env"
case "${1:-}" in
  redis) port="$REDIS_PORT" listen="$REDIS_EXPORTER_PORT" user="${MONITOR_REDIS_USER:-}" ;;
  # Sentinel's monitoring user is its `default` one: the password alone.
  sentinel) port="$SENTINEL_PORT" listen="$SENTINEL_EXPORTER_PORT" user="" ;;
  *) echo "usage: hst-ha-exporter redis|sentinel" >&2; exit 2 ;;
esac
# The exporter reads its credentials from the environment, so they never show on a command line.
REDIS_PASSWORD="$("$here/hst-ha-secret" monitor)"
export REDIS_PASSWORD REDIS_USER="$user"
exec prometheus-redis-exporter -web.listen-address "$SELF:$listen" -redis.addr "redis${TLS_CA_FILE:+s}://$SELF:$port" \
  ${TLS_CA_FILE:+-tls-ca-cert-file "$TLS_CA_FILE"} -set-client-name=false -redis-only-metrics
