#!/bin/bash
# hst-ha: install HST Server and configure it for the HA Redis backend. Runs once per node.
# Same on every node; the node's values: ../etc/node.env.
set -euo pipefail
umask 077
# shellcheck source=/dev/null
source "$(dirname "$(readlink -f "$0")")/../etc/node.env"

DONE="$DATA/.hsts-configured"
log() { echo "hst-ha-hsts: $*" >&2; }
[[ -e "$DONE" ]] && { log "HST Server was configured at first boot"; exit 0; }

DEB="$(mktemp --suffix=.deb)"
trap 'rm -f "$DEB"' EXIT
log "downloading the HST Server installer"
if [[ "$HST_INSTALLER_URL" == s3://* ]]; then
  location="${HST_INSTALLER_URL#s3://}"
  # shellcheck disable=SC2016  # Python code, not shell
  python3 -c 'import sys, boto3; boto3.client("s3").download_file(sys.argv[1], sys.argv[2], sys.argv[3])' \
    "${location%%/*}" "${location#*/}" "$DEB"
else
  curl -fsSL --retry 5 -o "$DEB" "$HST_INSTALLER_URL"
fi
chmod 644 "$DEB"
DEBIAN_FRONTEND=noninteractive apt-get install -y "$DEB"
( umask 022; bash -c "$LICENCE_COMMAND" > /opt/aspera/etc/aspera-license )

# HST Server's own Redis must not run: this node's HA Redis serves the database, through HAProxy.
systemctl stop asperanoded asperaredisd asperarund || true
systemctl disable asperaredisd || true
AS=/opt/aspera/bin/asconfigurator
"$AS" -x "set_server_data;db_type,ha_redis"
"$AS" -x "set_server_data;db_host,$HAPROXY_ADDRESS"
"$AS" -x "set_server_data;db_port,$HAPROXY_PORT"
PASSWORD="$(bash -c "$PASSWORD_COMMAND")"
# asconfigurator takes values on its command line only; this runs once, at first boot, as root.
"$AS" -x "set_server_data;$HST_REDIS_PASSWORD_SETTING,$PASSWORD"
unset PASSWORD
systemctl enable --now asperarund asperanoded
touch "$DONE"
log "HST Server uses $HAPROXY_ADDRESS:$HAPROXY_PORT (HAProxy) as its Redis"
