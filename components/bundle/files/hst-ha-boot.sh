#!/bin/bash
# hst-ha boot script (hst-ha-prepare.service, a oneshot every daemon requires): runs at every boot
# until it succeeds, renders the final configuration only once (Redis and Sentinel own their files
# after that). Same on every node; the node's values: ../etc/node.env.
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

# With tlsEnabled every Redis and Sentinel port speaks TLS only: the certificates first, the
# questions to the peers below need the CA.
if [[ -n "$TLS_COMMAND" ]]; then
  "$(dirname "$(readlink -f "$0")")/hst-ha-secret" --tls || { log "could not write the TLS certificates"; exit 1; }
fi

read -r -a ROLES <<< "$SECRET_ROLES"
# Every role's password, in the order of $SECRET_ROLES; hst-ha-secret says what was wrong.
secrets="$("$(dirname "$(readlink -f "$0")")/hst-ha-secret" "${ROLES[@]}")" || { log "could not read the Redis users' secret"; exit 1; }
mapfile -t PASSWORDS <<< "$secrets"
unset secrets
if (( ${#PASSWORDS[@]} != ${#ROLES[@]} )); then
  log "the Redis users' secret gave ${#PASSWORDS[@]} passwords for ${#ROLES[@]} roles"
  exit 1
fi
for i in "${!ROLES[@]}"; do
  if [[ "${ROLES[$i]}" == monitor ]]; then MONITOR_PASSWORD="${PASSWORDS[$i]}"; fi
done
# The questions below are read-only: the monitoring user. redis-cli reads its password from the
# environment, so it never shows on a command line.
export REDISCLI_AUTH="$MONITOR_PASSWORD"
unset MONITOR_PASSWORD

ask() { timeout 3 redis-cli --no-auth-warning --raw ${TLS_CA_FILE:+--tls --cacert "$TLS_CA_FILE"} -h "$1" -p "$2" "${@:3}" 2>/dev/null; }

# An IPv4 address, nothing else: redis-cli --raw prints error replies (NOAUTH, WRONGPASS, NOPERM,
# -IDONTKNOW) on stdout like answers, and none of them may become a `replicaof` line.
ADDRESS_RULE='^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$'

# The primary most surviving Sentinels name, or nothing when no Sentinel answers (a cold start).
# A Sentinel that answers anything but an address is logged and not counted; if Sentinels answer
# and none names an address, the cluster runs but cannot be read: that is an error, not a cold start.
sentinels_primary() {
  local peer answer named=() unreadable=0
  for peer in "${PEERS[@]}"; do
    answer="$(ask "$peer" "$SENTINEL_PORT" SENTINEL get-master-addr-by-name "$MASTER_NAME" | head -n 1)" || answer=""
    if [[ "$answer" =~ $ADDRESS_RULE ]]; then
      named+=("$answer")
    elif [[ -n "$answer" ]]; then
      log "Sentinel $peer:$SENTINEL_PORT answered '${answer:0:80}', not an address; not counted"
      unreadable=$((unreadable + 1))
    fi
  done
  if (( ${#named[@]} == 0 )); then
    (( unreadable == 0 )) || return 1
    return 0
  fi
  printf '%s\n' "${named[@]}" | sort | uniq -c | sort -rn | awk 'NR == 1 { print $2 }'
}

# True when a peer replica holds replicated data, i.e. the cluster ran before this node was (re)built.
cluster_has_data() {
  local peer offset
  for peer in "${PEERS[@]}"; do
    offset="$(ask "$peer" "$REDIS_PORT" --user "$MONITOR_REDIS_USER" INFO replication | tr -d '\r' | awk -F: '$1 == "master_repl_offset" { print $2 }')" || continue
    [[ "${offset:-0}" -gt 0 ]] && return 0
  done
  return 1
}

if ! PRIMARY="$(sentinels_primary)"; then
  log "Sentinels answer but none names the primary's address (check the monitoring password in the secret); not guessing"
  exit 1
fi
if [[ -z "$PRIMARY" ]]; then
  PRIMARY="$INITIAL_PRIMARY"
  log "no Sentinel answers: cold start with the initial topology (primary $PRIMARY)"
elif [[ "$PRIMARY" == "$SELF" ]] && cluster_has_data; then
  # This node was the primary and comes back empty: starting it as primary would make the
  # replicas resynchronise from an empty dataset. Wait for the Sentinels to promote a replica.
  log "Sentinels still name this rebuilt node as primary; waiting up to ${FAILOVER_WAIT_S}s for their failover"
  for _ in $(seq "$FAILOVER_WAIT_S"); do
    sleep 1
    PRIMARY="$(sentinels_primary)" || PRIMARY=""
    [[ -n "$PRIMARY" && "$PRIMARY" != "$SELF" ]] && break
  done
  if [[ "$PRIMARY" == "$SELF" || -z "$PRIMARY" ]]; then
    log "no failover happened; refusing to start an empty primary over replicas that hold data"
    exit 1
  fi
fi
if [[ ! "$PRIMARY" =~ $ADDRESS_RULE ]]; then
  log "the primary '${PRIMARY:0:80}' is not an address; refusing to write it into replicaof"
  exit 1
fi
log "current primary: $PRIMARY"

# Each role's placeholder (components/bundle/users.py: placeholder) becomes its password.
render() {
  local template="$1" target="$2" content i
  content="$(<"$template")"
  for i in "${!ROLES[@]}"; do
    content="${content//"@@${ROLES[$i]^^}_PASSWORD@@"/"${PASSWORDS[$i]}"}"
  done
  printf '%s\n' "$content" > "$target.tmp"
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
