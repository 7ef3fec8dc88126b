#!/bin/bash
# hst-ha-secret ROLE...: print each role's Redis password, one a line, from the cluster's users
# secret (a JSON object, one password per role; components/bundle/users.py). The other scripts read
# passwords only through it, so it is the one place that fetches and checks the secret. Errors name
# the role, never a value. Same on every node; the node's values: ../etc/node.env.
set -euo pipefail
umask 077
# shellcheck source=/dev/null
source "$(dirname "$(readlink -f "$0")")/../etc/node.env"

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
  # shellcheck disable=SC2016  # Python code, not shell
  printf '%s' "$DOCUMENT" | python3 -c '
import json, os, sys
names, paths = sys.argv[1].split(), sys.argv[2:]
fail = lambda why: sys.exit(f"hst-ha-secret: the TLS secret {why}; regenerate it")
try:
    document = json.load(sys.stdin)
except ValueError:
    fail("is not JSON")
if not isinstance(document, dict):
    fail("is not a JSON object of PEM entries")
for name, path, mode in zip(names, paths, (0o644, 0o644, 0o600)):
    value = document.get(name)
    if not isinstance(value, str) or not value.startswith("-----BEGIN ") or "-----END " not in value:
        fail(f"has no PEM entry {name!r}")
    tmp = f"{path}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as out:
        out.write(value)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
' "$TLS_DOCUMENT_ENTRIES" "$TLS_CA_FILE" "$TLS_CERT_FILE" "$TLS_KEY_FILE"
  exit
fi
DOCUMENT="$(bash -c "$SECRETS_COMMAND")" || {
  echo "hst-ha-secret: could not fetch the Redis users' secret (check the instance role and the secret)" >&2
  exit 1
}
# The document goes to Python on stdin (printf is a shell builtin: no command line holds it).
# shellcheck disable=SC2016  # Python code, not shell
printf '%s' "$DOCUMENT" | python3 -c '
import json, re, sys
alphabet, minimum, known, wanted = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
fail = lambda why: sys.exit(f"hst-ha-secret: {why}; regenerate the secret")
try:
    document = json.load(sys.stdin)
except ValueError:
    fail("the Redis users secret is not JSON")
if not isinstance(document, dict):
    fail("the Redis users secret is not a JSON object of one password per role")
rule = re.compile(f"^[{alphabet}]{{{minimum},}}$")
for role in wanted:
    if role not in known:
        sys.exit(f"hst-ha-secret: no role {role!r}; the roles are {known}")
    value = document.get(role)
    if not isinstance(value, str) or not rule.match(value):
        fail(f"the password of role {role} is missing or not at least {minimum} characters of [{alphabet}]")
    print(value)
' "$PASSWORD_ALPHABET" "$MIN_PASSWORD_LENGTH" "$SECRET_ROLES" "$@"
