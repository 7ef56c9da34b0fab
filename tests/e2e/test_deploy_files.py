"""The Dockerfile, compose.yaml and the lock: linted, validated, and their commands run.

No container engine runs here, so the image's own install and start
commands are proven the next best way: in a clean virtual environment.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import venv
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from app.adapters.schema_version import SCHEMA_VERSION
from app.config import Settings
from app.entrypoints.http.server import GRACEFUL_SHUTDOWN
from app.entrypoints.messaging.redis_transport import HANDLING_GRACE
from tests.support.databases import ROOT, postgres_database
from tests.support.deploy import image_command, image_command_here
from tests.support.servers import free_port, wait_until_serving

BIN = Path(sys.executable).parent
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
# Compose files the services read their settings from, when they exist.
ENV_FILE = [{"path": "allocation.env", "required": False}]


@pytest.fixture
async def empty_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A new database with no tables, dropped after the test."""
    async with postgres_database(postgres_server_url, migrated=False) as url:
        yield url


def build_stage() -> list[str]:
    """The Dockerfile's lines up to its second FROM: the stage that installs."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(starts) == 2, starts
    return lines[starts[0] : starts[1]]


def image_installs() -> list[list[str]]:
    """The build stage's ``pip install`` commands, one argv each."""
    runs = [line.removeprefix("RUN ") for line in build_stage() if line.startswith("RUN ")]
    return [shlex.split(command) for command in runs if "/venv/bin/pip install" in command]


def lay_out_build_context(workdir: Path) -> None:
    """Copy into ``workdir`` what the build stage's COPY lines copy into its WORKDIR."""
    for line in build_stage():
        if not line.startswith("COPY "):
            continue
        *sources, dest = line.split()[1:]
        for source in sources:
            target = workdir / dest / source if dest.endswith("/") else workdir / dest
            if (ROOT / source).is_dir():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(ROOT / source, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)


def run(*args: str | Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_dockerfile_passes_hadolint() -> None:
    result = run(BIN / "hadolint", "Dockerfile")

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_yaml_follows_the_compose_specification() -> None:
    result = run(
        BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_the_image_installs_migrates_a_new_database_and_serves_from_a_clean_venv(
    tmp_path: Path, empty_database: str
) -> None:
    # What the Dockerfile does: its pip installs (the lock, then the service)
    # into a fresh venv; then compose's migrate command, from a directory that
    # holds no checkout, on a new PostgreSQL database; then its CMD.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    workdir = tmp_path / "src"
    lay_out_build_context(workdir)
    for argv in image_installs():
        argv = [str(bin_dir / "pip") if arg == "/venv/bin/pip" else arg for arg in argv]
        install = run(*argv, cwd=workdir)
        assert install.returncode == 0, f"{shlex.join(argv)}\n{install.stderr[-3000:]}"
    srv = tmp_path / "srv"
    srv.mkdir()
    database = empty_database
    migrate_command = compose_services()["migrate"]["command"]
    migrate = run(
        bin_dir / migrate_command[0], *migrate_command[1:], cwd=srv, DATABASE_URL=database
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    assert SCHEMA_VERSION in migrate.stderr, migrate.stderr
    worker_help = run(bin_dir / "allocation", "worker", "--help", cwd=srv)
    assert worker_help.returncode == 0, worker_help.stderr[-3000:]
    port = free_port()
    assert image_command()[:2] == ["allocation", "serve"], image_command()
    # The image listens on 0.0.0.0:8000; here, loopback and a free port.
    command = image_command_here(port)
    server = subprocess.Popen(
        [bin_dir / command[0], *command[1:]],
        cwd=srv,
        env={**os.environ, "DATABASE_URL": database, "FORWARDED_ALLOW_IPS": "127.0.0.1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, server, time.monotonic() + 30)
        with httpx.Client(base_url=url, timeout=5) as client:
            ready = client.get("/ready")
            assert ready.status_code == 200, ready.text
            batch = {"ref": "b1", "sku": "LAMP", "qty": 5, "eta": None}
            assert client.post("/add_batch", json=batch).status_code == 201
            line = {"orderid": "o1", "sku": "LAMP", "qty": 1}
            assert client.post("/allocate", json=line).status_code == 202
            allocations = client.get("/allocations/o1")
        assert allocations.json() == [{"sku": "LAMP", "batchref": "b1"}]
    finally:
        server.terminate()
        server.wait(timeout=15)


@pytest.mark.slow
def test_the_dev_lock_installs_here(tmp_path: Path) -> None:
    # make install-dev's install, resolved against the index into a throwaway
    # venv with nothing installed: every pin exists for this platform, with
    # its hash (pip downloads each file to check it, from its cache when it can).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    report = tmp_path / "report.json"
    result = run(
        env_dir / "bin" / "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--require-hashes",
        "--report",
        report,
        "-r",
        DEV_LOCK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    planned = {
        canonicalize_name(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"]
    }
    assert planned == set(locked_versions(DEV_LOCK)), planned


def test_the_image_installs_exactly_the_locked_dependencies() -> None:
    installs = [argv[argv.index("install") + 1 :] for argv in image_installs()]

    assert installs == [
        ["--no-cache-dir", "--require-hashes", "-r", LOCK.name],
        ["--no-cache-dir", "--no-deps", "--no-build-isolation", "."],
    ]
    assert f"COPY {LOCK.name} ./" in build_stage()


def _unmet(wanted: list[Requirement], pins: dict[str, Version]) -> list[str]:
    return [
        f"{req} (locked: {pins.get(canonicalize_name(req.name), 'nothing')})"
        for req in wanted
        if (req.marker is None or req.marker.evaluate())
        and not req.specifier.contains(
            pins.get(canonicalize_name(req.name), Version("0.dev0")), prereleases=True
        )
    ]


def test_the_locks_pin_every_dependency_of_pyproject_at_an_allowed_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = [Requirement(r) for r in project["project"]["dependencies"]]
    # The service is built with the locked build backend, too.
    runtime += [Requirement(r) for r in project["build-system"]["requires"]]
    dev = [Requirement(r) for r in project["project"]["optional-dependencies"]["dev"]]
    pins, dev_pins = locked_versions(LOCK), locked_versions(DEV_LOCK)

    assert _unmet(runtime, pins) == [], "requirements.lock is out of date; run make lock"
    assert _unmet(runtime + dev, dev_pins) == [], "requirements-dev.lock is out of date"
    # The tests run what the image ships.
    assert {name: dev_pins[name] for name in pins} == pins


@pytest.mark.parametrize("lock", [LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_a_lock_has_a_hash_for_every_pin_and_names_no_index(lock: Path) -> None:
    text = lock.read_text()
    pins = [line for line in text.splitlines() if line and line[0].isalnum()]
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)

    assert len(pins) > 20
    assert all(entry.count("--hash=sha256:") >= 1 for entry in entries if "==" in entry)
    # Where packages come from is the installer's business, not the lock's.
    assert not re.search(r"--(index-url|extra-index-url|find-links|trusted-host)|://", text)


def test_the_npm_lock_pins_every_package_exactly_and_names_no_registry() -> None:
    folder = ROOT / "tests" / "asyncapi"
    wanted = json.loads((folder / "package.json").read_text())["dependencies"]
    lock = json.loads((folder / "package-lock.json").read_text())
    packages = {k: v for k, v in lock["packages"].items() if k}

    assert all(re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version) for version in wanted.values())
    assert {name: packages[f"node_modules/{name}"]["version"] for name in wanted} == wanted
    assert len(packages) > 50  # the transitive ones too, each at one version with its hash
    assert all("integrity" in entry and "resolved" not in entry for entry in packages.values())


def test_compose_requires_an_api_token_for_the_api_alone() -> None:
    services = compose_services()
    token = services["api"]["environment"]["API_TOKEN"]

    with pytest.raises(MissingVariableError, match="API_TOKEN"):
        interpolate(token, {})
    assert interpolate(token, {"API_TOKEN": "t" * 32}) == "t" * 32
    # The worker, migrations and the CLI (run in either) take no writes over HTTP.
    assert "API_TOKEN" not in services["worker"]["environment"]
    assert "API_TOKEN" not in services["migrate"]["environment"]
    # The API still runs in production, with the same database as the rest.
    assert services["api"]["environment"]["ENVIRONMENT"] == "production"
    assert (
        services["api"]["environment"]["DATABASE_URL"]
        == services["worker"]["environment"]["DATABASE_URL"]
    )


def test_compose_gives_the_api_and_the_worker_the_time_they_take_to_stop() -> None:
    services = compose_services()

    def seconds(value: str) -> float:
        assert value.endswith("s"), value
        return float(value.removesuffix("s"))

    # In-flight requests get GRACEFUL_SHUTDOWN; the worker hands back what it
    # holds after HANDLING_GRACE and stops within 5 s (tests/e2e/test_streams.py).
    assert seconds(services["api"]["stop_grace_period"]) >= GRACEFUL_SHUTDOWN + 1
    assert seconds(services["worker"]["stop_grace_period"]) >= 5 + 1
    assert HANDLING_GRACE + 1 <= 5


def test_compose_publishes_ports_on_loopback_unless_told_otherwise() -> None:
    services = compose_services()
    published = {
        name: [interpolate(port, {}) for port in service.get("ports", [])]
        for name, service in services.items()
    }

    assert published["api"] == ["127.0.0.1:8000:8000"]
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports)
    (api_port,) = services["api"]["ports"]
    chosen = {"API_ADDRESS": "0.0.0.0", "API_PORT": "8080"}
    assert interpolate(api_port, chosen) == "0.0.0.0:8080:8000"


def test_compose_services_read_an_optional_env_file() -> None:
    services = compose_services()

    for name in ("api", "worker", "migrate"):
        assert services[name]["env_file"] == ENV_FILE, name


def test_every_image_is_pinned_to_a_patch_release() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    images = [s["image"] for s in compose_services().values() if "image" in s]

    unpinned = [image for image in bases + images if not pinned(image)]
    assert unpinned == []
    assert len(images) == 5


def pinned(image: str) -> bool:
    """Whether ``image``'s tag names one release: 3.11.14-slim, v1.22.3, 15.18.

    PostgreSQL numbers its releases MAJOR.MINOR; everything else here MAJOR.MINOR.PATCH.
    """
    name, _, tag = image.partition(":")
    parts = 2 if name == "postgres" else 3
    return re.fullmatch(rf"v?\d+(\.\d+){{{parts - 1}}}(-[a-z0-9.-]+)?", tag) is not None


def locked_versions(lock: Path = LOCK) -> dict[str, Version]:
    """Each package ``lock`` pins, by canonical name, at its version."""
    pins: dict[str, Version] = {}
    for line in lock.read_text().splitlines():
        if line and line[0].isalnum():
            req = Requirement(line.removesuffix("\\").strip())
            (specifier,) = req.specifier
            assert specifier.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(specifier.version)
    return pins


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    return services


class MissingVariableError(Exception):
    """A ``${NAME:?message}`` whose NAME is unset or empty: compose refuses to start."""


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """``value`` with compose's ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` filled in."""

    def fill(match: re.Match[str]) -> str:
        given = env.get(match["name"], "")
        if given:
            return given
        if match["op"] == "?":
            raise MissingVariableError(f"{match['name']}: {match['arg']}")
        return match["arg"] if match["op"] == "-" else ""

    return _VARIABLE.sub(fill, value)


def test_env_example_lists_every_setting_with_a_comment() -> None:
    listed: dict[str, str] = {}
    comment = ""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            comment = line
        elif not line:
            comment = ""
        else:
            name, _, value = line.partition("=")
            assert comment, f"{name} has no comment above it"
            listed[name] = value

    assert {name.upper() for name in Settings.model_fields} <= listed.keys()
    # The placeholders pass the settings' own checks.
    given = {name: listed[name.upper()] for name in Settings.model_fields}
    Settings.model_validate({name: value for name, value in given.items() if value})


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV lines, as a dict."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                found[name] = value
    return found


def image_healthcheck() -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    [check] = [line for line in lines if line.startswith("HEALTHCHECK ")]
    command: list[str] = json.loads(check.split(" CMD ", 1)[1])
    return command


def until_healthy(
    command: list[str], env: dict[str, str], process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 30
    while subprocess.run([str(BIN / command[0]), *command[1:]], env=env).returncode != 0:
        assert process.poll() is None, "the process exited"
        assert time.monotonic() < deadline, "the healthcheck never passed"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("role", ["api", "worker"])
def test_the_images_healthcheck_fits_each_process_it_runs(
    tmp_path: Path, redis_url: str, role: str
) -> None:
    """The image's one HEALTHCHECK, and compose's worker readiness check, as each process
    runs with the image's environment: unhealthy until the process answers, then healthy."""
    here, worker_here = free_port(), free_port()
    database = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    assert run(BIN / "allocation", "migrate", DATABASE_URL=database).returncode == 0
    env = {**os.environ, **image_env(), "DATABASE_URL": database, "REDIS_URL": redis_url}
    # The image's ports, moved here to free ones; the worker's only where it is asked.
    assert (env["WORKER_PORT"], env["WORKER_HOST"]) == ("9100", "0.0.0.0")
    env.update(PORT=str(here), WORKER_PORT=str(worker_here))
    check = image_healthcheck()
    assert subprocess.run([str(BIN / check[0]), *check[1:]], env=env).returncode == 1
    argv: list[str | Path]
    if role == "api":
        argv = [BIN / "allocation", "serve"]
        checks = [check]
    else:
        argv = [BIN / "allocation", "worker"]
        checks = [check, compose_services()["worker"]["healthcheck"]["test"][1:]]
    process = subprocess.Popen(argv, cwd=ROOT, env=env)
    try:
        for command in checks:
            until_healthy(command, env, process)
    finally:
        process.terminate()
        process.wait(timeout=15)
