#!/bin/bash
# hst-ha: register the bootstrap access key with this node's Node API (the requests are described
# in components/bundle/access_key.py). Runs on the initial primary only, after its daemons started.
# GET the key; PUT the verification key if it exists, else POST it. Safe to run again.
# The node's values: ../etc/node.env.
set -euo pipefail
umask 077
# shellcheck source=/dev/null
source "$(dirname "$(readlink -f "$0")")/../etc/node.env"
DEADLINE=$((SECONDS + ACCESS_KEY_WAIT_S))

log() { echo "hst-ha-access-key: $*" >&2; }
fail() { log "$*; the tokens in the bearer-token secret are not accepted until this succeeds"; exit 1; }
waited() { (( SECONDS < DEADLINE )) || fail "gave up after ${ACCESS_KEY_WAIT_S}s waiting for $1"; sleep 2; }

until [[ -x "$ASNODEADMIN" ]]; do waited "HST Server ($ASNODEADMIN)"; done

# HST Server keeps its access keys in Redis: wait until HAProxy leads to a confirmed primary.
# As HST Server does: its (default) user, through HAProxy.
PASSWORD="$("$(dirname "$(readlink -f "$0")")/hst-ha-secret" hst)" || fail "could not read HST Server's Redis password"
export REDISCLI_AUTH="$PASSWORD"  # redis-cli reads it from the environment, never from its argv
unset PASSWORD
until [[ "$(timeout 3 redis-cli --no-auth-warning -h "$HAPROXY_ADDRESS" -p "$HAPROXY_PORT" PING 2>/dev/null)" == PONG ]]; do
  waited "the Redis primary behind HAProxy"
done
unset REDISCLI_AUTH

# A Node API user for this run only, deleted when the script ends however it ends. asnodeadmin
# documents no other way than -p to take the password, so it is on that command line for an instant
# (root, first boot, a random password that dies with the user); curl reads it from a 0600 file.
NODE_PW="$(head -c 48 /dev/urandom | base64 | tr -dc "$PASSWORD_ALPHABET" | head -c 32)"
if ! "$ASNODEADMIN" -a -u "$NODE_API_USER" -p "$NODE_PW" -x "$SYSTEM_USER" >/dev/null 2>&1; then
  "$ASNODEADMIN" -m -u "$NODE_API_USER" -p "$NODE_PW" -x "$SYSTEM_USER" >/dev/null 2>&1 \
    || fail "asnodeadmin could not create Node API user $NODE_API_USER for system user $SYSTEM_USER"
fi
WORK="$(mktemp -d)"
cleanup() {
  rm -rf "$WORK"
  "$ASNODEADMIN" -d -u "$NODE_API_USER" >/dev/null 2>&1 || log "could not delete Node API user $NODE_API_USER; delete it: asnodeadmin -d -u $NODE_API_USER"
}
trap cleanup EXIT
printf 'user = "%s:%s"\n' "$NODE_API_USER" "$NODE_PW" > "$WORK/curlrc"
unset NODE_PW

# api METHOD PATH [BODY FILE]: prints the HTTP status. The response stays in $WORK/response and
# is never printed on success (a created access key's answer carries its secret).
api() {
  local body=()
  [[ $# -ge 3 ]] && body=(-H 'Content-Type: application/json' --data-binary "@$3")
  curl -sk -K "$WORK/curlrc" -o "$WORK/response" -w '%{http_code}' -X "$1" "${body[@]}" "$NODE_API$2" || echo 000
}

until [[ "$(api GET /ping)" == 200 ]]; do waited "the Node API on $NODE_API"; done

status="$(api "$ACCESS_KEY_PROBE_METHOD" "$ACCESS_KEY_PATH")"
case "$status" in
  200) status="$(api "$ACCESS_KEY_UPDATE_METHOD" "$ACCESS_KEY_PATH" "$ACCESS_KEY_UPDATE_BODY")"; action="updated" ;;
  404) status="$(api "$ACCESS_KEY_CREATE_METHOD" "$ACCESS_KEY_CREATE_PATH" "$ACCESS_KEY_CREATE_BODY")"; action="created" ;;
  *) fail "$ACCESS_KEY_PROBE_METHOD $ACCESS_KEY_PATH answered HTTP $status" ;;
esac
if [[ "$status" != 2?? ]]; then
  fail "the Node API answered HTTP $status: $(head -c 300 "$WORK/response" | tr -d '\n')"
fi
log "access key $ACCESS_KEY_ID $action with the bearer-token verification key"
