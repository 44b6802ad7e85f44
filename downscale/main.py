r"""The ``downscale`` command: Lightning CLI subcommands plus ``demo``, ``coarsen``, ...

Examples::

    downscale demo                                   # train on real data, write ./demo_output
    downscale fit --config configs/experiments/e1_north_america.yaml
    downscale fit --data.path my.nc --data.variable tas --data.factor 4
    downscale predict --config configs/experiments/e1_north_america.yaml \
        --ckpt_path last --prediction_writer.output tas_downscaled.nc

``--verbose`` (anywhere on a Lightning command's line) shows Lightning's messages and
warnings, which are hidden by default.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from downscale.errors import DownscaleError

#: Subcommands handled outside LightningCLI: name -> (module, one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("downscale.demo", "train on embedded real data, write a NetCDF and a map"),
    "coarsen": ("downscale.coarsen", "area-weighted coarsening of a NetCDF file, as fit "
                "and check do it"),
    "check": ("downscale.check", "audit a coarse/fine NetCDF pair for mass conservation"),
    "run": ("downscale.batch.cli",
            "downscale coarse NetCDF files with a checkpoint (Dask, resumable; NetCDF, Zarr)"),
    "compare": ("downscale.compare", "train decoder variants alike, tabulate skill and artifacts"),
}
LIGHTNING_COMMANDS = {
    "fit": "train a model (--data.path FILE --data.variable NAME, or --config YAML)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "downscale a split with a checkpoint and write CF NetCDF",
}


def _usage() -> str:
    lines = ["usage: downscale COMMAND [options]   (downscale COMMAND --help for options)", "",
             "Learned, mass-conserving downscaling of climate grids.", "", "commands:"]
    commands = {**LIGHTNING_COMMANDS, **{k: v[1] for k, v in EXTRA_COMMANDS.items()}}
    lines += [f"  {name:<10} {text}" for name, text in commands.items()]
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``downscale`` command line (``args`` defaults to ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        from downscale import __version__

        print(f"downscale {__version__}")
        return
    _run_guarded(lambda: _dispatch(argv))


def _dispatch(argv: list[str]) -> None:
    _configure_logging()
    verbose = argv[0] in ("-v", "--verbose")
    if verbose:
        argv = argv[1:]
    if not argv:
        print(_usage())
        return
    if argv[0] in EXTRA_COMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        module.main(argv[1:])
    elif argv[0] in LIGHTNING_COMMANDS:
        _lightning_command(argv[0], argv[1:], verbose)
    else:
        commands = ", ".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS])
        raise DownscaleError(f"unknown command '{argv[0]}' (commands: {commands}); see "
                             "downscale --help")


def _lightning_command(command: str, args: list[str], verbose: bool) -> None:
    """``fit|validate|test|predict``: short help and input checks before Lightning loads."""
    from downscale import cli_args

    if cli_args.wants_short_help(args):
        print(cli_args.short_help(command))
        return
    verbose = verbose or "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    if cli_args.wants_full_help(args):
        args = cli_args.full_help_argv(args)
    else:
        cli_args.check_data_arguments(args)
    from downscale.cli import run_lightning_cli

    run_lightning_cli([command, *args], verbose=verbose)


def _configure_logging() -> None:
    """Show the package's INFO messages (cropping, splits, files written) on stderr."""
    logger = logging.getLogger("downscale")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _run_guarded(action: Callable[[], None]) -> None:
    """Run ``action``; user errors become one line on stderr and exit status 2."""
    try:
        action()
    except DownscaleError as exc:
        logging.shutdown()
        print(f"downscale: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except ValueError as exc:
        # jsonargparse wraps errors raised while it instantiates classes from a config (a
        # decoder setting, say) in its own ValueError; the user's error is in the chain.
        user_error = _wrapped_user_error(exc)
        if user_error is None:
            raise
        logging.shutdown()
        print(f"downscale: error: {user_error}", file=sys.stderr)
        raise SystemExit(user_error.exit_code) from None
    except KeyboardInterrupt:
        print("downscale: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _wrapped_user_error(exc: BaseException) -> DownscaleError | None:
    """The first :class:`DownscaleError` in the cause/context chain of ``exc``, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DownscaleError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
