"""Rewrite the table in README.md from the messages the bad-input suite actually saw.

Usage (from the repository root)::

    PYTHONPATH=$PWD python tests/bad_inputs/make_table.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        seen = Path(tmp) / "seen.json"
        env = {**os.environ, "DOWNSCALE_BAD_INPUT_TABLE": str(seen)}
        subprocess.run([sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:warnings"],
                       env=env, check=True)
        # A fault, not an input: the worker-loss test adds the line it saw (slow, real Dask).
        subprocess.run([sys.executable, "-m", "pytest", str(HERE.parent / "test_worker_loss.py"),
                        "-q", "-p", "no:warnings", "-m", "slow", "-k", "fails_in_one_line"],
                       env=env, check=True)
        rows = json.loads(seen.read_text())
    lines = ["| case | entry point | message the user sees |", "|---|---|---|"]
    for row in rows:
        message = row["message"].replace("|", "\\|")
        case = row["case"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(f"| {case} | {row['entry']} | {message} |")
    readme = HERE / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN)
    readme.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + rest.split(END)[1])


if __name__ == "__main__":
    main()
