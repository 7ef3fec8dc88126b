"""Serialize a node bundle as cloud-config user data for an Ubuntu 24.04 EC2 instance.

Pure Python (PyYAML, no Pulumi). The bundle's daemon steps become systemd units that require its
`prepares` step, itself a oneshot unit run at every boot until it succeeds (so a transient Secrets
Manager failure at first boot is retried, and a later reboot re-checks it); the other one-shot steps
run from `runcmd`, in the bundle's order, once per instance.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import posixpath
import shlex
import tarfile

import yaml

from components.bundle import Bundle, BundleFile, NodeLayout, Sinks, StartStep

# EC2 rejects user data over 16 KiB (raw, before base64). haproxy.cfg grows with the square of the
# node count, so large clusters ship their files gzipped; small ones stay readable in `pulumi
# preview`. The largest (an initial primary with HST Server and a 4096-bit verification key) ship
# the whole document gzipped, which cloud-init recognises by itself, as `user_data_base64`.
USER_DATA_LIMIT = 16 * 1024
GZIPPED_PREFIX = "H4sI"  # base64 of gzip's magic bytes: how a gzipped document is told from text

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


def render_prepare_unit(bundle: Bundle, step: StartStep, layout: NodeLayout) -> str:
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


def render_unit(bundle: Bundle, step: StartStep, requires: str | None = None) -> str:
    argv = [BINARIES.get(step.argv[0], step.argv[0]), *step.argv[1:]]
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
        "Type=simple",
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


def _write_file(f: BundleFile, compress: bool) -> dict:
    # cloud-init writes root:root and 0644 unless told otherwise: only what differs is spelled out
    # (16 KiB of user data is tight for a large cluster's initial primary).
    entry = {"path": f.path}
    if f.mode != 0o644:
        entry["permissions"] = f"0{f.mode:o}"
    if compress:
        entry["encoding"] = "gz+b64"
        entry["content"] = base64.b64encode(gzip.compress(f.content.encode(), mtime=0)).decode()
    else:
        entry["content"] = f.content
    return entry


def remote_files(bundle: Bundle, layout: NodeLayout) -> list[BundleFile]:
    """The node's Python modules (components/bundle/observe.py): the same on every node and too large
    for 16 KiB of user data, so they travel as one S3 object (`code_archive`) the node fetches."""
    return [f for f in bundle.files if f.path.startswith(f"{layout.home}/components/")]


def code_archive(files: list[BundleFile], home: str) -> tuple[bytes, str]:
    """A reproducible tar.gz of `files`, paths relative to `home`, and its SHA-256 (the object's key:
    changed code is a new key, so new user data, so a replaced instance, as for any bundle file)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for f in sorted(files, key=lambda f: f.path):
            data = f.content.encode()
            info = tarfile.TarInfo(posixpath.relpath(f.path, home))
            info.size, info.mode, info.mtime = len(data), f.mode, 0
            tar.addfile(info, io.BytesIO(data))
    packed = gzip.compress(raw.getvalue(), mtime=0)
    return packed, hashlib.sha256(packed).hexdigest()


# Fetched once Redis, Sentinel and HAProxy run; the archive holds only paths under the node's home.
# Every call is bounded, so an unreachable S3 ends the boot's runcmd in about a minute.
_FETCH_CODE = (
    "import io, sys, tarfile, time, boto3, botocore.config as c\n"
    "bucket, key = sys.argv[1][len('s3://'):].split('/', 1)\n"
    "s3 = boto3.client('s3', config=c.Config(connect_timeout=3, read_timeout=5, retries={'max_attempts': 1}))\n"
    "deadline = time.monotonic() + 60\n"
    "while True:\n"
    "    try:\n"
    "        body = s3.get_object(Bucket=bucket, Key=key)['Body'].read(); break\n"
    "    except Exception as exc:\n"
    "        print(f'hst-ha: code archive not readable yet ({type(exc).__name__}), retrying', file=sys.stderr)\n"
    "        if time.monotonic() > deadline: sys.exit('hst-ha: code archive not readable for 60 s, giving up')\n"
    "        time.sleep(2)\n"
    "tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2], filter='data')\n"
)


def render_cloud_config(bundle: Bundle, layout: NodeLayout, code_url: str | None = None,
                        install_packages: bool = True) -> str:
    """The `#cloud-config` document for one node; readable unless it would exceed EC2's limit, else
    with its files gzipped, else the whole document gzipped and base64-encoded (`is_gzipped`: pass
    it as `user_data_base64`). `code_url` (s3://...) is where the node fetches `remote_files`, which
    then stay out of it. `install_packages` False (amiHasPackages: a baked image) leaves apt alone."""
    remote = remote_files(bundle, layout)
    if remote:
        if not code_url:
            raise ValueError(f"{bundle.node}: the bundle has node modules but no code_url to fetch them from")
        kept = tuple(f for f in bundle.files if f not in remote)
        bundle = Bundle(bundle.node, bundle.address, kept, bundle.start_steps)
    url = code_url if remote else None
    text = _render(bundle, layout, compress=False, code_url=url, install_packages=install_packages)
    if len(text.encode()) <= USER_DATA_LIMIT:
        return text
    compressed = _render(bundle, layout, compress=True, code_url=url, install_packages=install_packages)
    if len(compressed.encode()) <= USER_DATA_LIMIT:
        return compressed
    whole = gzip.compress(text.encode(), mtime=0)
    if len(whole) > USER_DATA_LIMIT:
        raise ValueError(f"user data for {bundle.node} is {len(whole)} bytes gzipped, over EC2's {USER_DATA_LIMIT}")
    return base64.b64encode(whole).decode()


def is_gzipped(user_data: str) -> bool:
    return user_data.startswith(GZIPPED_PREFIX)


def user_data_document(user_data: str) -> str:
    """The `#cloud-config` text of what `render_cloud_config` returned."""
    return gzip.decompress(base64.b64decode(user_data)).decode() if is_gzipped(user_data) else user_data


def _render(bundle: Bundle, layout: NodeLayout, compress: bool, code_url: str | None = None,
            install_packages: bool = True) -> str:
    prepares = [s for s in bundle.start_steps if s.prepares]
    if len(prepares) != 1:
        raise ValueError(f"{bundle.node}: the bundle must have exactly one preparation step, has {len(prepares)}")
    prepare = prepares[0]
    daemons = [s for s in bundle.start_steps if s.daemon]
    units = [BundleFile(f"/etc/systemd/system/{unit_name(prepare)}",
                        render_prepare_unit(bundle, prepare, layout), 0o644)]
    units += [
        BundleFile(f"/etc/systemd/system/{unit_name(s)}", render_unit(bundle, s, unit_name(prepare)), 0o644)
        for s in daemons
    ]
    runcmd: list[list[str]] = [["systemctl", "disable", "--now", *DISTRO_SERVICES], ["systemctl", "daemon-reload"]]
    # Enabled before the daemons: `enable --now` of the first daemon starts it (Requires=) and waits.
    runcmd.append(["systemctl", "enable", unit_name(prepare)])
    for step in bundle.start_steps:
        if step.prepares:
            continue
        if code_url and step.workdir:
            # The node's Python modules, before the first unit that runs them; after Redis,
            # Sentinel and HAProxy, which never wait for it (nor fail when S3 cannot be reached).
            runcmd.append(["python3", "-c", _FETCH_CODE, code_url, layout.home])
            code_url = None
        if step.daemon:
            runcmd.append(["systemctl", "enable", "--now", unit_name(step)])
        else:
            runcmd.append(list(step.argv))
    # Without packages cloud-init runs no apt at all: a baked image needs no mirror (closed egress).
    packages = {"package_update": True, "packages": list(PACKAGES)} if install_packages else {}
    document = {
        **packages,
        "write_files": [_write_file(f, compress) for f in (*bundle.files, *units)],
        "runcmd": runcmd,
    }
    header = f"#cloud-config\n# hst-ha {bundle.node} ({bundle.address}); boot log: /var/log/cloud-init-output.log\n"
    return header + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000, default_flow_style=False)


def written_files(user_data: str) -> dict[str, str]:
    """The files a cloud-config document writes, decoded: what tests and the policy pack inspect."""
    document = yaml.safe_load(user_data_document(user_data))
    files = {}
    for entry in document.get("write_files", []):
        content = entry["content"]
        if entry.get("encoding") == "gz+b64":
            content = gzip.decompress(base64.b64decode(content)).decode()
        files[posixpath.normpath(entry["path"])] = content
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
               sinks: Sinks | None = None) -> NodeLayout:
    """Where an EC2 node keeps its files, how it fetches its secrets with its instance role, and
    where its observers write (components/aws/monitoring.py makes the bucket and the alarms)."""
    return NodeLayout(
        home=AWS_HOME,
        secrets_command=_fetch_secret(region, redis_secret_arn),
        haproxy_address="127.0.0.1",
        licence_command=_fetch_secret(region, licence_secret_arn) if licence_secret_arn else None,
        sinks=sinks,
    )
