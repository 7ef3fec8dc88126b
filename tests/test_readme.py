"""The README against the code: every stack output and every setting is documented, the files
and commands it names exist, and the runbooks' claims about what changes hold under mocks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from components.settings import SETTINGS_SCHEMA
from tests.pulumi_harness import ROOT, run_program

pytestmark = pytest.mark.timeout(120)

README = (ROOT / "README.md").read_text()
# The outputs another engineer's dynamic providers add; documented as part of the contract.
ANNOUNCED_OUTPUTS = {"quorum", "bearerTokenSecretArn", "tokenVerificationKey"}


def section(title: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level (headings
    inside fenced code blocks, such as shell comments, do not count)."""
    lines, level, fenced = README.splitlines(), 0, False
    body: list[str] | None = None
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"^(#+) (.*)$", line) if not fenced else None
        if body is None:
            if heading and heading.group(2) == title:
                body, level = [], len(heading.group(1))
        elif heading and len(heading.group(1)) <= level:
            break
        else:
            body.append(line)
    assert body is not None, f"README has no section {title!r}"
    return "\n".join(body)


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| `")]
    return rows


@pytest.fixture(scope="module")
def exported() -> set[str]:
    in_source = set(re.findall(r"""pulumi\.export\(\s*["'](\w+)["']""", (ROOT / "__main__.py").read_text()))
    return in_source | set(run_program({}).outputs)


def test_every_stack_output_is_in_the_outputs_table(exported):
    rows = table_rows(section("Stack outputs"))
    documented = {row[0].strip("`") for row in rows}
    assert exported - documented == set(), "exported but not documented"
    assert documented >= ANNOUNCED_OUTPUTS
    assert documented - exported - ANNOUNCED_OUTPUTS == set(), "documented but no longer exported"
    for row in rows:
        assert len(row) == 4 and row[1] and row[2], row
        assert row[3].split(" ", 1)[0] in ("yes", "no"), row


def test_every_setting_is_in_the_configuration_table():
    documented = {row[0].strip("`") for row in table_rows(section("Configuration"))}
    assert [s.key for s in SETTINGS_SCHEMA if s.key not in documented] == []


OWN_SECTIONS = ("Stack outputs", "Pull-request previews and deployment", "Policy as code", "Runbooks")


def test_files_named_in_these_sections_exist():
    for title in OWN_SECTIONS:
        for path in re.findall(r"`((?:tests|policy|examples|scripts|components|\.github)/[\w./-]*)`", section(title)):
            if path.rstrip("/").endswith(".venv"):
                continue  # created by the commands the section shows
            assert (ROOT / path).exists(), f"README section {title!r} names {path}, which does not exist"


def test_runbooks_cover_what_the_readme_promises():
    runbooks = section("Runbooks")
    for title in ("Test a failover", "Rotate bootstrap tokens", "Replace a node", "Apply changed settings",
                  "Grow from 3 to 5 nodes", "Destroy"):
        body = section(title)
        assert "```sh" in body, f"runbook {title!r} gives no commands"
        assert ("exercised here" in body) or ("not exercised here" in body), f"runbook {title!r} says not where it ran"
    # Referenced from "What changes when you change a setting".
    assert "runbook *Apply changed settings*" in README and "### Apply changed settings" in runbooks


def test_the_local_commands_the_runbooks_use_exist():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "local_cluster.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("up", "status", "failover", "down"):
        assert command in result.stdout
    from components.local.cluster import LocalCluster

    assert callable(LocalCluster.load) and callable(LocalCluster.wipe_and_reprovision)


def user_data(config: dict) -> dict[str, str]:
    return {r.name: r.inputs["userData"] for r in run_program(config).of_type("aws:ec2/instance:Instance")}


def test_runbook_facts_hold_under_mocks():
    base = user_data({})
    # Rotate bootstrap tokens: token settings touch no node.
    assert user_data({"tokenLifetimeHours": 24, "tokenScopeRole": "admin", "tokenUserIds": ["admin", "ops"]}) == base
    # Apply changed settings: a Sentinel timing changes the cluster document, no node's user data.
    assert user_data({"downAfterMs": 8000}) == base
    # Grow from 3 to 5: two nodes added, the existing nodes' user data unchanged (none replaced).
    grown = user_data({"nodeCount": 5})
    assert set(base) < set(grown) and len(grown) == 5
    assert all(grown[name] == text for name, text in base.items())


def test_the_security_section_says_what_holds_and_the_ci_claims_are_true():
    security = section("Security")
    for promise in ("Pull-request previews cannot change a stack", "No way out to the internet by default",
                    "least privilege", "hst-ha:stack", "The token secrets are this stack's own",
                    "refused before anything is created", "Bootstrap tokens are bounded",
                    "No Redis password is in the stack's state",
                    "A cluster whose nodes could not install their packages is refused at preview"):
        assert promise in security, promise
    ci = section("Pull-request previews and deployment")
    # Issue 13, High 1: that claim was false in effect, and ReadOnlyAccess reads every object.
    assert "reads no secret value" not in README and "with `ReadOnlyAccess`" not in ci
    for policy in ("Preview role", "Deploy role"):
        body = section(policy)
        found = re.search(r"```json\n(.*?)```", body, re.S)
        assert found, policy
        document = found.group(1)
        statements = __import__("json").loads(document)["Statement"]
        assert statements, policy
    deploy = section("Deploy role")
    assert '"ssm:resourceTag/hst-ha:stack"' in deploy and "AWS-RunShellScript" in deploy


def test_token_runbooks_write_tokens_under_a_private_umask():
    body = section("Rotate bootstrap tokens")
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        if "> token.txt" in block:
            assert block.lstrip().startswith("umask 077"), block


def test_the_tests_section_runs_what_ci_runs_and_names_every_tier():
    import tomllib

    from tests.conftest import ALL_TIERS, TIERS

    tests = section("Tests")
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert tests.lstrip().startswith(f"```sh\n{ci_command}\n```")
    registered = {m.split(":")[0] for m in
                  tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]}
    assert registered == ALL_TIERS
    rows = {row[0].strip("`"): row[2] for row in table_rows(tests) if len(row) == 3}
    assert set(rows) == ALL_TIERS
    for module, tier in TIERS.items():
        assert (ROOT / "tests" / f"{module}.py").exists(), f"tests/conftest.py names {module}, which does not exist"
        assert f"`{module}`" in rows[tier], f"README's tier table does not list {module} under {tier}"
