#!/bin/bash
# hst-ha LiveSettings: THIS node takes the cluster document Pulumi just wrote, without a restart, and
# prints what its daemons run afterwards. Every node runs it through SSM Run Command.
#
# components/runtime/ssm_apply.py (render_apply_script) sends this file with its values set in a header
# right after the first line: MARK (the output's line marker), TIMEOUT_S (per redis-cli call), HOME_DIR
# (the code archive's home), NODE_JSON, SECRET_SCRIPT (the node's hst-ha-secret: it reads the operator
# password with the instance role), DOCUMENT_SHA256 (the document this apply is for), HAPROXY_UNIT and
# RELOAD_WAIT_S. No setting and no password travels in it: the node renders its files from the
# document with the same renderer as at boot (`python3 -m components.bundle.boot --apply`, which also
# stages haproxy.cfg and writes the runtime values to etc/live-settings.env), then this script sets
# those values on its own Sentinel and Redis, reads them back, and reloads HAProxy in place. Passwords
# reach redis-cli through the environment only; the output is gzipped and base64-encoded as the
# probe's is (components/runtime/ssm_probe.py parse_probe_output reads both).
set -u
umask 077
ETC="$(dirname "$NODE_JSON")"

# ask LABEL HOST PORT COMMAND...: the label line, redis-cli's answer as JSON, its exit status line.
# Over TLS when the node's node.env says so (tlsEnabled), as every node script.
ask() {
  local label="$1" host="$2" port="$3"; shift 3
  printf '%s %s\n' "$MARK" "$label"
  timeout "$TIMEOUT_S" redis-cli --no-auth-warning --json ${TLS_CA_FILE:+--tls --cacert "$TLS_CA_FILE"} \
    --user "$OPERATOR_USER" -h "$host" -p "$port" "$@" 2>&1
  printf '%s-rc %s\n' "$MARK" "$?"
}

# The workers of HAProxy's master (the unit's main process), one pid a line.
workers() { pgrep -P "$1" | sort; }

# Reload HAProxy in place with the staged haproxy.cfg; prints the outcome as a JSON string. As on the
# local target (components/local/cluster.py reload_haproxy): the master keeps its pid, a new worker
# takes over and routes; the former workers keep the sessions they carry until these end, judged by
# the new worker's fence (components/bundle/files/hst-ha-fence.lua: a former worker runs no check).
reload_haproxy() {
  local main before new="" i
  if haproxy -c -q -f "$HAPROXY_STAGED" >/dev/null 2>&1; then :; else
    rm -f "$HAPROXY_STAGED"; echo '"refused"'; return
  fi
  main="$(systemctl show -p MainPID --value "$HAPROXY_UNIT")"
  if [[ ! "$main" =~ ^[1-9][0-9]*$ ]]; then
    echo '"not-running"'; return
  fi
  before="$(workers "$main")"
  cp -p "$HAPROXY_CFG" "$HAPROXY_CFG.previous"
  mv "$HAPROXY_STAGED" "$HAPROXY_CFG"
  if ! timeout 30 systemctl reload "$HAPROXY_UNIT" >/dev/null 2>&1; then
    mv "$HAPROXY_CFG.previous" "$HAPROXY_CFG"; echo '"reload-failed"'; return
  fi
  rm -f "$HAPROXY_CFG.previous"
  # A new worker, and a client through it reaches a primary (the fence holds it until every check ran).
  for ((i = 0; i < RELOAD_WAIT_S * 10; i++)); do
    if [[ "$(systemctl show -p MainPID --value "$HAPROXY_UNIT")" != "$main" ]]; then
      echo '"restarted"'; return
    fi
    new="$(comm -13 <(printf '%s\n' "$before") <(workers "$main") | grep . )"
    if [[ -n "$new" ]] && [[ "$(timeout 3 redis-cli --no-auth-warning --raw --user "$OPERATOR_USER" \
          -h "$HAPROXY_ADDRESS" -p "$HAPROXY_PORT" PING 2>/dev/null)" == PONG ]]; then
      break
    fi
    new=""
    sleep 0.1
  done
  if [[ -z "$new" ]]; then
    echo '"no-new-worker"'; return
  fi
  echo '"reloaded"'
}

{
  printf '%s render\n' "$MARK"
  errors="$(mktemp)"
  ( cd "$HOME_DIR" && timeout 90 python3 -m components.bundle.boot --apply --expect "$DOCUMENT_SHA256" \
      "$NODE_JSON" 2>"$errors" )
  rc=$?
  (( rc == 0 )) || tail -n 1 "$errors"
  rm -f "$errors"
  printf '%s-rc %s\n' "$MARK" "$rc"
  if (( rc == 0 )); then
    # shellcheck source=/dev/null
    source "$ETC/node.env"
    # shellcheck source=/dev/null
    source "$ETC/live-settings.env"
    if PASSWORD="$("$SECRET_SCRIPT" operator)"; then
      export REDISCLI_AUTH="$PASSWORD"
      unset PASSWORD
      ask "sentinel-set" "$SELF" "$SENTINEL_PORT" SENTINEL SET "$MASTER_NAME" "${SENTINEL_SET[@]}"
      ask "config-set" "$SELF" "$REDIS_PORT" CONFIG SET "${CONFIG_SET[@]}"
      ask "config-rewrite" "$SELF" "$REDIS_PORT" CONFIG REWRITE
      ask "sentinel-master" "$SELF" "$SENTINEL_PORT" SENTINEL MASTER "$MASTER_NAME"
      ask "config-get" "$SELF" "$REDIS_PORT" CONFIG GET "${CONFIG_GET[@]}"
      printf '%s haproxy\n' "$MARK"
      if [[ -n "$HAPROXY_STAGED" ]]; then reload_haproxy; else echo '"unchanged"'; fi
      printf '%s-rc 0\n' "$MARK"
    else
      printf '%s password\n%s\n%s-rc 1\n' "$MARK" "the node could not read the operator password" "$MARK"
    fi
  fi
  echo "$MARK-end"
} | gzip -9 | base64 -w0
echo
