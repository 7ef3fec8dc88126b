#!/bin/bash
# hst-ha-secret ROLE...: print each role's Redis password, one a line, from the cluster's users
# secret (a JSON object, one password per role; components/bundle/users.py). The other scripts read
# passwords only through it, so it is the one place that fetches and checks the secret. Errors name
# the role, never a value. Same on every node; the node's values: ../etc/node.env. The checks and the
# writes are components/runtime/secret_entries.py, shipped under the node's home (the parent of bin/).
set -euo pipefail
umask 077
HERE="$(dirname "$(readlink -f "$0")")"
# shellcheck source=/dev/null
source "$HERE/../etc/node.env"
NODE_HOME="$(dirname "$HERE")"

# The document goes to Python on stdin (printf is a shell builtin: no command line holds it). From the
# node's home, whatever the caller's directory: `python3 -m` puts the working directory first on
# sys.path, and another directory's `components` must not be the code that reads the secret.
entries() {
  printf '%s' "$1" | (cd "$NODE_HOME" && PYTHONPATH="$NODE_HOME" exec python3 -m components.runtime.secret_entries "${@:2}")
}

(( $# > 0 )) || { echo "usage: hst-ha-secret ROLE... (roles: $SECRET_ROLES) | hst-ha-secret --tls" >&2; exit 2; }

# --tls: write this node's CA certificate, certificate and key from the cluster's TLS secret (JSON;
# components/bundle/tls.py), each replaced whole (write, then rename). The key is 0600.
if [[ "$1" == --tls ]]; then
  [[ -n "$TLS_COMMAND" ]] || { echo "hst-ha-secret: tlsEnabled is off on this node: no TLS secret to read" >&2; exit 2; }
  DOCUMENT="$(bash -c "$TLS_COMMAND")" || {
    echo "hst-ha-secret: could not fetch the TLS secret (check the instance role and the secret)" >&2
    exit 1
  }
  mkdir -p "$(dirname "$TLS_CERT_FILE")" "$(dirname "$TLS_KEY_FILE")"
  entries "$DOCUMENT" tls "$TLS_DOCUMENT_ENTRIES" "$TLS_CA_FILE" "$TLS_CERT_FILE" "$TLS_KEY_FILE"
  exit
fi
DOCUMENT="$(bash -c "$SECRETS_COMMAND")" || {
  echo "hst-ha-secret: could not fetch the Redis users' secret (check the instance role and the secret)" >&2
  exit 1
}
entries "$DOCUMENT" passwords "$PASSWORD_ALPHABET" "$MIN_PASSWORD_LENGTH" "$SECRET_ROLES" "$@"
