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
# The installer runs as root: only the very file the stack names (hstInstallerSha256) is installed.
if ! echo "$HST_INSTALLER_SHA256  $DEB" | sha256sum --check --status; then
  log "the installer's SHA-256 is $(sha256sum "$DEB" | cut -d' ' -f1), not hstInstallerSha256 $HST_INSTALLER_SHA256; not installing it"
  exit 1
fi
chmod 644 "$DEB"
DEBIAN_FRONTEND=noninteractive apt-get install -y "$DEB"
# The licence is readable by its owner only: root, or the account HST Server's daemons run as.
LICENCE=/opt/aspera/etc/aspera-license
bash -c "$LICENCE_COMMAND" > "$LICENCE.new"
chmod 600 "$LICENCE.new"
if id -u asperadaemon >/dev/null 2>&1; then chown asperadaemon: "$LICENCE.new"; fi
mv "$LICENCE.new" "$LICENCE"

# HST Server's own Redis must not run: this node's HA Redis serves the database, through HAProxy.
systemctl stop asperanoded asperaredisd asperarund || true
systemctl disable asperaredisd || true
AS=/opt/aspera/bin/asconfigurator
"$AS" -x "set_server_data;db_type,ha_redis"
"$AS" -x "set_server_data;db_host,$HAPROXY_ADDRESS"
"$AS" -x "set_server_data;db_port,$HAPROXY_PORT"
PASSWORD="$("$(dirname "$(readlink -f "$0")")/hst-ha-secret" hst)"
# asconfigurator documents no way to take a value from a file, stdin or the environment, so HST
# Server's Redis password is on its command line for the instant it runs: once, at first boot, as
# root, before any other account logs in. It is HST Server's own role (Redis's restricted default
# user, components/bundle/users.py), not a password that can administer Redis or the Sentinels.
"$AS" -x "set_server_data;$HST_REDIS_PASSWORD_SETTING,$PASSWORD"
unset PASSWORD
systemctl enable --now asperarund asperanoded
touch "$DONE"
log "HST Server uses $HAPROXY_ADDRESS:$HAPROXY_PORT (HAProxy) as its Redis"
