#!/usr/bin/env python3
"""Run Poetry from a private virtualenv in .poetry/, installing it there first if needed.

Usage: python3 scripts/poetry.py <poetry arguments>, e.g. `python3 scripts/poetry.py install`.
Needs only Python 3.11+; nothing is installed outside this checkout. If you already have
Poetry 2.x on your PATH you can call it directly instead.

Some package mirrors serve PyPI's Simple API (PEP 503/691/658) but not its per-release JSON
API, which Poetry's built-in PyPI source reads. The launcher below makes that source
read the Simple API, as Poetry already does for every other source; on PyPI itself the
result is the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / ".poetry"
BIN = HOME / ("Scripts" if os.name == "nt" else "bin")

LAUNCH = """\
import sys
from poetry.console.application import main
from poetry.repositories.legacy_repository import LegacyRepository
from poetry.repositories.pypi_repository import PyPiRepository

PyPiRepository._get_release_info = LegacyRepository._get_release_info
PyPiRepository.find_links_for_package = LegacyRepository.find_links_for_package
sys.exit(main())
"""


def ensure_poetry() -> Path:
    python = BIN / ("python.exe" if os.name == "nt" else "python")
    if (BIN / "poetry").exists() or (BIN / "poetry.exe").exists():
        return python
    print("scripts/poetry.py: installing Poetry into .poetry/ (once)", file=sys.stderr)
    venv.create(HOME, with_pip=True, clear=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "poetry>=2.1,<3",
        ],
        check=True,
    )
    return python


def main() -> None:
    python = ensure_poetry()
    env = dict(os.environ, POETRY_VIRTUALENVS_IN_PROJECT="true")
    argv = [str(python), "-c", LAUNCH, *sys.argv[1:]]
    if os.name == "nt":
        sys.exit(subprocess.call(argv, env=env))
    # Replace this process, so Ctrl-C and SIGTERM reach Poetry (and what it runs) directly.
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
