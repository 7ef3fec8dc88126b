#!/bin/bash
# hst-ha boot script: runs at every boot, renders the final configuration only once (Redis and
# Sentinel own their files after that). Same on every node; the node's values: ../etc/node.env.
set -euo pipefail
umask 077
shopt -u patsub_replacement 2>/dev/null || true

# shellcheck source=/dev/null
source "$(dirname "$(readlink -f "$0")")/../etc/node.env"
read -r -a PEERS <<< "$PEERS"

log() { echo "hst-ha-boot $NODE_NAME: $*" >&2; }

mkdir -p "$DATA" "$LOG" "$RUN"
if [[ -e "$REDIS_CONF" && -e "$SENTINEL_CONF" && -e "$HAPROXY_CFG" ]]; then
  log "configuration was rendered at first boot; Redis and Sentinel own it now, leaving it as it is"
  exit 0
fi

PASSWORD="$(bash -c "$PASSWORD_COMMAND")" || { log "could not fetch the Redis password (check the instance role and the secret)"; exit 1; }
password_rule="^[${PASSWORD_ALPHABET}]{16,}\$"
if [[ ! "$PASSWORD" =~ $password_rule ]]; then
  log "the Redis password must be at least 16 characters of [$PASSWORD_ALPHABET]; regenerate the secret"
  exit 1
fi
# redis-cli reads the password from the environment, so it never shows on a command line.
export REDISCLI_AUTH="$PASSWORD"

ask() { timeout 3 redis-cli --no-auth-warning --raw -h "$1" -p "$2" "${@:3}" 2>/dev/null; }

# The primary most surviving Sentinels name, or nothing when no Sentinel answers (a cold start).
sentinels_primary() {
  local peer answer
  for peer in "${PEERS[@]}"; do
    answer="$(ask "$peer" "$SENTINEL_PORT" SENTINEL get-master-addr-by-name "$MASTER_NAME" | head -n 1)" || continue
    [[ -n "$answer" ]] && echo "$answer"
  done | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }'
}

# True when a peer replica holds replicated data, i.e. the cluster ran before this node was (re)built.
cluster_has_data() {
  local peer offset
  for peer in "${PEERS[@]}"; do
    offset="$(ask "$peer" "$REDIS_PORT" INFO replication | tr -d '\r' | awk -F: '$1 == "master_repl_offset" { print $2 }')" || continue
    [[ "${offset:-0}" -gt 0 ]] && return 0
  done
  return 1
}

PRIMARY="$(sentinels_primary)"
if [[ -z "$PRIMARY" ]]; then
  PRIMARY="$INITIAL_PRIMARY"
  log "no Sentinel answers: cold start with the initial topology (primary $PRIMARY)"
elif [[ "$PRIMARY" == "$SELF" ]] && cluster_has_data; then
  # This node was the primary and comes back empty: starting it as primary would make the
  # replicas resynchronise from an empty dataset. Wait for the Sentinels to promote a replica.
  log "Sentinels still name this rebuilt node as primary; waiting up to ${FAILOVER_WAIT_S}s for their failover"
  for _ in $(seq "$FAILOVER_WAIT_S"); do
    sleep 1
    PRIMARY="$(sentinels_primary)"
    [[ -n "$PRIMARY" && "$PRIMARY" != "$SELF" ]] && break
  done
  if [[ "$PRIMARY" == "$SELF" || -z "$PRIMARY" ]]; then
    log "no failover happened; refusing to start an empty primary over replicas that hold data"
    exit 1
  fi
fi
log "current primary: $PRIMARY"

render() {
  local template="$1" target="$2" content
  content="$(<"$template")"
  printf '%s\n' "${content//"$PASSWORD_PLACEHOLDER"/"$PASSWORD"}" > "$target.tmp"
  mv "$target.tmp" "$target"
}
render "$REDIS_CONF_TEMPLATE" "$REDIS_CONF"
render "$SENTINEL_CONF_TEMPLATE" "$SENTINEL_CONF"
render "$HAPROXY_CFG_TEMPLATE" "$HAPROXY_CFG"

if [[ "$PRIMARY" != "$INITIAL_PRIMARY" ]]; then
  # The cluster has failed over since the bundle was rendered: follow the current primary and
  # let Sentinel relearn the replicas (the seeded known-replica lines describe the old topology).
  sed -i -e '/^replicaof /d' "$REDIS_CONF"
  [[ "$PRIMARY" != "$SELF" ]] && echo "replicaof $PRIMARY $REDIS_PORT" >> "$REDIS_CONF"
  sed -i -e "s/^sentinel monitor $MASTER_NAME .* $REDIS_PORT /sentinel monitor $MASTER_NAME $PRIMARY $REDIS_PORT /" \
         -e '/^sentinel known-replica /d' "$SENTINEL_CONF"
fi
# The start gate finds this: the file was rendered from the Sentinels' view seconds ago, so when no
# Sentinel answers (the whole cluster's first boot) Redis starts from it without waiting for one.
touch "$DATA/.first-start"
log "configuration rendered"
