#!/bin/bash
# hst-ha LiveSettings: apply the cluster's runtime settings to THIS node's Redis, Sentinel and HAProxy
# without restarting them, and print what they run afterwards. Every node runs it through SSM Run Command.
#
# components/runtime/ssm_apply.py (render_apply_script) sends this file with its values set in a header
# right after the first line: MARK (the output's line marker), TIMEOUT_S (per call), MASTER, REDIS and
# SENTINEL (this node's host:port), OPERATOR_USER, TLS_CA_FILE (tlsEnabled: the node's CA file, its
# Redis and Sentinel then speak TLS only; empty: plaintext), PASSWORD_COMMAND and MONITOR_PASSWORD_COMMAND (the
# node's own hst-ha-secret for the operator and monitoring roles, read with the instance role),
# SENTINEL_SET and CONFIG_SET (option value ... pairs), CONFIG_GET (the options to read back),
# HAPROXY_CFG, HAPROXY_UNIT, HAPROXY_PLACEHOLDER and HAPROXY_TEMPLATE (the node's haproxy.cfg template,
# gzipped and base64-encoded; empty: leave HAProxy alone). Passwords reach redis-cli through the
# environment only and never the output, which is gzipped and base64-encoded as the probe's is
# (components/runtime/ssm_probe.py parse_probe_output reads both).
set -u
umask 077
PASSWORD="$(bash -c "$PASSWORD_COMMAND")" || { echo "$MARK-no-password"; exit 3; }
export REDISCLI_AUTH="$PASSWORD"
unset PASSWORD

# ask LABEL HOST:PORT COMMAND...: the label line, redis-cli's answer as JSON, its exit status line.
ask() {
  local label="$1" endpoint="$2" ca="$TLS_CA_FILE"; shift 2
  printf '%s %s\n' "$MARK" "$label"
  timeout "$TIMEOUT_S" redis-cli --no-auth-warning --json ${ca:+--tls --cacert "$ca"} --user "$OPERATOR_USER" -h "${endpoint%:*}" -p "${endpoint##*:}" "$@" 2>&1
  printf '%s-rc %s\n' "$MARK" "$?"
}

{
  ask "sentinel-set" "$SENTINEL" SENTINEL SET "$MASTER" "${SENTINEL_SET[@]}"
  ask "config-set" "$REDIS" CONFIG SET "${CONFIG_SET[@]}"
  ask "config-rewrite" "$REDIS" CONFIG REWRITE
  ask "sentinel-master" "$SENTINEL" SENTINEL MASTER "$MASTER"
  ask "config-get" "$REDIS" CONFIG GET "${CONFIG_GET[@]}"

  printf '%s haproxy\n' "$MARK"
  if [[ -z "$HAPROXY_TEMPLATE" ]]; then
    echo '"skipped"'
  else
    monitor="$(bash -c "$MONITOR_PASSWORD_COMMAND")" || { echo '"no-monitor-password"'; monitor=""; }
    if [[ -n "$monitor" ]]; then
      staged="$HAPROXY_CFG.new"
      content="$(base64 -d <<< "$HAPROXY_TEMPLATE" | gunzip)"
      printf '%s\n' "${content//"$HAPROXY_PLACEHOLDER"/"$monitor"}" > "$staged"
      unset monitor content
      chown --reference="$HAPROXY_CFG" "$staged" 2>/dev/null
      if cmp -s "$staged" "$HAPROXY_CFG"; then
        rm -f "$staged"; echo '"unchanged"'
      elif ! haproxy -c -q -f "$staged" >/dev/null 2>&1; then
        rm -f "$staged"; echo '"refused"'
      else
        cp -p "$HAPROXY_CFG" "$HAPROXY_CFG.previous"
        mv "$staged" "$HAPROXY_CFG"
        if timeout 30 systemctl reload "$HAPROXY_UNIT" >/dev/null 2>&1; then
          rm -f "$HAPROXY_CFG.previous"; echo '"reloaded"'
        else
          mv "$HAPROXY_CFG.previous" "$HAPROXY_CFG"; echo '"reload-failed"'
        fi
      fi
    fi
  fi
  printf '%s-rc 0\n' "$MARK"
  echo "$MARK-end"
} | gzip -9 | base64 -w0
echo
