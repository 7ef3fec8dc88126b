#!/bin/bash
# hst-ha SentinelQuorum probe: ask every Sentinel and Redis what verify_quorum asks, print the
# answers gzipped and base64-encoded. Changes nothing. One node runs it through SSM Run Command.
#
# components/runtime/ssm_probe.py (render_probe_script) sends this file with its per-call values
# set in a header right after the first line: MARK (the output's line marker), TIMEOUT_S (per
# call), MASTER, SENTINELS and SERVERS (host:port; SERVERS ends with the node's own HAProxy),
# REPLIES and COMMANDS (the reply names the judge reads and the Sentinel command of each),
# MONITOR_USER, TLS_CA_FILE (empty: no TLS) and PLAINTEXT (the one endpoint asked without TLS, the
# node's HAProxy), and PASSWORD_COMMAND: the node's own command for the monitoring password
# (hst-ha-secret monitor), which reads the secret with the instance role. The Sentinels take that
# password as their default user, Redis as MONITOR_USER's. It goes to redis-cli through the
# environment only: never on a command line, never in the output.
set -u
umask 077
PASSWORD="$(bash -c "$PASSWORD_COMMAND")" || { echo "$MARK-no-password"; exit 3; }
export REDISCLI_AUTH="$PASSWORD"
unset PASSWORD

# ask LABEL HOST:PORT COMMAND...: the label line, what redis-cli printed, its exit status line.
ask() {
  local label="$1" endpoint="$2" ca="$TLS_CA_FILE"; shift 2
  [[ "$endpoint" == "$PLAINTEXT" ]] && ca=""
  printf '%s %s\n' "$MARK" "$label"
  timeout "$TIMEOUT_S" redis-cli --no-auth-warning --json ${ca:+--tls --cacert "$ca"} -h "${endpoint%:*}" -p "${endpoint##*:}" "$@" 2>&1
  printf '%s-rc %s\n' "$MARK" "$?"
}

{
  for ep in "${SENTINELS[@]}"; do
    for i in "${!REPLIES[@]}"; do
      read -ra command <<< "${COMMANDS[i]}"
      ask "sentinel $ep ${REPLIES[i]}" "$ep" "${command[@]}" "$MASTER"
    done
  done
  for ep in "${SERVERS[@]}"; do
    ask "info $ep" "$ep" --user "$MONITOR_USER" INFO server replication
  done
  echo "$MARK-end"
} | gzip -9 | base64 -w0
echo
