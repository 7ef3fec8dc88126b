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
#   down-after (it could be failed over while Redis starts), or no majority agrees: wait, bounded
#   by START_GATE_WAIT_S, logging why. At the bound: start as a replica if the file says replica;
#   refuse to start a master nobody names (exit 1: systemd retries after RestartSec);
# - no Sentinel answers at all (the whole cluster starting): wait START_GATE_COLD_WAIT_S for one,
#   then start from the file, logged. Right after the boot script rendered the file from the
#   Sentinels' view (first boot) that view is seconds old: no wait then.
#
# The same file on every node; this node's values are in ../etc/node.env.
set -uo pipefail
umask 077

# shellcheck source=/dev/null
source "$(dirname "$(readlink -f "$0")")/../etc/node.env"
read -r -a PEERS <<< "$PEERS"

log() { echo "hst-ha-redis-start-gate $NODE_NAME: $*" >&2; }

FIRST_START="$DATA/.first-start"  # left by the boot script when it rendered redis.conf this boot

# The password is in redis.conf since first boot (requirepass); no Secrets Manager call per restart.
PASSWORD="$(awk '$1 == "requirepass" { print $2; exit }' "$REDIS_CONF")"
if [[ -z "$PASSWORD" ]]; then
  log "$REDIS_CONF has no requirepass; was the boot script run?"
  exit 1
fi
export REDISCLI_AUTH="$PASSWORD"

ask() { timeout 1 redis-cli --no-auth-warning --raw -h "$1" -p "$2" "${@:3}" 2>/dev/null; }

# One line per answering Sentinel: "<ip>:<port> <flags> <ms since its last good ping of it>".
sentinel_views() {
  local sentinel
  for sentinel in "$SELF" "${PEERS[@]}"; do
    ask "$sentinel" "$SENTINEL_PORT" SENTINEL MASTER "$MASTER_NAME" | tr -d '\r' | awk '
      NR % 2 == 1 { key = $0; next }
      { v[key] = $0 }
      END { if (v["ip"] != "") print v["ip"] ":" v["port"], v["flags"], v["last-ok-ping-reply"] }'
  done
}

file_replicaof() { awk '$1 == "replicaof" || $1 == "slaveof" { print $2 ":" $3; exit }' "$REDIS_CONF"; }

set_replicaof() {  # "" = start as master; host:port = start as a replica of it
  local target="$1" tmp
  tmp="$(mktemp "$REDIS_CONF.gate.XXXXXX")" || return 1
  awk '$1 != "replicaof" && $1 != "slaveof"' "$REDIS_CONF" > "$tmp" || return 1
  [[ -n "$target" ]] && echo "replicaof ${target%:*} ${target##*:}" >> "$tmp"
  chmod --reference="$REDIS_CONF" "$tmp" && mv "$tmp" "$REDIS_CONF"
}

ME="$SELF:$REDIS_PORT"
ALL=$(( ${#PEERS[@]} + 1 ))
deadline=$(( SECONDS + START_GATE_WAIT_S ))
cold_deadline=$(( SECONDS + START_GATE_COLD_WAIT_S ))
reason="" named="" votes=0 busy=""
while true; do
  views="$(sentinel_views)"
  answering="$(grep -c . <<< "$views")"
  if [[ "$answering" -eq 0 ]]; then
    if [[ -e "$FIRST_START" ]]; then
      rm -f "$FIRST_START"
      log "no Sentinel answers; redis.conf was rendered by this boot, starting from it ($(file_replicaof || true))"
      exit 0
    fi
    if (( SECONDS >= cold_deadline )); then
      target="$(file_replicaof)"
      log "no Sentinel answered for ${START_GATE_COLD_WAIT_S}s (a cold start of the cluster?): starting from the file, as ${target:+replica of }${target:-master}"
      exit 0
    fi
    reason="no Sentinel answers" named="" votes=0 busy=""
  else
    rm -f "$FIRST_START"
    # The primary most Sentinels name, and how many name it.
    read -r votes named < <(awk '{ print $1 }' <<< "$views" | sort | uniq -c | sort -rn | head -n 1)
    busy="$(awk -v p="$named" '$1 == p && $2 ~ /(s_down|o_down|failover_in_progress)/ { print $2 }' <<< "$views" | head -n 1)"
    # Named, but some Sentinel has missed it long enough that it may fail it over while Redis starts.
    silent="$(awk -v p="$named" -v me="$ME" -v limit=$(( DOWN_AFTER_MS / 2 )) \
      'p == me && $1 == me && $3 + 0 > limit { print $3 }' <<< "$views" | sort -rn | head -n 1)"
    if (( votes < SENTINEL_MAJORITY )); then
      reason="no majority: $votes of $ALL Sentinels name $named ($answering answer)"
    elif [[ -n "$busy" ]]; then
      reason="Sentinels name $named but flag it $busy (a failover is under way)"
    elif [[ -n "$silent" ]]; then
      reason="Sentinels name this node but one has missed it for ${silent} ms (down-after ${DOWN_AFTER_MS} ms)"
    elif [[ "$named" == "$ME" ]]; then
      [[ -n "$(file_replicaof)" ]] && { set_replicaof "" || exit 1; }
      log "$votes of $ALL Sentinels name this node as primary: starting as master"
      exit 0
    else
      before="$(file_replicaof)"
      if [[ "$before" != "$named" ]]; then
        set_replicaof "$named" || { log "could not rewrite $REDIS_CONF"; exit 1; }
      fi
      log "$votes of $ALL Sentinels name $named as primary: starting as its replica (the file said ${before:-master})"
      exit 0
    fi
  fi
  if (( SECONDS >= deadline )); then
    if [[ "$named" == "$ME" ]] && (( votes >= SENTINEL_MAJORITY )) && [[ "$busy" != *failover_in_progress* ]]; then
      # Down or silent in their eyes, yet not failed over in all that time (no replica could be
      # promoted, e.g. the whole cluster restarting): the majority still names this node.
      [[ -n "$(file_replicaof)" ]] && { set_replicaof "" || exit 1; }
      log "still $reason after ${START_GATE_WAIT_S}s, and no failover: starting as the master they name"
      exit 0
    fi
    target="$(file_replicaof)"
    if [[ -n "$target" && "$target" != "$ME" ]]; then
      log "still $reason after ${START_GATE_WAIT_S}s: starting as replica of $target (from the file; read-only)"
      exit 0
    fi
    log "still $reason after ${START_GATE_WAIT_S}s: refusing to start a master no Sentinel majority names (retried by the supervisor)"
    exit 1
  fi
  [[ "$reason" != "${last_reason:-}" ]] && log "waiting: $reason"
  last_reason="$reason"
  sleep 0.2
done
