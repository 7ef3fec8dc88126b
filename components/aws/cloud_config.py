"""Serialize a node bundle as cloud-config user data for an Ubuntu 24.04 EC2 instance.

Pure Python (PyYAML, no Pulumi). The bundle's daemon steps become systemd units; its one-shot
steps run from `runcmd`, in the bundle's order, once per instance.
"""

from __future__ import annotations

import base64
import gzip
import io
import posixpath
import shlex
import tarfile

import yaml

from components.bundle import Bundle, BundleFile, NodeLayout, StartStep

# EC2 rejects user data over 16 KiB. haproxy.cfg grows with the square of the node count, so
# large clusters ship their files gzipped; small ones stay readable in `pulumi preview`.
USER_DATA_LIMIT = 16 * 1024

PACKAGES = ("redis-server", "redis-sentinel", "redis-tools", "haproxy", "python3-boto3", "curl")

# Distribution services that would run a second, unauthenticated Redis/Sentinel/HAProxy.
DISTRO_SERVICES = ("redis-server", "redis-sentinel", "haproxy")

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


def unit_name(step: StartStep) -> str:
    return f"hst-ha-{step.name}.service"


def render_unit(bundle: Bundle, step: StartStep) -> str:
    argv = [BINARIES.get(step.argv[0], step.argv[0]), *step.argv[1:]]
    lines = [
        "[Unit]",
        f"Description=hst-ha {step.name} ({bundle.node}, {bundle.address})",
        # Restart=always must not give up after 5 quick failures (a gate refusing while a failover
        # is stuck): every retry is bounded and logged by the gate itself.
        *(["StartLimitIntervalSec=0"] if step.pre_start else []),
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    if step.user:
        lines += [f"User={step.user}", f"Group={step.user}"]
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
        "RestartSec=2",
        "LimitNOFILE=65536",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _write_file(f: BundleFile, compress: bool) -> dict:
    entry = {"path": f.path, "permissions": f"0{f.mode:o}", "owner": "root:root"}
    if compress:
        entry["encoding"] = "gz+b64"
        entry["content"] = base64.b64encode(gzip.compress(f.content.encode(), mtime=0)).decode()
    else:
        entry["content"] = f.content
    return entry


def render_cloud_config(bundle: Bundle, layout: NodeLayout) -> str:
    """The `#cloud-config` document for one node; readable unless it would exceed EC2's limit, then
    each file gzipped, and if that is still too much the bundle's files as one gzipped archive that
    the first `runcmd` unpacks (one gzip stream finds what the scripts share: about a quarter less)."""
    text = _render(bundle, layout, compress=False)
    if len(text.encode()) > USER_DATA_LIMIT:
        text = _render(bundle, layout, compress=True)
    if len(text.encode()) > USER_DATA_LIMIT:
        text = _render(bundle, layout, compress=True, archive=True)
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"user data for {bundle.node} is {len(text.encode())} bytes, over EC2's {USER_DATA_LIMIT}")
    return text


def _archive(files: tuple[BundleFile, ...], path: str) -> BundleFile:
    """The files as one tar.gz (root-owned, their modes, no timestamps), base64 in a BundleFile."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as stream, tarfile.open(fileobj=stream, mode="w") as tar:
        for f in files:
            data = f.content.encode()
            member = tarfile.TarInfo(f.path.lstrip("/"))
            member.size, member.mode = len(data), f.mode
            tar.addfile(member, io.BytesIO(data))
    return BundleFile(path, base64.b64encode(buffer.getvalue()).decode(), 0o600)


def _render(bundle: Bundle, layout: NodeLayout, compress: bool, archive: bool = False) -> str:
    daemons = [s for s in bundle.start_steps if s.daemon]
    units = [
        BundleFile(f"/etc/systemd/system/{unit_name(s)}", render_unit(bundle, s), 0o644) for s in daemons
    ]
    owners = {"redis": [layout.data, layout.log], "haproxy": [layout.run, layout.haproxy_cfg]}
    runcmd: list[list[str]] = [["systemctl", "disable", "--now", *DISTRO_SERVICES]]
    started_daemons = False
    for step in bundle.start_steps:
        if step.daemon:
            if not started_daemons:
                runcmd += [["chown", "-R", f"{user}:{user}", *paths] for user, paths in owners.items()]
                runcmd.append(["systemctl", "daemon-reload"])
                started_daemons = True
            runcmd.append(["systemctl", "enable", "--now", unit_name(step)])
        else:
            runcmd.append(list(step.argv))
    write_files = [_write_file(f, compress) for f in (*bundle.files, *units)]
    if archive:
        packed = _archive(bundle.files, f"{layout.home}/{ARCHIVE_NAME}")
        write_files = [{"path": packed.path, "permissions": "0600", "owner": "root:root", "encoding": "b64",
                        "content": packed.content}, *(_write_file(f, compress) for f in units)]
        runcmd.insert(0, ["tar", "-xzf", packed.path, "-C", "/"])
    document = {
        "package_update": True,
        "packages": list(PACKAGES),
        "write_files": write_files,
        "runcmd": runcmd,
    }
    header = f"#cloud-config\n# hst-ha {bundle.node} ({bundle.address}); boot log: /var/log/cloud-init-output.log\n"
    return header + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000, default_flow_style=False)


def written_files(user_data: str) -> dict[str, str]:
    """The files a cloud-config document writes, decoded: what tests and the policy pack inspect."""
    document = yaml.safe_load(user_data)
    files = {}
    for entry in document.get("write_files", []):
        content = entry["content"]
        if entry.get("encoding") == "b64" and entry["path"].endswith(ARCHIVE_NAME):
            with tarfile.open(fileobj=io.BytesIO(base64.b64decode(content)), mode="r:gz") as tar:
                for member in tar.getmembers():
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        files[posixpath.normpath("/" + member.name)] = extracted.read().decode()
            continue
        if entry.get("encoding") == "gz+b64":
            content = gzip.decompress(base64.b64decode(content)).decode()
        files[posixpath.normpath(entry["path"])] = content
    return files


AWS_HOME = "/opt/hst-ha"
ARCHIVE_NAME = "bundle.tar.gz"  # in the node's home; written_files reads the files inside it

# Instance-profile credentials can take a few seconds to appear at first boot: retry, bounded.
_FETCH_SECRET = (
    "import sys, time, boto3\n"
    "client = boto3.client('secretsmanager', region_name=sys.argv[1])\n"
    "for attempt in range(30):\n"
    "    try:\n"
    "        sys.stdout.write(client.get_secret_value(SecretId=sys.argv[2])['SecretString']); break\n"
    "    except Exception as exc:\n"
    "        print(f'hst-ha: secret not readable yet ({type(exc).__name__}), retrying', file=sys.stderr)\n"
    "        time.sleep(2)\n"
    "else:\n"
    "    sys.exit(1)\n"
)


def _fetch_secret(region: str, secret_arn: str) -> str:
    return " ".join(shlex.quote(a) for a in ("python3", "-c", _FETCH_SECRET, region, secret_arn))


def aws_layout(redis_secret_arn: str, region: str, licence_secret_arn: str | None = None) -> NodeLayout:
    """Where an EC2 node keeps its files, and how it fetches its secrets with its instance role."""
    return NodeLayout(
        home=AWS_HOME,
        password_command=_fetch_secret(region, redis_secret_arn),
        haproxy_address="127.0.0.1",
        licence_command=_fetch_secret(region, licence_secret_arn) if licence_secret_arn else None,
    )
