"""Serialize a node as cloud-config user data for an Ubuntu 24.04 EC2 instance.

Pure Python (PyYAML, no Pulumi). The user data holds only what cannot change without replacing the
node: its identity and where to read the cluster document (`node.json`, components/bundle/boot.py),
the code by digest (one S3 object whose key is its SHA-256: the scripts, the renderer and the
observers' modules, `code_archive`) and the systemd units. The bundle's daemon steps become units
that require its `prepares` step, itself a oneshot unit run at every boot until it succeeds: it
fetches the code (once), renders the node's files from the cluster document, then runs the boot
script (so a transient S3, SSM or Secrets Manager failure at first boot is retried). The other
one-shot steps run from `runcmd`, in the bundle's order, once per instance.

Timings and membership live in the document, not here: changing them changes no user data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import shlex
import tarfile
from importlib import resources
from typing import TYPE_CHECKING

import yaml

from components.bundle import Bundle, BundleFile, NodeLayout, NodePlace, Sinks, StartStep, render_bundle, scripts
from components.bundle.boot import NodeIdentity, node_bundle
from components.bundle.document import NodeSettings
from components.bundle.observe import RUNTIME_MODULES

if TYPE_CHECKING:
    from components.settings import ClusterSettings

# EC2 rejects user data over 16 KiB (raw, before base64). With the configuration in the cluster
# document and the code fetched by digest, a 15-node cluster's largest (the initial primary with
# HST Server and a 4096-bit verification key) stays well under it, as readable text.
USER_DATA_LIMIT = 16 * 1024

PACKAGES = ("redis-server", "redis-sentinel", "redis-tools", "haproxy", "python3-boto3", "curl",
            "prometheus-redis-exporter", "python3-redis")

# Distribution services that would run a second, unauthenticated Redis/Sentinel/HAProxy.
# The exporter's own unit would listen on every address (:9121) without credentials.
DISTRO_SERVICES = ("redis-server", "redis-sentinel", "haproxy", "prometheus-redis-exporter")

BINARIES = {
    "redis-server": "/usr/bin/redis-server",
    "redis-sentinel": "/usr/bin/redis-sentinel",
    "haproxy": "/usr/sbin/haproxy",
}


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line file contents as YAML literal blocks, so preview diffs read like the files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


# Longest a post-start step may run (it fetches the secret, then retries its command): past this it
# is ended and the daemon keeps running with its defaults.
POST_START_BOUND_S = 60


# A crashed daemon is started again after this long. Redis's start gate (its ExecStartPre) waits for
# the failover when a Sentinel has missed the primary for half of down-after; with 2 s here the gate
# first asked 2.5 s after a kill -9 (seen on the node target: 2519 ms), so at the default 5000 ms every
# crash of a primary cost a failover although Redis was back well inside down-after. 1 s leaves the
# gate about 1 s of margin at 5000 ms; the other daemons keep 2 s.
RESTART_S = 2
GATED_RESTART_S = 1


def unit_name(step: StartStep) -> str:
    return f"hst-ha-{step.name}.service"


# The preparation's retries: every 30 s, at most 20 starts an hour, so a Secrets Manager outage or
# a missing permission is retried for about half an hour (each try also retries the fetch for a
# minute), then the unit fails visibly (`systemctl status hst-ha-prepare`) until the next boot or
# `systemctl restart hst-ha-prepare`.
PREPARE_RESTART_S = 30
PREPARE_START_LIMIT = (20, 3600)  # (burst, interval in seconds)


def _ownership(layout: NodeLayout) -> list[str]:
    """chown lines: the boot script runs as root, the daemons as their own users."""
    owners = {"redis": [layout.data, layout.log], "haproxy": [layout.run, layout.haproxy_cfg]}
    return [f"ExecStartPost=/bin/chown -R {user}:{user} {' '.join(paths)}" for user, paths in owners.items()]


def render_prepare_unit(bundle: Bundle, step: StartStep, layout: NodeLayout, code_url: str, region: str) -> str:
    burst, interval = PREPARE_START_LIMIT
    daemons = [unit_name(s).removesuffix(".service") for s in bundle.start_steps if s.daemon]  # 16 KiB is tight
    return "\n".join([
        "[Unit]",
        f"Description=hst-ha {step.name}: secrets and first-boot configuration ({bundle.node}, {bundle.address})",
        "After=network-online.target",
        "Wants=network-online.target",
        f"StartLimitIntervalSec={interval}",
        f"StartLimitBurst={burst}",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        # `python3 -m components.bundle.boot` runs the code archive's renderer from the node's home.
        f"WorkingDirectory={layout.home}",
        f"ExecStartPre=/usr/bin/python3 {fetch_code_script(layout)} {code_url} {layout.home} {region}",
        f"ExecStartPre=/usr/bin/python3 -m components.bundle.boot {node_json(layout)}",
        f"ExecStart={' '.join(step.argv)}",
        *_ownership(layout),
        # A failed run fails the start jobs already queued for the daemons that require it ("Dependency
        # failed", systemd 252 on the node target: with the secret unreadable at first boot, runcmd's
        # start of Redis failed and Redis stayed down once the preparation succeeded). So a run that
        # succeeds starts them itself; --no-block: they are ordered after this unit's start.
        f"ExecStartPost=/bin/systemctl --no-block start {' '.join(daemons)}",
        "Restart=on-failure",
        f"RestartSec={PREPARE_RESTART_S}",
        f"TimeoutStartSec={step.timeout_s or 'infinity'}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def _haproxy_service(argv: list[str]) -> tuple[list[str], list[str]]:
    """HAProxy in master-worker mode under systemd (`-Ws`, as the distribution's own unit): a reload
    re-reads haproxy.cfg without a restart. ExecReload checks the file first (a bad one fails the
    reload and the running worker stays), then SIGUSR2 to the master, whose pid stays the unit's main
    pid; it starts a new worker and the former one stops listening, keeping the sessions it carries
    until they end: it runs no health check, so its fence follows the new worker's verdicts
    (components/bundle/files/hst-ha-fence.lua), as on the local target.
    The bundle's argv is the foreground one (`-db`), which master-worker mode replaces."""
    config = argv[argv.index("-f") + 1]
    start = [argv[0], "-Ws", *(a for a in argv[1:] if a != "-db")]
    return start, [
        "Type=notify",
        f"ExecReload={argv[0]} -c -q -f {config}",
        "ExecReload=/bin/kill -USR2 $MAINPID",
        # The master gets SIGTERM on stop and ends its workers itself; leftovers get it after.
        "KillMode=mixed",
    ]


def render_unit(bundle: Bundle, step: StartStep, requires: str | None = None) -> str:
    argv = [BINARIES.get(step.argv[0], step.argv[0]), *step.argv[1:]]
    service: list[str] = ["Type=simple"]
    if step.argv[0] == "haproxy":
        argv, service = _haproxy_service(argv)
    after = ["network-online.target", *([requires] if requires else [])]
    lines = [
        "[Unit]",
        f"Description=hst-ha {step.name} ({bundle.node}, {bundle.address})",
        # Restart=always must not give up after 5 quick failures (a gate refusing while a failover
        # is stuck): every retry is bounded and logged by the gate itself.
        *(["StartLimitIntervalSec=0"] if step.pre_start else []),
        f"After={' '.join(after)}",
        "Wants=network-online.target",
        *([f"Requires={requires}"] if requires else []),
        "",
        "[Service]",
        *service,
    ]
    if step.user:
        lines += [f"User={step.user}", f"Group={step.user}"]
    if step.workdir:
        lines.append(f"WorkingDirectory={step.workdir}")
    if step.pre_start:
        # No "-": when the gate refuses (a master no Sentinel majority names) the daemon must not
        # start; Restart=always runs the gate again after RestartSec.
        lines.append(f"ExecStartPre={' '.join(step.pre_start)}")
        # The gate may wait for a failover to finish; the start must not time out before it does.
        lines.append(f"TimeoutStartSec={step.pre_start_timeout_s + 30}")
    lines.append(f"ExecStart={' '.join(argv)}")
    if step.post_start:
        # "-": if it fails the daemon keeps running with its defaults (slower, still correct) and the
        # script's reason is in the journal; failing the unit would stop a working Sentinel.
        # "-" covers a failure, not a timeout: a step still running at TimeoutStartSec fails the unit
        # and systemd kills the daemon (seen on the node target with the secret unreachable). So the
        # step is bounded by `timeout`, well inside the unit's start timeout.
        lines.append(f"ExecStartPost=-/usr/bin/timeout {POST_START_BOUND_S} {' '.join(step.post_start)}")
        lines.append(f"TimeoutStartSec={POST_START_BOUND_S + 30}")
    lines += [
        # A crashed daemon comes back from its own (possibly Sentinel-rewritten) config.
        "Restart=always",
        f"RestartSec={GATED_RESTART_S if step.pre_start else RESTART_S}",
        "LimitNOFILE=65536",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _write_file(f: BundleFile) -> dict:
    # cloud-init writes root:root and 0644 unless told otherwise: only what differs is spelled out.
    entry: dict = {"path": f.path}
    if f.mode != 0o644:
        entry["permissions"] = f"0{f.mode:o}"
    entry["content"] = f.content
    return entry


def node_json(layout: NodeLayout) -> str:
    return f"{layout.etc}/node.json"


def fetch_code_script(layout: NodeLayout) -> str:
    return f"{layout.bin}/hst-ha-fetch-code"


# Every node module the code archive carries: the renderer (the node renders its files from the
# cluster document with it), the shipped scripts, the modules every bundle and the observers run
# (hst-ha-secret's checks; the observers), and the membership steps a node runs for the deployer
# (switchover, Sentinel reset: components/runtime/membership.py).
_RUNTIME_MODULES = (*scripts.NODE_MODULES, *RUNTIME_MODULES, "quorum", "switchover", "membership")


def node_code(home: str) -> list[BundleFile]:
    """The code archive's files, as in the repository (the same on every node and for any settings)."""
    bundle = resources.files("components.bundle")
    files = []
    for entry in sorted(bundle.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py"):
            files.append(BundleFile(f"{home}/components/bundle/{entry.name}", entry.read_text(encoding="utf-8")))
    for entry in sorted(bundle.joinpath("files").iterdir(), key=lambda e: e.name):
        files.append(BundleFile(f"{home}/components/bundle/files/{entry.name}", entry.read_text(encoding="utf-8")))
    return files + scripts.module_files(home, _RUNTIME_MODULES)


def code_archive(files: list[BundleFile], home: str) -> tuple[bytes, str]:
    """A reproducible tar.gz of `files`, paths relative to `home`, and its SHA-256 (the object's key:
    changed code is a new key, so new user data, so a replaced instance)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for f in sorted(files, key=lambda f: f.path):
            data = f.content.encode()
            info = tarfile.TarInfo(posixpath.relpath(f.path, home))
            info.size, info.mode, info.mtime = len(data), f.mode, 0
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(raw.getvalue(), mtime=0)
    return packed, hashlib.sha256(packed).hexdigest()


# Run by the preparation before anything else, at every boot until it succeeds; fetches only when
# the archive extracted last is not this one. Every call is bounded: an unreachable S3 fails this
# run in about a minute, and the preparation is retried.
_FETCH_CODE = """#!/usr/bin/python3
import io, pathlib, sys, tarfile, time, boto3, botocore.config as c
url, home, region = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
marker = home / "components" / ".archive"
if marker.exists() and marker.read_text() == url:
    sys.exit(0)
bucket, key = url[len("s3://"):].split("/", 1)
config = c.Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1})
s3 = boto3.client("s3", region_name=region, config=config)
deadline = time.monotonic() + 60
while True:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(); break
    except Exception as exc:
        print(f"hst-ha: code archive not readable yet ({type(exc).__name__}), retrying", file=sys.stderr)
        if time.monotonic() > deadline: sys.exit("hst-ha: code archive not readable for 60 s, giving up")
        time.sleep(2)
with tarfile.open(fileobj=io.BytesIO(body)) as tar:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(home, filter="data")
    else:  # Python before 3.11.4 (Debian 12): only regular files under home, as code_archive makes them
        for m in tar.getmembers():
            if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/"):
                sys.exit(f"hst-ha: unexpected member {m.name!r} in the code archive")
        tar.extractall(home)
marker.write_text(url)
"""


def render_cloud_config(bundle: Bundle, identity: NodeIdentity, code_url: str, install_packages: bool = True) -> str:
    """The `#cloud-config` document for one node, readable text: its identity file, the code fetcher
    and the units. The bundle (rendered from the cluster document) gives the units and one-shot
    steps, which depend on no timing; its files are rendered again on the node, from the document.
    `install_packages` False (amiHasPackages: a baked image) leaves apt alone."""
    layout = identity.layout
    if not code_url.startswith("s3://"):
        raise ValueError(f"{bundle.node}: code_url must be an s3:// URL, got {code_url!r}")
    prepares = [s for s in bundle.start_steps if s.prepares]
    if len(prepares) != 1:
        raise ValueError(f"{bundle.node}: the bundle must have exactly one preparation step, has {len(prepares)}")
    prepare = prepares[0]
    daemons = [s for s in bundle.start_steps if s.daemon]
    files = [
        BundleFile(node_json(layout), identity.to_json(), 0o644),
        BundleFile(fetch_code_script(layout), _FETCH_CODE, 0o755),
        BundleFile(f"/etc/systemd/system/{unit_name(prepare)}",
                   render_prepare_unit(bundle, prepare, layout, code_url, identity.region)),
    ]
    files += [
        BundleFile(f"/etc/systemd/system/{unit_name(s)}", render_unit(bundle, s, unit_name(prepare)), 0o644)
        for s in daemons
    ]
    runcmd: list[list[str]] = [["systemctl", "disable", "--now", *DISTRO_SERVICES], ["systemctl", "daemon-reload"]]
    # Enabled before the daemons: `enable --now` of the first daemon starts it (Requires=) and waits.
    runcmd.append(["systemctl", "enable", unit_name(prepare)])
    for step in bundle.start_steps:
        if step.prepares:
            continue
        if step.daemon:
            runcmd.append(["systemctl", "enable", "--now", unit_name(step)])
        else:
            runcmd.append(list(step.argv))
    # Without packages cloud-init runs no apt at all: a baked image needs no mirror (closed egress).
    packages = {"package_update": True, "packages": list(PACKAGES)} if install_packages else {}
    document = {
        **packages,
        "write_files": [_write_file(f) for f in files],
        "runcmd": runcmd,
    }
    header = (f"#cloud-config\n# hst-ha {bundle.node} ({bundle.address}); settings: SSM parameter "
              f"{identity.parameter}; boot log: /var/log/cloud-init-output.log\n")
    text = header + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000, default_flow_style=False)
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"user data for {bundle.node} is {len(text.encode())} bytes, over EC2's {USER_DATA_LIMIT}")
    return text


def node_user_data(settings: ClusterSettings | NodeSettings, place: NodePlace, layout: NodeLayout, *, parameter: str,
                   region: str, code_url: str, token_verification_key: str | None = None,
                   access_key_id: str | None = None, install_packages: bool = True) -> str:
    """One node's user data: `render_cloud_config` of its bundle and identity. Only the initial primary
    carries the access key (it registers it once, at its first boot)."""
    key = token_verification_key if place.is_initial_primary else None
    if not key:
        access_key_id = None
    elif access_key_id is None and not isinstance(settings, NodeSettings):
        access_key_id = settings.tokens.access_key_id
    identity = NodeIdentity(place.index, place.address, layout, parameter, region,
                            access_key_id=access_key_id, token_verification_key=key)
    bundle = render_bundle(settings, place, layout, token_verification_key=key, access_key_id=access_key_id)
    return render_cloud_config(bundle, identity, code_url, install_packages)


def written_files(user_data: str) -> dict[str, str]:
    """The files a cloud-config document writes: what tests and the policy pack inspect."""
    document = yaml.safe_load(user_data)
    return {posixpath.normpath(entry["path"]): entry["content"] for entry in document.get("write_files", [])}


def node_files(user_data: str, document_text: str) -> dict[str, str]:
    """Every file a node ends up with at its first boot, but the code archive's: its user data's
    and those it renders from the cluster document (components/bundle/boot.py)."""
    files = written_files(user_data)
    identity = NodeIdentity.from_json(files[f"{AWS_HOME}/etc/node.json"])
    bundle = node_bundle(identity, document_text)
    home = identity.layout.home
    files.update({f.path: f.content for f in bundle.files if not f.path.startswith(f"{home}/components/")})
    return files


AWS_HOME = "/opt/hst-ha"

# Instance-profile credentials can take a few seconds to appear at first boot: retry for a minute.
# Each call is bounded too: with botocore's 60 s connect and read timeouts one call to an unreachable
# endpoint took ~40 s on the node target (4 tries in the preparation's start timeout, which then
# killed it instead of it failing by itself), and Redis's start gate waited as long.
_FETCH_SECRET = (
    "import sys, time, boto3, botocore.config as c\n"
    "client = boto3.client('secretsmanager', region_name=sys.argv[1], "
    "config=c.Config(connect_timeout=3, read_timeout=5))\n"
    "end = time.monotonic() + 60\n"
    "while True:\n"
    "    try:\n"
    "        sys.stdout.write(client.get_secret_value(SecretId=sys.argv[2])['SecretString']); break\n"
    "    except Exception as exc:\n"
    "        print(f'hst-ha: secret not readable yet ({type(exc).__name__}), retrying', file=sys.stderr)\n"
    "        if time.monotonic() > end: sys.exit('hst-ha: giving up after 60 s')\n"
    "        time.sleep(2)\n"
)


def _fetch_secret(region: str, secret_arn: str) -> str:
    return " ".join(shlex.quote(a) for a in ("python3", "-c", _FETCH_SECRET, region, secret_arn))


def aws_layout(redis_secret_arn: str, region: str, licence_secret_arn: str | None = None,
               sinks: Sinks | None = None, tls_secret_arn: str | None = None) -> NodeLayout:
    """Where an EC2 node keeps its files, how it fetches its secrets with its instance role, and
    where its observers write (components/aws/monitoring.py makes the bucket and the alarms).
    `tls_secret_arn` (tlsEnabled): the nodes' TLS secret (the ClusterTls resource's), never the CA's."""
    return NodeLayout(
        home=AWS_HOME,
        secrets_command=_fetch_secret(region, redis_secret_arn),
        haproxy_address="127.0.0.1",
        licence_command=_fetch_secret(region, licence_secret_arn) if licence_secret_arn else None,
        sinks=sinks,
        tls_command=_fetch_secret(region, tls_secret_arn) if tls_secret_arn else None,
    )
