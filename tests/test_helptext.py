"""Help a user can read: plain text in the terminal, citing documents that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from downscale.helptext import plain
from downscale.main import EXTRA_COMMANDS, LIGHTNING_COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SPHINX = re.compile(r":(func|class|mod|meth|attr|data|obj):`")


@pytest.mark.parametrize("command", [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
def test_every_commands_help_is_plain_text(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "downscale", command, "--help"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not SPHINX.search(result.stdout), SPHINX.search(result.stdout)
    assert "DESIGN.md" not in result.stdout


def test_plain_removes_roles_and_literal_quotes() -> None:
    text = plain("Uses :func:`downscale.io.open_field` and ``--output``, e.g.::\n\n    x\n")
    assert text == "Uses downscale.io.open_field and --output, e.g.:\n\n    x\n"


def test_the_package_cites_only_documents_in_the_repository() -> None:
    cited = set()
    for path in (ROOT / "downscale").rglob("*.py"):
        text = path.read_text()
        assert "DESIGN.md" not in text, path
        cited |= set(re.findall(r"docs/[\w./-]+\.md", text))
    for doc in cited:
        assert (ROOT / doc).is_file(), doc
    method = (ROOT / "docs" / "method.md").read_text().lower()
    for anchor in re.findall(r"docs/method\.md#([\w-]+)",
                             " ".join(p.read_text() for p in (ROOT / "downscale").rglob("*.py"))):
        assert f"## {anchor.replace('-', ' ')}" in method, anchor
