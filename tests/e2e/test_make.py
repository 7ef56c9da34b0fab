"""The Makefile on a fresh clone: what each target would install.

``make -n`` prints the commands a target would run without running them,
in a copy holding the Makefile, pyproject.toml and the AsyncAPI parser's
package.json, and no venv yet.
"""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.databases import ROOT
from tests.support.servers import require_program

# Each lock checked against its hashes, then the service itself, resolving nothing.
RUNTIME = [
    ["--require-hashes", "-r", "requirements.lock"],
    ["--no-deps", "--no-build-isolation", "-e", "."],
]
DEV = [["--require-hashes", "-r", "requirements-dev.lock"]]


@pytest.fixture(scope="module")
def make() -> str:
    return require_program("make", package="make")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    for name in (
        "Makefile",
        "pyproject.toml",
        "requirements.lock",
        "requirements-dev.lock",
        "tests/asyncapi/package.json",
        "tests/asyncapi/package-lock.json",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def installs(make: str, clone: Path, target: str) -> list[list[str]]:
    """What ``make target`` would pip install on a fresh clone, in order."""
    result = subprocess.run(
        [make, "-n", target], cwd=clone, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines() if "pip install" in line]
    return [
        [arg for arg in argv[argv.index("install") + 1 :] if arg != "--quiet"] for argv in commands
    ]


@pytest.mark.parametrize("target", ["run", "migrate", "install"])
def test_running_the_service_installs_its_runtime_dependencies_alone(
    make: str, clone: Path, target: str
) -> None:
    assert installs(make, clone, target) == RUNTIME


@pytest.mark.parametrize("target", ["test", "lint", "bench", "fuzz", "soak"])
def test_tests_and_tools_add_the_dev_dependencies(make: str, clone: Path, target: str) -> None:
    assert installs(make, clone, target) == RUNTIME + DEV


def test_every_target_ci_runs_exists(make: str, clone: Path) -> None:
    targets = re.findall(r"^make ([\w-]+)$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)

    assert targets == ["system-deps", "lint", "test"]
    for target in targets:
        result = subprocess.run([make, "-n", target], cwd=clone, capture_output=True, text=True)
        assert result.returncode == 0, f"make {target}: {result.stderr}"
