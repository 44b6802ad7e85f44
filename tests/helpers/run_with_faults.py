"""``downscale run`` with fault points injected, for tests that interrupt a real process.

Usage (from the repository root)::

    python -m tests.helpers.run_with_faults --pause read:30 -- --checkpoint ... --output ...

``--pause POINT:SECONDS`` (repeatable) sleeps at each occurrence of a named point of
:data:`downscale.batch.execute.POINTS` (e.g. ``computed:0.5`` slows every chunk down),
so that a test can kill the process there. ``--hold POINT:FILE`` (repeatable) waits at each
occurrence of a point until FILE exists (at most :data:`HOLD_LIMIT_S`), so that a test
keeps the run there exactly as long as it needs, not a guessed number of seconds. The
run itself is
:func:`downscale.batch.cli.main` with :class:`~downscale.batch.execute.Hooks`: users'
``downscale run`` has no such option and reads no environment variable for it.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from downscale.batch.cli import main as run_main
from downscale.batch.execute import POINTS, Hooks
from downscale.main import _run_guarded

#: The longest a ``--hold`` waits (s): a test that never releases the run fails, not hangs.
HOLD_LIMIT_S = 300.0


def sleep_at(pauses: dict[str, float], point: str) -> None:
    """Sleep ``pauses[point]`` seconds (a module function: picklable for Dask workers)."""
    if point in pauses:
        time.sleep(pauses[point])


def hold_at(holds: dict[str, str], pauses: dict[str, float], point: str) -> None:
    """Wait at ``point`` until the file ``holds[point]`` exists, then sleep ``pauses[point]``."""
    if point in holds:
        release, deadline = Path(holds[point]), time.monotonic() + HOLD_LIMIT_S
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    sleep_at(pauses, point)


def _point(parser: argparse.ArgumentParser, spec: str) -> tuple[str, str]:
    point, _, value = spec.partition(":")
    if point not in POINTS:
        parser.error(f"unknown point {point!r}; one of {', '.join(POINTS)}")
    return point, value


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``--pause`` and ``--hold`` options, then run ``downscale run`` with the rest."""
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.run_with_faults")
    parser.add_argument("--pause", action="append", default=[], metavar="POINT:SECONDS")
    parser.add_argument("--hold", action="append", default=[], metavar="POINT:FILE")
    parser.add_argument("run_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    pauses = {point: float(seconds) for point, seconds in map(
        functools.partial(_point, parser), args.pause)}
    holds = dict(_point(parser, spec) for spec in args.hold)
    rest = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    hooks = Hooks(pause=functools.partial(hold_at, holds, pauses))
    _run_guarded(lambda: run_main(rest, hooks=hooks))


if __name__ == "__main__":
    from downscale.main import _configure_logging

    _configure_logging()
    main(sys.argv[1:])
