"""The lock files agree with pyproject.toml: every pin there is the pin in the lock, the runtime lock
takes the dev lock's versions, and every locked package carries hashes. `make lock` rewrites them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: `name==version`, then the environment marker if any, then its `--hash=` lines.
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)[^\n]*\\\n((?:\s+--hash=\S+(?: \\)?\n)+)", re.M)


def locked(name: str) -> dict[str, tuple[str, int]]:
    """Package -> (version, number of hashes) as the lock file pins it."""
    text = (ROOT / name).read_text()
    return {
        canonicalize_name(package): (version, hashes.count("--hash="))
        for package, version, hashes in PIN.findall(text)
    }


def pinned(requirements: list[str]) -> dict[str, str]:
    """Package -> version of pyproject's `==` pins."""
    pins = {}
    for line in requirements:
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"pyproject pins exactly: {line}"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


RUNTIME = locked("requirements.lock")
DEV = locked("requirements-dev.lock")


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        (RUNTIME, PYPROJECT["dependencies"]),
        (DEV, PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["dev"]),
    ],
    ids=["requirements.lock", "requirements-dev.lock"],
)
def test_the_lock_pins_what_pyproject_pins(lock, requirements):
    wanted = pinned(requirements)
    assert {name: lock.get(name, ("missing",))[0] for name in wanted} == wanted, "run make lock"


def test_the_image_runs_the_versions_the_tests_ran():
    assert {name: version for name, (version, _) in RUNTIME.items()} == {
        name: DEV.get(name, ("missing",))[0] for name in RUNTIME
    }


def test_every_locked_package_has_its_hashes():
    text = (ROOT / "requirements-dev.lock").read_text()
    packages = re.findall(r"^[A-Za-z0-9_.-]+==", text, re.M)
    assert len(DEV) == len(packages) > 40
    assert all(hashes >= 1 for _, hashes in DEV.values())
