#!/bin/bash
# hst-ha node target: last touches to the node root filesystem (mmdebstrap --customize-hook).
# $1 is the root filesystem. What a cloud image's build would set, nothing of the program's.
set -euo pipefail
root="$1"

# The only datasource is the NoCloud seed the node target writes: never probe EC2's metadata address.
# C.UTF-8: the minimal image has no en_US.UTF-8 and cloud-init's locale module would fail on it.
cat >"$root/etc/cloud/cloud.cfg.d/05-hst-ha-node-target.cfg" <<'CFG'
datasource_list: [NoCloud]
locale: C.UTF-8
CFG

# cloud-init renders the network-config for systemd-networkd (no ifupdown, no netplan here).
chroot "$root" systemctl enable systemd-networkd.service
# Nothing to wait for but the one static interface; without this wait-online can hold boot 2 min.
mkdir -p "$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$root/etc/systemd/system/systemd-networkd-wait-online.service.d/10-hst-ha.conf" <<'CFG'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
CFG

# The node packages are pre-installed and the nodes have no route to a mirror: without sources the
# user data's `package_update` and `packages` succeed offline (already the newest version).
rm -f "$root/etc/apt/sources.list"
find "$root/etc/apt/sources.list.d" -type f -delete
rm -rf "$root/var/lib/apt/lists/"*
apt_clean=("$root/var/cache/apt/archives/"*.deb)
rm -f "${apt_clean[@]}"

# Each node gets its identity at its first boot (a fresh machine-id, cloud-init's instance-id).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/etc/hostname"
