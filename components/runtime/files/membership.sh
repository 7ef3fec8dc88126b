#!/bin/bash
# hst-ha membership step on THIS node, through SSM Run Command: a cluster-wide step run from a node that
# stays (the Redis and Sentinel ports are open only between cluster members), or stopping the daemons
# of a node that leaves, before Pulumi terminates its instance.
#
# components/runtime/ssm_membership.py (render_membership_script) sends this file with its values set
# in a header right after the first line: MARK (the output's line marker), HOME_DIR (the code archive's
# home), NODE_ENV, SECRET_SCRIPT (the node's hst-ha-secret), STEP_TIMEOUT_S, STEP (`cluster` or `stop`),
# UNITS (stop: the daemons' units, in the order they stop) and STEP_ARGS (cluster: the arguments of
# `python3 -m components.runtime.membership`: endpoints and the master name, no password). The operator
# password is read by the Python step itself with the node's secret command. The output is gzipped and
# base64-encoded as the probe's (components/runtime/ssm_probe.py parse_probe_output reads it).
set -u
umask 077

# cluster: the membership step's JSON on success; its last stderr line otherwise.
cluster_step() {
  local errors rc tls=()
  errors="$(mktemp)"
  # shellcheck source=/dev/null
  source "$NODE_ENV"
  if [[ -n "${TLS_CA_FILE:-}" ]]; then tls=(--tls-ca-file "$TLS_CA_FILE"); fi
  printf '%s cluster\n' "$MARK"
  ( cd "$HOME_DIR" && timeout "$STEP_TIMEOUT_S" python3 -m components.runtime.membership "${STEP_ARGS[@]}" \
      --secret-script "$SECRET_SCRIPT" "${tls[@]}" 2>"$errors" )
  rc=$?
  (( rc == 0 )) || tail -n 1 "$errors"
  rm -f "$errors"
  printf '%s-rc %s\n' "$MARK" "$rc"
}

# stop: each unit disabled and stopped in turn (a reboot before the termination must not bring it back),
# then every other hst-ha unit (observers, timers); prints what is still active, as JSON (none: []).
stop_step() {
  local unit rc=0 active=() others=()
  printf '%s stop\n' "$MARK"
  mapfile -t others < <(systemctl list-units --plain --no-legend --all 'hst-ha-*' | awk '{print $1}')
  for unit in "${UNITS[@]}" "${others[@]}"; do
    timeout "$STEP_TIMEOUT_S" systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
  for unit in "${UNITS[@]}"; do
    if systemctl is-active --quiet "$unit"; then active+=("\"$unit\""); rc=1; fi
  done
  local IFS=,
  printf '[%s]\n' "${active[*]}"
  printf '%s-rc %s\n' "$MARK" "$rc"
}

{
  case "$STEP" in
    cluster) cluster_step ;;
    stop) stop_step ;;
  esac
  echo "$MARK-end"
} | gzip -9 | base64 -w0
echo
