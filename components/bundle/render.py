"""Render one node's bundle: its files and ordered start steps, for the AWS and the local target alike.

Pure Python (no Pulumi import). The bundle holds no secret: config files that need the Redis
password are rendered as templates with `PASSWORD_PLACEHOLDER`, and the node's boot script fills
them in once, at first boot, with the password it fetches itself (`NodeLayout.password_command`).
Redis and Sentinel rewrite their files at failover, so nothing here is ever rendered twice on a node.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass

from components.bundle.access_key import render_access_key_step
from components.settings import ClusterSettings

PASSWORD_PLACEHOLDER = "@@REDIS_PASSWORD@@"

# The boot script refuses any other password: the value goes into redis.conf, sentinel.conf and an
# HAProxy `tcp-check send` line, none of which has one quoting rule that fits all three.
PASSWORD_ALPHABET = "A-Za-z0-9"


@dataclass(frozen=True)
class NodePlace:
    """Where a node sits in the cluster. Node 0 starts as primary; every address is known in advance."""

    index: int
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.index < len(self.addresses):
            raise ValueError(f"node index {self.index} is outside the cluster of {len(self.addresses)} nodes")
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError(f"node addresses must be distinct, got {list(self.addresses)}")

    @property
    def address(self) -> str:
        return self.addresses[self.index]

    @property
    def initial_primary(self) -> str:
        return self.addresses[0]

    @property
    def is_initial_primary(self) -> bool:
        return self.index == 0

    @property
    def name(self) -> str:
        return node_name(self.index)


def node_name(index: int) -> str:
    return f"node-{index + 1}"


@dataclass(frozen=True)
class NodeLayout:
    """What differs between targets: where files live, how the password is fetched, where HAProxy listens."""

    home: str  # /opt/hst-ha on AWS; <state dir>/node-N locally
    password_command: str  # shell command that prints the Redis password on stdout
    haproxy_address: str = "127.0.0.1"  # the local target binds each node's own loopback address
    licence_command: str | None = None  # prints the HST Server licence; only where HSTS is installed

    @property
    def etc(self) -> str:
        return f"{self.home}/etc"

    @property
    def data(self) -> str:
        return f"{self.home}/data"

    @property
    def log(self) -> str:
        return f"{self.home}/log"

    @property
    def run(self) -> str:
        return f"{self.home}/run"

    @property
    def bin(self) -> str:
        return f"{self.home}/bin"

    @property
    def hsts_script(self) -> str:
        return f"{self.bin}/hst-ha-hsts"

    @property
    def boot_script(self) -> str:
        return f"{self.bin}/hst-ha-boot"

    @property
    def redis_conf(self) -> str:
        return f"{self.data}/redis.conf"

    @property
    def sentinel_conf(self) -> str:
        return f"{self.data}/sentinel.conf"

    @property
    def haproxy_cfg(self) -> str:
        return f"{self.etc}/haproxy.cfg"

    @property
    def haproxy_socket(self) -> str:
        return f"{self.run}/haproxy.sock"

    @property
    def haproxy_fence(self) -> str:
        return f"{self.etc}/hst-ha-fence.lua"

    @property
    def sentinel_timers_script(self) -> str:
        return f"{self.bin}/hst-ha-sentinel-timers"

    def template(self, path: str) -> str:
        return f"{self.etc}/templates/{path.rsplit('/', 1)[-1]}"


@dataclass(frozen=True)
class BundleFile:
    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class StartStep:
    """One start step, in order. `daemon` steps run in the foreground under a supervisor
    (a systemd unit on AWS, a child process locally); the others run to completion."""

    name: str
    argv: tuple[str, ...]
    daemon: bool
    user: str | None = None  # account the AWS unit runs as; the local target runs everything as its caller
    ready_port: int | None = None  # a daemon is ready once this TCP port on `ready_address` accepts
    ready_address: str | None = None
    # Run after EVERY start of the daemon, once it is ready (systemd ExecStartPost on AWS): for
    # settings the daemon does not keep in its config file.
    post_start: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Bundle:
    node: str
    address: str
    files: tuple[BundleFile, ...]
    start_steps: tuple[StartStep, ...]

    def file(self, path: str) -> BundleFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


def sentinel_id(address: str, port: int) -> str:
    """A stable Sentinel run id per node address, so every node can be pre-seeded with its peers' ids
    (and a replaced node keeps its predecessor's identity)."""
    return hashlib.sha1(f"hst-ha sentinel {address}:{port}".encode()).hexdigest()


def render_bundle(
    settings: ClusterSettings, place: NodePlace, layout: NodeLayout, *, token_verification_key: str | None = None
) -> Bundle:
    """The whole of one node: seed config templates, the boot script and the ordered start steps.

    With `token_verification_key` (the bearer-token signing key's public PEM) and HST Server
    installed, the initial primary also registers the bootstrap access key with that key, last.
    """
    if len(place.addresses) != settings.node_count:
        raise ValueError(f"{len(place.addresses)} node addresses given for nodeCount {settings.node_count}")
    files = [
        BundleFile(layout.template(layout.redis_conf), render_redis_conf(settings, place, layout), 0o600),
        BundleFile(layout.template(layout.sentinel_conf), render_sentinel_conf(settings, place, layout), 0o600),
        BundleFile(layout.template(layout.haproxy_cfg), render_haproxy_cfg(settings, place, layout), 0o600),
        BundleFile(layout.haproxy_fence, render_haproxy_fence(settings, place), 0o644),
        BundleFile(layout.boot_script, render_boot_script(settings, place, layout), 0o755),
        BundleFile(layout.sentinel_timers_script, render_sentinel_timers_script(settings, place, layout), 0o755),
    ]
    steps = [
        StartStep("prepare", (layout.boot_script,), daemon=False),
        StartStep(
            "redis", ("redis-server", layout.redis_conf), daemon=True, user="redis",
            ready_port=settings.redis_port, ready_address=place.address,
        ),
        StartStep(
            "sentinel", ("redis-sentinel", layout.sentinel_conf), daemon=True, user="redis",
            ready_port=settings.sentinel_port, ready_address=place.address,
            post_start=(layout.sentinel_timers_script,),
        ),
        StartStep(
            "haproxy", ("haproxy", "-db", "-f", layout.haproxy_cfg), daemon=True, user="haproxy",
            ready_port=settings.haproxy_port, ready_address=layout.haproxy_address,
        ),
    ]
    if settings.hst_enabled:
        if not layout.licence_command:
            raise ValueError("hstInstallerUrl is set but the node layout has no way to fetch the licence")
        files.append(BundleFile(layout.hsts_script, render_hsts_script(settings, layout), 0o755))
        steps.append(StartStep("hsts", (layout.hsts_script,), daemon=False))
    # Last: it needs HST Server installed (the step above) and the cluster up.
    if token_verification_key and settings.hst_enabled and place.is_initial_primary:
        step = render_access_key_step(
            settings.tokens.access_key_id, token_verification_key, layout.home, layout.password_command,
            layout.haproxy_address, settings.haproxy_port,
        )
        files += [BundleFile(path, content, mode) for path, content, mode in step.files]
        files.append(BundleFile(step.script_path, step.script, 0o755))
        steps.append(StartStep("access-key", (step.script_path,), daemon=False))
    return Bundle(place.name, place.address, tuple(files), tuple(steps))


def render_redis_conf(settings: ClusterSettings, place: NodePlace, layout: NodeLayout) -> str:
    lines = [
        f"# hst-ha {place.name}: seed configuration, rendered once at first boot.",
        "# Sentinel rewrites this file at failover (replicaof); never re-template it.",
        f"bind {place.address}",
        f"port {settings.redis_port}",
        "protected-mode yes",
        "daemonize no",
        f"dir {layout.data}",
        f"logfile {layout.log}/redis.log",
        f"requirepass {PASSWORD_PLACEHOLDER}",
        # Any node can become a replica after a failover, so every node needs masterauth.
        f"masterauth {PASSWORD_PLACEHOLDER}",
        f"replica-announce-ip {place.address}",
        f"replica-announce-port {settings.redis_port}",
        "replica-read-only yes",
        # IBM: Redis must save the database on every node. AOF bounds loss at a crash to ~1 s.
        "appendonly yes",
        "appendfsync everysec",
        "save 900 1 300 10 60 10000",
        # A primary cut off from its replicas stops acknowledging writes after this lag, so a
        # paused or partitioned old primary cannot take writes that the failover then discards.
        f"min-replicas-to-write {settings.min_replicas_to_write}",
        f"min-replicas-max-lag {settings.min_replicas_max_lag}",
        # Diskless full syncs wait repl-diskless-sync-delay (5 s) for more replicas to share the
        # transfer; once every other node is waiting there is nobody left to wait for. Without this
        # a freshly started cluster has no replica online until 5 s after the first one connects.
        f"repl-diskless-sync-max-replicas {settings.node_count - 1}",
        # After a failover or a node replacement usually ONE replica needs a full sync, and nobody
        # else will come (the old primary is down or still a master): the delay then only keeps
        # the new primary without a synced replica for 5 s, refusing writes (min-replicas-to-write).
        "repl-diskless-sync-delay 0",
    ]
    if not place.is_initial_primary:
        lines.append(f"replicaof {place.initial_primary} {settings.redis_port}")
    return "\n".join(lines) + "\n"


def render_sentinel_conf(settings: ClusterSettings, place: NodePlace, layout: NodeLayout) -> str:
    name = settings.master_name
    lines = [
        f"# hst-ha {place.name}: seed configuration, rendered once at first boot.",
        "# Sentinel persists its state here (CONFIG REWRITE); never re-template it.",
        f"bind {place.address}",
        f"port {settings.sentinel_port}",
        "daemonize no",
        f"dir {layout.data}",
        f"logfile {layout.log}/sentinel.log",
        # The same password on every Sentinel: Sentinels authenticate to each other with it.
        f"requirepass {PASSWORD_PLACEHOLDER}",
        f"sentinel announce-ip {place.address}",
        f"sentinel announce-port {settings.sentinel_port}",
        "sentinel resolve-hostnames no",
        "sentinel deny-scripts-reconfig yes",
        f"sentinel myid {sentinel_id(place.address, settings.sentinel_port)}",
        f"sentinel monitor {name} {place.initial_primary} {settings.redis_port} {settings.sentinel_quorum}",
        f"sentinel auth-pass {name} {PASSWORD_PLACEHOLDER}",
        f"sentinel down-after-milliseconds {name} {settings.down_after_ms}",
        f"sentinel failover-timeout {name} {settings.failover_timeout_ms}",
        f"sentinel parallel-syncs {name} {settings.parallel_syncs}",
        # Pre-seeded topology: without it a fresh Sentinel set learns replicas from INFO only every
        # 10 s and cannot fail over (no good replica) until then.
        f"sentinel config-epoch {name} 0",
        f"sentinel leader-epoch {name} 0",
        "sentinel current-epoch 0",
    ]
    for address in place.addresses[1:]:
        lines.append(f"sentinel known-replica {name} {address} {settings.redis_port}")
    for address in place.addresses:
        if address != place.address:
            lines.append(
                f"sentinel known-sentinel {name} {address} {settings.sentinel_port} "
                f"{sentinel_id(address, settings.sentinel_port)}"
            )
    return "\n".join(lines) + "\n"


# Any whole answer to SENTINEL get-master-addr-by-name: an address, a null reply or an error.
# HAProxy waits `timeout check` for more data whenever an `expect string` does not match yet, so a
# check that fails by its content took the whole timeout (1 s) and a DOWN server was only rechecked
# every 1.25 s. Waiting for the whole answer first and then judging it at once (`min-recv 0`)
# makes a mismatch conclusive in milliseconds, without judging a half-received reply.
_SENTINEL_ANSWER = r"^([*]2\r\n[$][0-9]+\r\n[^\r]*\r\n[$][0-9]+\r\n[0-9]+\r\n|[*]-1\r\n|-[^\r]*\r\n)"


def _resp_bulk(text: str) -> str:
    """The RESP bulk string Sentinel answers with, escaped for an HAProxy `expect string`.
    The length prefix makes the match exact: 10.0.0.1 must not match a reply naming 10.0.0.10."""
    return f"${len(text)}\\r\\n{text}\\r\\n"


def redis_check_ms(settings: ClusterSettings) -> int:
    """Interval and timeout of HAProxy's Redis role checks: 1 s, but within 0.8 x downAfterMs together."""
    return min(1000, max(100, settings.down_after_ms * 2 // 5))


def render_haproxy_cfg(settings: ClusterSettings, place: NodePlace, layout: NodeLayout) -> str:
    """Route to the node that says role:master AND that a majority of Sentinels name as primary
    (the redis-ha guard); the naive role check alone routes to two primaries after a partition."""
    majority = settings.sentinel_majority
    check_ms = redis_check_ms(settings)
    auth = [f"    tcp-check send AUTH\\ {PASSWORD_PLACEHOLDER}\\r\\n", "    tcp-check expect string +OK"]
    lines = [
        f"# hst-ha {place.name}: HST Server's Redis endpoint, always the confirmed primary.",
        "global",
        "    maxconn 4096",
        f"    stats socket {layout.haproxy_socket} mode 600 level admin",
        f"    lua-load {layout.haproxy_fence}",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout check 1s",
        # Hiredis keeps its connection open for HST Server's lifetime; idle sessions must survive.
        "    timeout client 1h",
        "    timeout server 1h",
        # A DOWN server is rechecked every 250 ms: a freshly promoted primary is routed to at once.
        "    default-server check inter 1s downinter 250ms fall 1 rise 1",
        "",
        "frontend redis_primary",
        f"    bind {layout.haproxy_address}:{settings.haproxy_port}",
        "    default_backend redis_primary",
        "",
        "backend redis_primary",
        # A frozen primary must have fallen in HAProxy's eyes (check every `check_ms`, timed out
        # after `check_ms`) before the Sentinels can promote anyone, down-after-milliseconds after
        # the freeze at the earliest: the fence holds a primary that fell, not one that merely paused.
        f"    timeout check {check_ms}ms",
        "    option tcp-check",
        "    tcp-check connect",
        *auth,
        "    tcp-check send PING\\r\\n",
        "    tcp-check expect string +PONG",
        "    tcp-check send info\\ replication\\r\\n",
        "    tcp-check expect rstring role:[a-z]+\\r\\n",  # the whole role line is in: judge it now
        "    tcp-check expect string role:master min-recv 0",
        "    tcp-check send QUIT\\r\\n",
        "    tcp-check expect string +OK",
    ]
    names = [node_name(i) for i in range(len(place.addresses))]
    for name in names:
        lines.append(
            f"    use-server {name} if {{ srv_is_up({name}) }} "
            f"{{ nbsrv({_guard_backend(name)}) ge {majority} }} {{ lua.hst_ha_held({name}) -m str 0 }}"
        )
    for name, address in zip(names, place.addresses):
        # weight 0: a server is reached only through its use-server rule, never by plain load
        # balancing, so a node the Sentinels do not confirm gets no connection at all.
        # rise 2: a Redis that comes back (a restarted old primary still saying role:master) is UP
        # only after a second check, one `inter` later; by then every Sentinel check (every 250 ms)
        # has run again and no longer names it.
        lines.append(
            f"    server {name} {address}:{settings.redis_port} weight 0 on-marked-down shutdown-sessions "
            f"inter {check_ms}ms rise 2"
        )
    for name, address in zip(names, place.addresses):
        lines += [
            "",
            f"backend {_guard_backend(name)}",
            "    option tcp-check",
            "    tcp-check connect",
            *auth,
            f"    tcp-check send SENTINEL\\ get-master-addr-by-name\\ {settings.master_name}\\r\\n",
            # No QUIT here: Sentinel 7.0 answers it with -ERR unknown command.
            f"    tcp-check expect rstring {_SENTINEL_ANSWER}",
            f"    tcp-check expect string {_resp_bulk(address)} min-recv 0",
            # Every 250 ms, UP or not: the fence (hst-ha-fence.lua) acts on what these checks saw, so
            # their age is how long a cut-off primary keeps acknowledging its node's clients. The
            # connect timeout is min(timeout connect, inter): an unreachable Sentinel is DOWN in 0.5 s.
            "    default-server inter 250ms",
        ]
        for peer_name, peer in zip(names, place.addresses):
            lines.append(f"    server sentinel-{peer_name} {peer}:{settings.sentinel_port}")
    return "\n".join(lines) + "\n"


def _guard_backend(name: str) -> str:
    return f"sentinels_name_{name.replace('-', '_')}"


def render_haproxy_fence(settings: ClusterSettings, place: NodePlace) -> str:
    """The fence: a Lua task in HAProxy that holds every OPEN session, and every new one, to the rule.

    1. `use-server` is judged once, when a client connects, and `shutdown-sessions` acts only when
       the server's own role check fails. A primary cut off from the majority still passes its role
       check, so a long-lived client on its node (HST Server's Hiredis connection) kept writing to it
       until min-replicas-max-lag expired, and the failover discarded every one of those writes. The
       task re-judges the rule every 100 ms and ends the sessions of a server a majority of
       Sentinels no longer name (as this HAProxy's checks see them).
    2. A primary that fell (frozen, dead or cut off) and comes back is HELD, unroutable, while any
       other node says role:master, and until it has been the only one for 0.5 s. Between a
       promotion and the Sentinels' switch (about 1 s: Sentinel sees the promotion at its next
       INFO) the Sentinels still name the old primary, so nothing else tells a zombie resumed in
       that second from a primary that merely hiccuped; the promoted replica does. The Redis
       checks run often enough (see render_haproxy_cfg) that a frozen primary has fallen in
       HAProxy's eyes before any promotion can happen.
    """
    names = [node_name(i) for i in range(len(place.addresses))]
    guards = "\n".join(f'    ["{name}"] = "{_guard_backend(name)}",' for name in names)
    return f"""-- hst-ha {place.name}: the fence (rendered by components/bundle/render.py; see render_haproxy_fence).
-- A session may stay on a Redis server only while a majority of Sentinels name that server, and a
-- primary that fell is held while another node says role:master.
local MAJORITY = {settings.sentinel_majority}
local SENTINELS = {len(names)}
local SOLE_MS = {FENCE_SOLE_MS}
local GUARDS = {{
{guards}
}}

local held = {{}}

-- For use-server in haproxy.cfg: "1" while a server is held.
core.register_fetches("hst_ha_held", function(txn, name)
  if held[name] then return "1" end
  return "0"
end)

local function sentinels_naming(backend)
  local count = 0
  for _, sentinel in pairs(core.backends[backend].servers) do
    if string.sub(sentinel:get_stats()["status"], 1, 2) == "UP" then count = count + 1 end
  end
  return count
end

local function observe(servers)
  local seen = {{}}
  for name, backend in pairs(GUARDS) do
    local stats = servers[name]:get_stats()
    local check = string.gsub(stats["check_status"] or "", "^[*] ", "")
    seen[name] = {{
      up = string.sub(stats["status"], 1, 2) == "UP",
      says_master = check == "L7OK",  -- its last role check passed (UP, or rising)
      naming = sentinels_naming(backend),
      open = tonumber(stats["scur"]) or 0,
    }}
  end
  return seen
end

core.register_task(function()
  local servers = core.backends["redis_primary"].servers
  local routable, sole_since = {{}}, {{}}
  while true do
    local now = core.now()
    local ms = now.sec * 1000 + now.usec // 1000
    local seen = observe(servers)
    for name, s in pairs(seen) do
      if routable[name] and not s.up then
        held[name] = true
        core.Warning(string.format("hst-ha fence: %s fell; held while another node says role:master", name))
      end
      if held[name] then
        local rival = nil
        for other, o in pairs(seen) do
          if other ~= name and o.says_master then rival = other end
        end
        if s.up and not rival then
          sole_since[name] = sole_since[name] or ms
          if ms - sole_since[name] >= SOLE_MS then
            held[name], sole_since[name] = nil, nil
            core.Warning(string.format("hst-ha fence: %s released: the only node that says role:master", name))
          end
        else
          sole_since[name] = nil
        end
      end
      local named = s.naming >= MAJORITY
      routable[name] = s.up and s.says_master and named and not held[name]
      if s.open > 0 and (not named or held[name]) then
        servers[name]:shut_sess()
        local why = held[name] and "held" or string.format("%d of %d Sentinels name it", s.naming, SENTINELS)
        core.Warning(string.format("hst-ha fence: ended %d sessions to %s: %s", s.open, name, why))
      end
    end
    core.msleep(100)
  end
end)
"""


# How long a fallen primary must be the only node saying role:master before it is routed to again.
FENCE_SOLE_MS = 500


# Sentinel pings every instance once per min(down-after, ping period), 1 s by default, and judges a
# silent one down-after from its first UNANSWERED ping: a frozen primary (TCP still open) was seen
# down up to 1 s late. The same period rate-limits reconnects, and after +switch-master a reconnect
# to the new primary that landed just past a 1000 ms down-after made a healthy primary +sdown and
# +odown for one tick: a second, false failover in ~5 % of runs. 200 ms bounds both. Sentinel does
# not keep this timer in sentinel.conf, so it is set after every Sentinel start.
SENTINEL_PING_PERIOD_MS = 200


def render_sentinel_timers_script(settings: ClusterSettings, place: NodePlace, layout: NodeLayout) -> str:
    q = shlex.quote
    return f"""#!/bin/bash
# hst-ha {place.name}: Sentinel's ping period (rendered by components/bundle/render.py). Runs after every
# Sentinel start; Sentinel does not keep its timers in sentinel.conf.
set -uo pipefail
log() {{ echo "hst-ha-sentinel-timers {place.name}: $*" >&2; }}
PASSWORD="$({layout.password_command})" || {{ log "could not fetch the Redis password"; exit 1; }}
export REDISCLI_AUTH="$PASSWORD"
answer=""
for _ in $(seq 50); do
  answer="$(timeout 2 redis-cli --no-auth-warning --raw -h {q(place.address)} -p {settings.sentinel_port} SENTINEL DEBUG ping-period {SENTINEL_PING_PERIOD_MS} 2>&1)"
  if [[ "$answer" == OK ]]; then
    log "ping period {SENTINEL_PING_PERIOD_MS} ms"
    exit 0
  fi
  sleep 0.1
done
log "Sentinel did not take ping-period {SENTINEL_PING_PERIOD_MS} (last answer: $answer); it pings every 1 s"
exit 1
"""


def render_boot_script(settings: ClusterSettings, place: NodePlace, layout: NodeLayout) -> str:
    """First-boot preparation: fetch the password, find the current primary, render the final files once."""
    q = shlex.quote
    peers = " ".join(q(a) for a in place.addresses if a != place.address)
    # A replaced node may have to wait for the Sentinels to fail over away from it: detection
    # (downAfterMs) plus election and promotion, bounded by one failover timeout.
    wait_s = (settings.down_after_ms + settings.failover_timeout_ms) // 1000 + 10
    templates = {
        "redis": (layout.template(layout.redis_conf), layout.redis_conf),
        "sentinel": (layout.template(layout.sentinel_conf), layout.sentinel_conf),
        "haproxy": (layout.template(layout.haproxy_cfg), layout.haproxy_cfg),
    }
    return f"""#!/bin/bash
# hst-ha {place.name} boot script (rendered by components/bundle/render.py). Runs at every boot and
# renders the final configuration only once: Redis and Sentinel own their files after that.
set -euo pipefail
umask 077
shopt -u patsub_replacement 2>/dev/null || true

SELF={q(place.address)}
INITIAL_PRIMARY={q(place.initial_primary)}
PEERS=({peers})
REDIS_PORT={settings.redis_port}
SENTINEL_PORT={settings.sentinel_port}
MASTER_NAME={q(settings.master_name)}
DATA={q(layout.data)}
LOG={q(layout.log)}
RUN={q(layout.run)}

log() {{ echo "hst-ha-boot {place.name}: $*" >&2; }}

mkdir -p "$DATA" "$LOG" "$RUN"
if [[ -e {q(layout.redis_conf)} && -e {q(layout.sentinel_conf)} && -e {q(layout.haproxy_cfg)} ]]; then
  log "configuration was rendered at first boot; Redis and Sentinel own it now, leaving it as it is"
  exit 0
fi

PASSWORD="$({layout.password_command})" || {{ log "could not fetch the Redis password (check the instance role and the secret)"; exit 1; }}
if [[ ! "$PASSWORD" =~ ^[{PASSWORD_ALPHABET}]{{16,}}$ ]]; then
  log "the Redis password must be at least 16 characters of [{PASSWORD_ALPHABET}]; regenerate the secret"
  exit 1
fi
# redis-cli reads the password from the environment, so it never shows on a command line.
export REDISCLI_AUTH="$PASSWORD"

ask() {{ timeout 3 redis-cli --no-auth-warning --raw -h "$1" -p "$2" "${{@:3}}" 2>/dev/null; }}

# The primary most surviving Sentinels name, or nothing when no Sentinel answers (a cold start).
sentinels_primary() {{
  local peer answer
  for peer in "${{PEERS[@]}}"; do
    answer="$(ask "$peer" "$SENTINEL_PORT" SENTINEL get-master-addr-by-name "$MASTER_NAME" | head -n 1)" || continue
    [[ -n "$answer" ]] && echo "$answer"
  done | sort | uniq -c | sort -rn | awk 'NR == 1 {{ print $2 }}'
}}

# True when a peer replica holds replicated data, i.e. the cluster ran before this node was (re)built.
cluster_has_data() {{
  local peer offset
  for peer in "${{PEERS[@]}}"; do
    offset="$(ask "$peer" "$REDIS_PORT" INFO replication | tr -d '\\r' | awk -F: '$1 == "master_repl_offset" {{ print $2 }}')" || continue
    [[ "${{offset:-0}}" -gt 0 ]] && return 0
  done
  return 1
}}

PRIMARY="$(sentinels_primary)"
if [[ -z "$PRIMARY" ]]; then
  PRIMARY="$INITIAL_PRIMARY"
  log "no Sentinel answers: cold start with the initial topology (primary $PRIMARY)"
elif [[ "$PRIMARY" == "$SELF" ]] && cluster_has_data; then
  # This node was the primary and comes back empty: starting it as primary would make the
  # replicas resynchronise from an empty dataset. Wait for the Sentinels to promote a replica.
  log "Sentinels still name this rebuilt node as primary; waiting up to {wait_s}s for their failover"
  for _ in $(seq {wait_s}); do
    sleep 1
    PRIMARY="$(sentinels_primary)"
    [[ -n "$PRIMARY" && "$PRIMARY" != "$SELF" ]] && break
  done
  if [[ "$PRIMARY" == "$SELF" || -z "$PRIMARY" ]]; then
    log "no failover happened; refusing to start an empty primary over replicas that hold data"
    exit 1
  fi
fi
log "current primary: $PRIMARY"

render() {{
  local template="$1" target="$2" content
  content="$(<"$template")"
  printf '%s\\n' "${{content//{PASSWORD_PLACEHOLDER}/"$PASSWORD"}}" > "$target.tmp"
  mv "$target.tmp" "$target"
}}
render {q(templates["redis"][0])} {q(templates["redis"][1])}
render {q(templates["sentinel"][0])} {q(templates["sentinel"][1])}
render {q(templates["haproxy"][0])} {q(templates["haproxy"][1])}

if [[ "$PRIMARY" != "$INITIAL_PRIMARY" ]]; then
  # The cluster has failed over since the bundle was rendered: follow the current primary and
  # let Sentinel relearn the replicas (the seeded known-replica lines describe the old topology).
  sed -i -e '/^replicaof /d' {q(layout.redis_conf)}
  [[ "$PRIMARY" != "$SELF" ]] && echo "replicaof $PRIMARY $REDIS_PORT" >> {q(layout.redis_conf)}
  sed -i -e "s/^sentinel monitor $MASTER_NAME .* $REDIS_PORT /sentinel monitor $MASTER_NAME $PRIMARY $REDIS_PORT /" \\
         -e '/^sentinel known-replica /d' {q(layout.sentinel_conf)}
fi
log "configuration rendered"
"""


def render_hsts_script(settings: ClusterSettings, layout: NodeLayout) -> str:
    """Install HST Server and point it at this node's HAProxy (the 3.9.x HA procedure, spec §2.1).

    IBM's recovered text does not say how HST Server passes the Redis password; the aspera.conf
    parameter is `hstRedisPasswordSetting`, which the operator reads off a real node (spec §7)."""
    q = shlex.quote
    installer = settings.hst_installer_url or ""
    if installer.startswith("s3://"):
        bucket, _, key = installer[len("s3://"):].partition("/")
        download = (f"python3 -c 'import sys, boto3; boto3.client(\"s3\").download_file(sys.argv[1], sys.argv[2], sys.argv[3])' "
                    f"{q(bucket)} {q(key)} \"$DEB\"")
    else:
        download = f'curl -fsSL --retry 5 -o "$DEB" {q(installer)}'
    return f"""#!/bin/bash
# hst-ha: install HST Server and configure it for the HA Redis backend. Runs once per node.
set -euo pipefail
umask 077
DONE={q(layout.data)}/.hsts-configured
log() {{ echo "hst-ha-hsts: $*" >&2; }}
[[ -e "$DONE" ]] && {{ log "HST Server was configured at first boot"; exit 0; }}

DEB="$(mktemp --suffix=.deb)"
trap 'rm -f "$DEB"' EXIT
log "downloading the HST Server installer"
{download}
chmod 644 "$DEB"
DEBIAN_FRONTEND=noninteractive apt-get install -y "$DEB"
( umask 022; {layout.licence_command} > /opt/aspera/etc/aspera-license )

# HST Server's own Redis must not run: this node's HA Redis serves the database, through HAProxy.
systemctl stop asperanoded asperaredisd asperarund || true
systemctl disable asperaredisd || true
AS=/opt/aspera/bin/asconfigurator
"$AS" -x "set_server_data;db_type,ha_redis"
"$AS" -x "set_server_data;db_host,127.0.0.1"
"$AS" -x "set_server_data;db_port,{settings.haproxy_port}"
PASSWORD="$({layout.password_command})"
# asconfigurator takes values on its command line only; this runs once, at first boot, as root.
"$AS" -x "set_server_data;{settings.hst_redis_password_setting},$PASSWORD"
unset PASSWORD
systemctl enable --now asperarund asperanoded
touch "$DONE"
log "HST Server uses 127.0.0.1:{settings.haproxy_port} (HAProxy) as its Redis"
"""
