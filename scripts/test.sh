#!/usr/bin/env bash
# Run the test suite (arguments go to pytest) in a network namespace of its own, so that the live
# tests' servers on 127.0.0.x never meet another run's on the same machine. `./scripts/setup.sh test`
# ends here, after setting up; on its own it is the inner loop:
#   ./scripts/test.sh -m "not live and not drills and not node"
# A new network namespace needs root, or sudo without a password (then the tests still run as the
# calling user); without either, the suite runs on the machine's loopback and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test: $*" >&2; }

if [[ ! -x .venv/bin/python ]]; then
  say ".venv/bin/python is missing or not executable: run ./scripts/setup.sh test first"
  exit 2
fi
PYTEST=(.venv/bin/python -m pytest -q --durations=10 tests "$@")

# A new network namespace has its loopback down: bring it up, then run the suite. Through sudo,
# the suite runs as the caller again ($1:$2), with the PATH and HOME that sudo replaced.
LO_UP=(bash -c 'ip link set lo up && exec "$@"' lo-up)
# shellcheck disable=SC2016  # expanded by the inner bash
AS_CALLER=(bash -c 'ip link set lo up && exec setpriv --reuid="$1" --regid="$2" --init-groups -- env PATH="$3" HOME="$4" "${@:5}"'
           as-caller "$(id -u)" "$(id -g)" "$PATH" "$HOME")

if ! command -v ip >/dev/null || ! command -v setpriv >/dev/null; then
  why="no \`ip\` (iproute2) or \`setpriv\` (util-linux) to bring up the namespace's loopback"
elif [[ $(id -u) -eq 0 ]] && unshare --net -- ip link set lo up 2>/dev/null; then
  say "running the tests in a private network namespace (unshare --net)"
  exec unshare --net -- "${LO_UP[@]}" "${PYTEST[@]}"
elif command -v sudo >/dev/null && sudo -n -E unshare --net -- ip link set lo up 2>/dev/null; then
  say "running the tests in a private network namespace (sudo unshare --net, then as $(id -un))"
  exec sudo -n -E unshare --net -- "${AS_CALLER[@]}" "${PYTEST[@]}"
else
  why="could not create a network namespace (that needs root, allowed to unshare, or passwordless sudo)"
fi
say "NOTE: $why; running on this machine's loopback, where two test runs at once collide"
exec "${PYTEST[@]}"
