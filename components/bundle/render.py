"""Render one node's bundle: its files and ordered start steps, for the AWS and the local target alike.

Pure Python (no Pulumi import). What is config is rendered here from settings (redis.conf,
sentinel.conf, haproxy.cfg, the node's data file); what is logic (the boot script, the Sentinel
timers step, the HST Server step, the access-key step, the HAProxy fence) ships from `files/`,
as written, comments and all, the same bytes on every node (see `components.bundle.scripts`).

The bundle holds no secret: config files that need a password are rendered as templates with
each role's placeholder (`components.bundle.users`), and the node's boot script fills them in once,
at first boot, with the passwords it fetches itself (`NodeLayout.secrets_command`). Redis and
Sentinel rewrite their files at failover, so nothing here is ever rendered twice on a node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from components.bundle import document, observe, scripts
from components.bundle.access_key import render_access_key_step
from components.bundle.document import NodeSettings
from components.bundle.model import Bundle, BundleFile, NodeLayout, NodePlace, StartStep
from components.bundle.names import (
    FRONTEND,
    GUARD_BACKEND_PREFIX,
    PASSWORD_ALPHABET,
    ROUTED_BACKEND,
    guard_backend,
    node_name,
    sentinel_id,
    sentinel_server_name,
    tls_node_entries,
)
from components.bundle.users import (
    MIN_PASSWORD_LENGTH,
    MONITOR,
    OPERATOR,
    REPLICATION,
    ROLE_KEYS,
    SENTINEL,
    redis_user_lines,
    sentinel_user_lines,
)

if TYPE_CHECKING:
    from components.settings import ClusterSettings

__all__ = [
    "LONGEST_DOWN_AFTER_MS", "LONGEST_FAILOVER_TIMEOUT_MS", "SENTINEL_PING_PERIOD_MS",
    "node_settings", "node_values", "redis_check_ms", "render_bundle", "render_haproxy_cfg",
    "render_haproxy_fence", "render_redis_conf", "render_sentinel_conf", "route_wait_ms", "start_gate_wait_s",
]


# Sentinel pings every instance once per min(down-after, ping period), 1 s by default, and judges a
# silent one down-after from its first UNANSWERED ping: a frozen primary (TCP still open) was seen
# down up to 1 s late. The same period rate-limits reconnects, and after +switch-master a reconnect
# to the new primary that landed just past a 1000 ms down-after made a healthy primary +sdown and
# +odown for one tick: a second, false failover in ~5 % of runs. 200 ms bounds both. Sentinel does
# not keep this timer in sentinel.conf, so it is set after every Sentinel start.
SENTINEL_PING_PERIOD_MS = 200


# The systemd units travel in user data, which no timing change may touch: their start timeouts
# are bounded by the longest timings the settings accept (components/settings.py: failoverTimeoutMs
# at most 30 s, downAfterMs shorter than it), not by the document's. Each script bounds its own
# wait by the document's values (node.env), inside these.
LONGEST_FAILOVER_TIMEOUT_MS = 30_000
LONGEST_DOWN_AFTER_MS = LONGEST_FAILOVER_TIMEOUT_MS
# The preparation also fetches the code archive and the cluster document first, each bounded to
# about a minute (components/aws/cloud_config.py, components/bundle/boot.py).
PREPARE_FETCHES_S = 150


def node_settings(settings: ClusterSettings | NodeSettings, addresses: tuple[str, ...]) -> NodeSettings:
    """The renderer's input, always through the cluster document (built, dumped and parsed back), so
    the local target and the tests render from exactly what a node reads at boot."""
    if isinstance(settings, NodeSettings):
        return settings
    return document.parse(document.dump(document.build(settings, addresses))).settings


def render_bundle(
    settings: ClusterSettings | NodeSettings, place: NodePlace, layout: NodeLayout, *,
    token_verification_key: str | None = None, access_key_id: str | None = None,
) -> Bundle:
    """The whole of one node: its data file, seed config templates, its scripts and the ordered start steps.

    With `token_verification_key` (the bearer-token signing key's public PEM) and HST Server
    installed, the initial primary also registers the bootstrap access key (`access_key_id`, by
    default the settings' own) with that key, last.
    """
    if len(place.addresses) != settings.node_count:
        raise ValueError(f"{len(place.addresses)} node addresses given for nodeCount {settings.node_count}")
    if not isinstance(settings, NodeSettings):
        access_key_id = access_key_id or settings.tokens.access_key_id
    settings = node_settings(settings, place.addresses)
    if settings.tls_enabled and not layout.tls_command:
        raise ValueError("tlsEnabled is true but the node layout has no way to fetch the TLS secret")
    values = node_values(settings, place, layout)
    files = [
        BundleFile(layout.template(layout.redis_conf), render_redis_conf(settings, place, layout), 0o600),
        BundleFile(layout.template(layout.sentinel_conf), render_sentinel_conf(settings, place, layout), 0o600),
        BundleFile(layout.template(layout.haproxy_cfg), render_haproxy_cfg(settings, place, layout), 0o600),
        BundleFile(layout.haproxy_fence, render_haproxy_fence(), 0o644),
        BundleFile(layout.boot_script, scripts.shipped(scripts.BOOT), 0o755),
        BundleFile(layout.secret_script, scripts.shipped(scripts.SECRET), 0o755),
        BundleFile(layout.sentinel_timers_script, scripts.shipped(scripts.SENTINEL_TIMERS), 0o755),
        BundleFile(layout.redis_start_gate, scripts.shipped(scripts.REDIS_START_GATE), 0o755),
    ]
    steps = [
        # The boot script retries the secret for a minute and may wait for a failover away from
        # a rebuilt primary.
        StartStep("prepare", (layout.boot_script,), daemon=False, prepares=True, timeout_s=PREPARE_TIMEOUT_S),
        StartStep(
            "redis", ("redis-server", layout.redis_conf), daemon=True, user="redis",
            ready_port=settings.redis_port, ready_address=place.address,
            pre_start=(layout.redis_start_gate,), pre_start_timeout_s=GATE_TIMEOUT_S,
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
    # hst-ha-secret runs a module on every node; observers add theirs.
    modules = list(scripts.NODE_MODULES)
    if layout.sinks is not None:
        scripts.merge_env(values, observe.observer_values(settings, layout))
        files += observe.observer_files(layout)
        modules += observe.RUNTIME_MODULES
        steps += observe.observer_steps(place, layout)
    files += scripts.module_files(layout.home, modules)
    if settings.hst_enabled:
        if not layout.licence_command:
            raise ValueError("hstInstallerUrl is set but the node layout has no way to fetch the licence")
        scripts.merge_env(values, {
            "HST_INSTALLER_URL": settings.hst_installer_url or "",
            "HST_INSTALLER_SHA256": settings.hst_installer_sha256 or "",
            "HST_REDIS_PASSWORD_SETTING": settings.hst_redis_password_setting or "",
            "LICENCE_COMMAND": layout.licence_command,
        })
        files.append(BundleFile(layout.hsts_script, scripts.shipped(scripts.HSTS), 0o755))
        steps.append(StartStep("hsts", (layout.hsts_script,), daemon=False))
    # Last: it needs HST Server installed (the step above) and the cluster up.
    if token_verification_key and settings.hst_enabled and place.is_initial_primary:
        if not access_key_id:
            raise ValueError("a token verification key is given but no access key id to register it under")
        step = render_access_key_step(
            access_key_id, token_verification_key, layout.home, layout.haproxy_address,
            settings.haproxy_port,
        )
        scripts.merge_env(values, step.env)
        files += [BundleFile(path, content, mode) for path, content, mode in step.files]
        files.append(BundleFile(step.script_path, step.script, 0o755))
        steps.append(StartStep("access-key", (step.script_path,), daemon=False))
    # No secret in it (a command that fetches the secret, not a password), and the Sentinel timers step reads it
    # as the redis user.
    files.insert(0, BundleFile(layout.node_env, scripts.node_env(place.name, values), 0o644))
    return Bundle(place.name, place.address, tuple(files), tuple(steps))


def _failover_wait_s(down_after_ms: int, failover_timeout_ms: int) -> int:
    # A replaced node may have to wait for the Sentinels to fail over away from it: detection
    # (downAfterMs) plus election and promotion, bounded by one failover timeout.
    return (down_after_ms + failover_timeout_ms) // 1000 + 10


def node_values(settings: NodeSettings, place: NodePlace, layout: NodeLayout) -> dict[str, scripts.EnvValue]:
    """What every node's scripts read from its data file (the HST Server and access-key steps add theirs)."""
    failover_wait_s = _failover_wait_s(settings.down_after_ms, settings.failover_timeout_ms)
    return {
        "NODE_NAME": place.name,
        "SELF": place.address,
        "INITIAL_PRIMARY": place.initial_primary,
        "PEERS": " ".join(a for a in place.addresses if a != place.address),
        "REDIS_PORT": settings.redis_port,
        "SENTINEL_PORT": settings.sentinel_port,
        "HAPROXY_ADDRESS": layout.haproxy_address,
        "HAPROXY_PORT": settings.haproxy_port,
        "MASTER_NAME": settings.master_name,
        "DATA": layout.data,
        "LOG": layout.log,
        "RUN": layout.run,
        "REDIS_CONF": layout.redis_conf,
        "SENTINEL_CONF": layout.sentinel_conf,
        "HAPROXY_CFG": layout.haproxy_cfg,
        "REDIS_CONF_TEMPLATE": layout.template(layout.redis_conf),
        "SENTINEL_CONF_TEMPLATE": layout.template(layout.sentinel_conf),
        "HAPROXY_CFG_TEMPLATE": layout.template(layout.haproxy_cfg),
        "SECRETS_COMMAND": layout.secrets_command,
        # Empty without tlsEnabled: every redis-cli in the scripts adds --tls --cacert only when it is set.
        "TLS_CA_FILE": layout.tls_ca_file if settings.tls_enabled else "",
        "TLS_CERT_FILE": layout.tls_cert_file if settings.tls_enabled else "",
        "TLS_KEY_FILE": layout.tls_key_file if settings.tls_enabled else "",
        "TLS_COMMAND": (layout.tls_command or "") if settings.tls_enabled else "",
        # The TLS secret's entries for this node, in the order of the three files above.
        "TLS_DOCUMENT_ENTRIES": " ".join(tls_node_entries(place.address)) if settings.tls_enabled else "",
        "SECRET_ROLES": " ".join(ROLE_KEYS),
        "PASSWORD_ALPHABET": PASSWORD_ALPHABET,
        "MIN_PASSWORD_LENGTH": MIN_PASSWORD_LENGTH,
        "MONITOR_REDIS_USER": MONITOR.redis_user or "",
        "OPERATOR_USER": OPERATOR.sentinel_user or "",
        "FAILOVER_WAIT_S": failover_wait_s,
        "SENTINEL_PING_PERIOD_MS": SENTINEL_PING_PERIOD_MS,
        "SENTINEL_MAJORITY": settings.sentinel_majority,
        "DOWN_AFTER_MS": settings.down_after_ms,
        "START_GATE_WAIT_S": start_gate_wait_s(settings),
        "START_GATE_COLD_WAIT_S": START_GATE_COLD_WAIT_S,
    }


def start_gate_wait_s(settings: NodeSettings) -> int:
    """How long the Redis start gate (files/hst-ha-redis-start-gate.sh) waits for a failover to
    finish or a majority to agree: detection (downAfterMs), election, promotion and the Sentinels'
    switch, with margin."""
    return _start_gate_wait_s(settings.down_after_ms)


def _start_gate_wait_s(down_after_ms: int) -> int:
    return down_after_ms // 1000 + 15


# When no Sentinel answers, how long the gate waits for one: on a whole-cluster restart the
# Sentinels start beside Redis and answer within a second or two.
START_GATE_COLD_WAIT_S = 5
# The units' bounds (see LONGEST_DOWN_AFTER_MS): the boot script may wait for a failover, and
# retries the secret for a minute; the gate waits at most START_GATE_WAIT_S.
PREPARE_TIMEOUT_S = _failover_wait_s(LONGEST_DOWN_AFTER_MS, LONGEST_FAILOVER_TIMEOUT_MS) + 120 + PREPARE_FETCHES_S
GATE_TIMEOUT_S = _start_gate_wait_s(LONGEST_DOWN_AFTER_MS) + 15


def render_redis_conf(settings: NodeSettings, place: NodePlace, layout: NodeLayout) -> str:
    lines = [
        f"# hst-ha {place.name}: seed configuration, rendered once at first boot.",
        "# Sentinel rewrites this file at failover (replicaof); never re-template it.",
        f"bind {place.address}",
        *_listen_lines(settings, settings.redis_port, layout),
        "protected-mode yes",
        "daemonize no",
        f"dir {layout.data}",
        f"logfile {layout.log}/redis.log",
        # One user per role (components/bundle/users.py); the `default` user is HST Server's, so
        # there is no requirepass line. CONFIG REWRITE writes the users back (hashed).
        *redis_user_lines(),
        # Any node can become a replica after a failover, so every node needs masterauth.
        f"masteruser {REPLICATION.redis_user}",
        f"masterauth {REPLICATION.placeholder}",
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


def _listen_lines(settings: NodeSettings, port: int, layout: NodeLayout) -> list[str]:
    """Redis's and Sentinel's listener: TLS only with tlsEnabled (no plaintext port on the node's address)."""
    if not settings.tls_enabled:
        return [f"port {port}"]
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {layout.tls_cert_file}",
        f"tls-key-file {layout.tls_key_file}",
        f"tls-ca-cert-file {layout.tls_ca_file}",
        # Redis and Sentinel present the node certificate as clients too (replication, Sentinel links)
        # and it is verified; HAProxy's checks and the tools present none. What a client may do is the
        # ACL user's business (components/bundle/users.py): every connection still authenticates.
        "tls-auth-clients optional",
        # Replication, and Sentinel's links to Redis and to the other Sentinels, over TLS.
        "tls-replication yes",
        "tls-cluster no",
        'tls-protocols "TLSv1.2 TLSv1.3"',
    ]


def render_sentinel_conf(settings: NodeSettings, place: NodePlace, layout: NodeLayout) -> str:
    name = settings.master_name
    lines = [
        f"# hst-ha {place.name}: seed configuration, rendered once at first boot.",
        "# Sentinel persists its state here (CONFIG REWRITE); never re-template it.",
        f"bind {place.address}",
        *_listen_lines(settings, settings.sentinel_port, layout),
        "daemonize no",
        f"dir {layout.data}",
        f"logfile {layout.log}/sentinel.log",
        # Sentinel's own users: `default` (its requirepass, in ACL form) answers read-only queries;
        # Sentinels authenticate to each other as the Sentinel role's user.
        *sentinel_user_lines(),
        f"sentinel sentinel-user {SENTINEL.sentinel_user}",
        f"sentinel sentinel-pass {SENTINEL.placeholder}",
        f"sentinel announce-ip {place.address}",
        f"sentinel announce-port {settings.sentinel_port}",
        "sentinel resolve-hostnames no",
        "sentinel deny-scripts-reconfig yes",
        f"sentinel myid {sentinel_id(place.address, settings.sentinel_port)}",
        f"sentinel monitor {name} {place.initial_primary} {settings.redis_port} {settings.sentinel_quorum}",
        f"sentinel auth-user {name} {SENTINEL.redis_user}",
        f"sentinel auth-pass {name} {SENTINEL.placeholder}",
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


def redis_check_ms(settings: NodeSettings) -> int:
    """Interval and timeout of HAProxy's Redis role checks: 1 s, but within 0.8 x downAfterMs together."""
    return min(1000, max(100, settings.down_after_ms * 2 // 5))


def route_wait_ms(settings: NodeSettings) -> int:
    """How long HAProxy holds a new client while no server is routable: a failover's detection
    (downAfterMs) plus the promotion and the Sentinels' switch, about 2 s (benchmarks/results/)."""
    return settings.down_after_ms + 2000


def render_haproxy_cfg(settings: NodeSettings, place: NodePlace, layout: NodeLayout) -> str:
    """Route to the node that says role:master AND that a majority of Sentinels name as primary
    (the redis-ha guard); the naive role check alone routes to two primaries after a partition."""
    majority = settings.sentinel_majority
    check_ms = redis_check_ms(settings)
    # With tlsEnabled HAProxy reaches Redis (traffic and checks) and Sentinel (checks) over TLS and
    # verifies their certificates against the cluster CA; its own frontend stays plaintext on loopback.
    tls = f" ssl verify required ca-file {layout.tls_ca_file}" if settings.tls_enabled else ""
    connect_tls = " ssl" if settings.tls_enabled else ""  # the check's own connect: TLS, verified as the server's
    # The monitoring user: on Redis PING/INFO/ROLE only, on Sentinel read-only queries (its `default`).
    def auth(user: str | None) -> list[str]:
        return [f"    tcp-check send AUTH\\ {user}\\ {MONITOR.placeholder}\\r\\n", "    tcp-check expect string +OK"]

    lines = [
        f"# hst-ha {place.name}: HST Server's Redis endpoint, always the confirmed primary.",
        "global",
        "    maxconn 4096",
        # `level user`: the code reads only `show stat`/`show servers state` (runtime/haproxy_admin.py);
        # the fence acts through Lua, and a former worker asks the current one's fence over it.
        f"    stats socket {layout.haproxy_socket} mode 600 level user",
        # The fence's only inputs besides HAProxy's own backends: the names it must look for.
        f"    setenv HST_HA_SOCKET {layout.haproxy_socket}",
        f"    setenv HST_HA_ROUTED_BACKEND {ROUTED_BACKEND}",
        f"    setenv HST_HA_GUARD_PREFIX {GUARD_BACKEND_PREFIX}",
        f"    setenv HST_HA_ROUTE_WAIT_MS {route_wait_ms(settings)}",
        f"    lua-load {layout.haproxy_fence}",
        *([f"    lua-load {observe.fence_metrics(layout)}"] if layout.sinks is not None else []),
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
        f"frontend {FRONTEND}",
        f"    bind {layout.haproxy_address}:{settings.haproxy_port}",
        # While no server is routable a new client waits for one (the fence's action), bounded. A
        # content rule that yields is cut short once nothing more can come ("aborting Lua processing
        # on expired timeout", after ~4 s here) unless the inspect delay is longer than its wait;
        # a rule that has decided does not wait for the delay.
        f"    tcp-request inspect-delay {route_wait_ms(settings) + 1000}ms",
        "    tcp-request content lua.hst_ha_await_route",
        f"    default_backend {ROUTED_BACKEND}",
        "",
        f"backend {ROUTED_BACKEND}",
        # A frozen primary must have fallen in HAProxy's eyes (check every `check_ms`, timed out
        # after `check_ms`) before the Sentinels can promote anyone, down-after-milliseconds after
        # the freeze at the earliest: the fence holds a primary that fell, not one that merely paused.
        f"    timeout check {check_ms}ms",
        # A blocking client (no socket timeout, hiredis's default) waits as long as HAProxy holds its
        # connection. With the defaults (`retries 3`, and before each retry a turn-around of
        # min(timeout connect, 1 s)) a connection sent to a primary that had just died was held
        # 3.0 s, while clients with a timeout had long reconnected: they recovered 0.8 s sooner. So a
        # failed connect is retried once after 100 ms, then the client's connection is closed and it
        # reconnects, judged afresh by the rules below. 100 ms is ample for a connect inside a VPC
        # (or on loopback); a lost SYN only costs that one retry. No `option redispatch`: the
        # servers have weight 0 and are reached only through use-server, so a redispatch could only
        # fail the same way, later.
        "    timeout connect 100ms",
        "    retries 1",
        "    option tcp-check",
        f"    tcp-check connect{connect_tls}",
        *auth(MONITOR.redis_user),
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
            f"{{ nbsrv({guard_backend(name)}) ge {majority} }} {{ lua.hst_ha_held({name}) -m str 0 }}"
        )
    for name, address in zip(names, place.addresses, strict=True):
        # weight 0: a server is reached only through its use-server rule, never by plain load
        # balancing, so a node the Sentinels do not confirm gets no connection at all.
        # rise 2: a Redis that comes back (a restarted old primary still saying role:master) is UP
        # only after a second check, one `inter` later; by then every Sentinel check (every 250 ms)
        # has run again and no longer names it.
        lines.append(
            f"    server {name} {address}:{settings.redis_port} weight 0 on-marked-down shutdown-sessions "
            f"inter {check_ms}ms rise 2{tls}"
        )
    for name, address in zip(names, place.addresses, strict=True):
        lines += [
            "",
            f"backend {guard_backend(name)}",
            "    option tcp-check",
            f"    tcp-check connect{connect_tls}",
            *auth(MONITOR.sentinel_user),
            f"    tcp-check send SENTINEL\\ get-master-addr-by-name\\ {settings.master_name}\\r\\n",
            # No QUIT here: Sentinel 7.0 answers it with -ERR unknown command.
            f"    tcp-check expect rstring {_SENTINEL_ANSWER}",
            f"    tcp-check expect string {_resp_bulk(address)} min-recv 0",
            # Every 250 ms, UP or not: the fence (hst-ha-fence.lua) acts on what these checks saw, so
            # their age is how long a cut-off primary keeps acknowledging its node's clients. The
            # connect timeout is min(timeout connect, inter), 250 ms: on a loaded node one slow accept
            # failed a check ("Layer4 timeout, check duration 251ms", seen on emulated nodes), and with fall 1 two
            # such guards flapping together made the fence end every session of a healthy primary.
            # fall 2: one slow check is not a verdict; an unreachable Sentinel is DOWN after two
            # (about one check period later than with fall 1: the partition residue's bound grows
            # by that, measured in benchmarks/results/node-drills.md).
            f"    default-server inter 250ms fall 2{tls}",
        ]
        for peer_name, peer in zip(names, place.addresses, strict=True):
            lines.append(f"    server {sentinel_server_name(peer_name)} {peer}:{settings.sentinel_port}")
    if layout.sinks is not None:
        lines += observe.render_haproxy_metrics(place)
    return "\n".join(lines) + "\n"


def render_haproxy_fence() -> str:
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
       that second from a primary that merely hiccuped; the promoted replica does.
    3. A starting HAProxy counts every server and guard UP until its first check: a node restarted
       whole after a failover routed its first clients to the old primary (still role:master until
       converted) in 5 of 5 runs. Every server is held until each role check and each guard has run
       once (check status INI; 2.6 has no `init-state`, and this works on 2.6 and 2.8 alike).

    The task is `files/hst-ha-fence.lua`, the same on every node: it finds the routed backend and
    the guard backends' prefix in haproxy.cfg's `setenv` lines, and each server's guard, its
    Sentinels and their majority in HAProxy's own backends. The Redis checks run often enough (see
    render_haproxy_cfg) that a frozen primary has fallen in HAProxy's eyes before any promotion.
    """
    return scripts.shipped(scripts.FENCE)
