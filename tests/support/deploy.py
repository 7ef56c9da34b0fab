"""The deployment files as the tests read them: the Dockerfile's CMD."""

from __future__ import annotations

import json

from tests.support.databases import ROOT


def image_command() -> list[str]:
    """The Dockerfile's CMD (exec form)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    cmd = [line for line in lines if line.startswith("CMD ")]
    assert len(cmd) == 1, cmd
    command: list[str] = json.loads(cmd[0].removeprefix("CMD "))
    return command


def image_command_here(port: int) -> list[str]:
    """The CMD as it runs outside a container: on loopback, on ``port``, not 0.0.0.0:8000."""
    return [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(arg, arg) for arg in image_command()]
