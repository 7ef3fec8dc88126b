#!/bin/bash
# hst-ha Redis start gate: runs before EVERY start of this node's Redis (systemd ExecStartPre on
# AWS; the local target runs it before it starts redis-server), not only at first boot.
#
# Redis starts from its own redis.conf, which says what the node was when it stopped. After a
# failover that is a lie: a former primary came back as master, a replica still following it did a
# full resync from it, min-replicas-to-write was satisfied again, and clients that still trusted it
# got writes acknowledged that the Sentinels' +convert-to-slave then discarded. So before Redis
# starts, this script asks every Sentinel and rewrites the replicaof line of redis.conf:
#
# - a majority names this node and nobody is failing it over: start as master;
# - a majority names another node, not being failed over: start as ITS replica (a replica never
#   syncs from a primary the majority does not name, so a replica's target is checked too);
# - a failover is under way (any Sentinel flags the named primary s_down, o_down or
#   failover_in_progress), or this node is named but a Sentinel has not heard from it for half of
#   down-after (it could be failed over while Redis starts; not at the start right after the boot
#   script rendered redis.conf: it is silent only because it never ran, and nodes booting a few
#   seconds apart would otherwise fail over an empty cluster), or no majority agrees: wait, bounded
#   by START_GATE_WAIT_S, logging why. At the bound: start as master if every Sentinel that answers
#   names this node and none is failing it over (too few Sentinels to fail over); else as a replica
#   if the file says replica; else refuse (exit 1: systemd retries after RestartSec);
# - no Sentinel answers at all (the whole cluster starting): wait START_GATE_COLD_WAIT_S for one,
#   then start from the file, logged. Right after the boot script rendered the file from the
#   Sentinels' view (first boot) that view is seconds old: no wait then.
#
# The same file on every node; this node's values are in ../etc/node.env.
set -uo pipefail
umask 077

# shellcheck source=/dev/null
source "$(dirname "$(readlink -f "$0")")/../etc/node.env"

log() { echo "hst-ha-redis-start-gate $NODE_NAME: $*" >&2; }

FIRST_START="$DATA/.first-start"  # left by the boot script when it rendered redis.conf this boot
ME="$SELF:$REDIS_PORT"
# Sentinel's read-only queries are the monitoring role's (Sentinel's default user). Fetched fresh at
# every start, as after a rotation the files hold only hashes. Without it the gate cannot judge, so
# Redis does not start (systemd retries): a master nobody named is worse than a node that waits.
PASSWORD="$("$(dirname "$(readlink -f "$0")")/hst-ha-secret" monitor)" || { log "could not read the monitoring password"; exit 1; }
export REDISCLI_AUTH="$PASSWORD"
unset PASSWORD

# One line per answering Sentinel: "<ip>:<port> <flags> <ms since its last good ping of it>".
views() {
  local sentinel
  for sentinel in $SELF $PEERS; do
    timeout 1 redis-cli --no-auth-warning --raw ${TLS_CA_FILE:+--tls --cacert "$TLS_CA_FILE"} -h "$sentinel" -p "$SENTINEL_PORT" SENTINEL MASTER "$MASTER_NAME" 2>/dev/null |
      tr -d '\r' | awk 'NR % 2 { k = $0; next } { v[k] = $0 } END { if (v["ip"]) print v["ip"] ":" v["port"], v["flags"], v["last-ok-ping-reply"] }'
  done
}

file_target() { awk '$1 == "replicaof" || $1 == "slaveof" { print $2 ":" $3; exit }' "$REDIS_CONF"; }

start_as() {  # "" = master; host:port = replica of it. Rewrites replicaof only when it changes.
  local before tmp
  before="$(file_target)"
  if [[ "$before" != "$1" ]]; then
    if ! { tmp="$(mktemp "$REDIS_CONF.XXXXXX")" && awk '$1 != "replicaof" && $1 != "slaveof"' "$REDIS_CONF" > "$tmp" &&
      { [[ -z "$1" ]] || echo "replicaof ${1%:*} ${1##*:}" >> "$tmp"; } &&
      chmod --reference="$REDIS_CONF" "$tmp" && mv "$tmp" "$REDIS_CONF"; }; then
      log "cannot rewrite $REDIS_CONF"
      exit 1
    fi
  fi
  log "$2: starting as ${1:+replica of }${1:-master} (the file said ${before:-master})"
  exit 0
}

first_start=0
[[ -e "$FIRST_START" ]] && first_start=1
deadline=$(( SECONDS + START_GATE_WAIT_S ))
cold_deadline=$(( SECONDS + START_GATE_COLD_WAIT_S ))
while true; do
  # votes for the most named primary, it, (for it) the first warning flags and the longest silence,
  # and how many Sentinels answered.
  read -r votes named busy silent answering < <(views | awk '
    { n[$1]++; if ($2 ~ /s_down|o_down|failover_in_progress/) f[$1] = $2; if ($3 > s[$1]) s[$1] = $3 }
    END { for (p in n) if (n[p] > best) { best = n[p]; top = p }
          if (best) print best, top, (f[top] ? f[top] : "-"), s[top] + 0, NR }')
  votes=${votes:-0} answering=${answering:-0}
  if (( votes == 0 )); then
    [[ -e "$FIRST_START" ]] && { rm -f "$FIRST_START"; start_as "$(file_target)" "no Sentinel answers; redis.conf was rendered by this boot"; }
    (( SECONDS >= cold_deadline )) && start_as "$(file_target)" "no Sentinel answered for ${START_GATE_COLD_WAIT_S}s (a cold start of the cluster?)"
    reason="no Sentinel answers"
  else
    rm -f "$FIRST_START"
    said="$votes Sentinels name $named"
    if (( votes < SENTINEL_MAJORITY )); then
      reason="no majority: $said"
    elif [[ "$busy" != - ]]; then
      reason="$said, flagged $busy (a failover is under way)"
    elif [[ "$named" == "$ME" ]] && (( silent > DOWN_AFTER_MS / 2 && ! first_start )); then
      reason="$said, but one has missed it for $silent ms (down-after $DOWN_AFTER_MS ms)"
    else
      start_as "$([[ "$named" == "$ME" ]] || echo "$named")" "$said as primary"
    fi
  fi
  if (( SECONDS >= deadline )); then
    # Every Sentinel that answers names this node, and none has failed it over in all that time
    # (nobody could be promoted, or too few Sentinels run to elect a leader): start as the master
    # they name. Were it cut off from a majority that promoted another node, it could not take a
    # write anyway: no replica reaches it (min-replicas-to-write) and no HAProxy routes to it.
    [[ "$named" == "$ME" && "$busy" != *failover_in_progress* ]] && (( votes == answering )) &&
      start_as "" "still $reason after ${START_GATE_WAIT_S}s, and no failover"
    target="$(file_target)"
    [[ -n "$target" && "$target" != "$ME" ]] && start_as "$target" "still $reason after ${START_GATE_WAIT_S}s (read-only)"
    log "still $reason after ${START_GATE_WAIT_S}s: refusing to start a master no Sentinel majority names (retried by the supervisor)"
    exit 1
  fi
  [[ "$reason" != "${last:-}" ]] && log "waiting: $reason"
  last="$reason"
  sleep 0.2
done
