"""The Lightning commands' arguments read without importing Lightning.

Importing Lightning takes 5-10 s. Two things need no Lightning and should be fast: the
short ``--help`` of ``fit|validate|test|predict`` (what users set first, with its defaults
read from the source), and the check that ``--data.path`` and ``--data.variable`` (from
the command line or the ``--config`` files, last one wins) name a readable file holding
the variable, so that a typo is reported in about a second instead of after the import.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Where ``fit`` writes logs and checkpoints unless ``--trainer.default_root_dir`` says.
DEFAULT_ROOT = "outputs"
#: Training epochs unless a config or ``--trainer.max_epochs`` says otherwise.
DEFAULT_MAX_EPOCHS = 100
#: Epochs without a lower validation loss after which training stops.
EARLY_STOPPING_PATIENCE = 10
#: Flags that show Lightning's complete help instead of the short one.
FULL_HELP_FLAGS = ("--help-all", "--help=full")

_DATAMODULE_SOURCE = Path(__file__).parent / "data" / "datamodule.py"
#: Data options shown first in ``fit --help``, in this order.
_DATA_OPTIONS = ("path", "variable", "factor", "coarse_path", "patch_size", "batch_size",
                 "samples_per_epoch", "covariate_path")

_WIDTH = 88
_USAGE = {
    "fit": "train a model on NetCDF files",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "downscale a split with a checkpoint and write CF NetCDF",
}


def wants_short_help(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (after the command) asks for the short help."""
    return any(a in ("-h", "--help") for a in argv) and not wants_full_help(argv)


def wants_full_help(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (after the command) asks for Lightning's complete help."""
    return any(a in FULL_HELP_FLAGS for a in argv)


def full_help_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the full-help flags replaced by Lightning's ``--help``."""
    return ["--help" if a in FULL_HELP_FLAGS else a for a in argv]


def short_help(command: str) -> str:
    """The short help of a Lightning command: what users set, and how to see the rest."""
    data = _data_options()
    what = _USAGE[command]
    lines = [f"usage: downscale {command} [--config YAML ...] [--data.path FILE "
             "--data.variable NAME] [options]", "", f"{what[0].upper()}{what[1:]}.", ""]
    if command == "fit":
        lines += [
            "Logs go to DIR/version_N/ and checkpoints to DIR/checkpoints/ (last.ckpt is the",
            f"latest run's), DIR being --trainer.default_root_dir (default ./{DEFAULT_ROOT}).",
            "", "what you usually set:"]
    else:
        lines += ["what you usually set:",
                  _option("--ckpt_path CKPT", "the checkpoint (a .ckpt file, or 'last': the "
                          f"latest in DIR/checkpoints/, DIR = --trainer.default_root_dir, "
                          f"default ./{DEFAULT_ROOT})")]
    if command == "predict":
        lines.append(_option("--prediction_writer.output FILE",
                             "the NetCDF file to write"))
    lines.append(_option("--config YAML", "a configuration file (repeatable, the last one "
                         "wins), e.g. configs/experiments/e1_north_america.yaml"))
    lines += [_option(f"--data.{name} {meta}", text) for name, meta, text in data]
    if command == "fit":
        lines += [
            _option("--trainer.max_epochs N", f"most training epochs (default "
                    f"{DEFAULT_MAX_EPOCHS}; training stops earlier once the validation loss "
                    f"has not improved for {EARLY_STOPPING_PATIENCE} epochs)"),
            _option("--trainer.default_root_dir DIR", f"where logs and checkpoints go "
                    f"(default ./{DEFAULT_ROOT})"),
            _option("--ckpt_path last", "resume the latest run in DIR/checkpoints/"),
        ]
    lines += [
        _option("--trainer.accelerator NAME", "cpu, gpu or auto (default auto)"),
        _option("--trainer.devices N", "devices to use (default auto: all of one kind)"),
        _option("--print_config", "print the complete configuration and exit"),
        _option("--verbose", "show Lightning's messages and warnings"),
        "",
        "more:",
        f"  downscale {command} --help-all                         every option "
        "(Lightning's full help)",
        f"  downscale {command} --data.help DownscalingDataModule  every data option",
        f"  downscale {command} --model.help DownscalingTask       every model option",
        "  README.md, section Use                           configs, outputs, examples",
    ]
    return "\n".join(lines)


def _option(flag: str, text: str) -> str:
    """One option of the help: the flag, then its text wrapped beside it."""
    import textwrap

    body = textwrap.wrap(text, width=_WIDTH - 35) or [""]
    first = f"  {flag:<32} {body[0]}" if len(flag) <= 32 else f"  {flag}\n{'':<35}{body[0]}"
    return "\n".join([first, *(f"{'':<35}{line}" for line in body[1:])])


def _data_options() -> list[tuple[str, str, str]]:
    """``(name, metavar, description with default)`` of the DataModule's main arguments.

    Read from its source: importing it would import torch and Lightning.
    """
    tree = ast.parse(_DATAMODULE_SOURCE.read_text())
    cls = next(n for n in tree.body
               if isinstance(n, ast.ClassDef) and n.name == "DownscalingDataModule")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args.args[1:]
    defaults: dict[str, str] = {
        a.arg: ast.unparse(d)
        for a, d in zip(args[len(args) - len(init.args.defaults):], init.args.defaults,
                        strict=True)}
    described = _docstring_args(ast.get_docstring(cls) or "")
    out = []
    for name in _DATA_OPTIONS:
        meta = "N" if defaults.get(name, "").isdigit() else (
            "FILE" if "path" in name else "NAME")
        text = described.get(name, "").rstrip(".")
        if name in defaults and defaults[name] != "None":
            text += f" (default {defaults[name]})"
        out.append((name, meta, text))
    return out


def _docstring_args(doc: str) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: name -> one-line description."""
    out: dict[str, str] = {}
    current = None
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped == "Args:":
            in_args = True
            continue
        if not in_args:
            continue
        if line.startswith("        ") and current:  # a continuation line
            out[current] += " " + stripped
        elif stripped and ":" in stripped and line.startswith("    "):
            current, text = stripped.split(":", 1)
            out[current] = text.strip()
        elif stripped and not line.startswith(" "):
            break
    return {k: _plain(v) for k, v in out.items()}


def _plain(text: str) -> str:
    """Docstring text as one line of terminal help, starting in lower case."""
    from downscale.helptext import plain

    text = " ".join(plain(text).split())
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def data_arguments(argv: Sequence[str]) -> dict[str, Any]:
    """``path`` and ``variable`` of the data section as the command line sets them.

    Reads ``--config`` files in order, then ``--data.path``/``--data.variable`` flags (the
    last one wins, as in LightningCLI). Values this cannot read are left out.
    """
    import yaml

    found: dict[str, Any] = {}
    items = list(argv)
    for i in range(len(items)):
        key, value = _flag_value(items, i)
        if key in ("--config", "-c") and value is not None:
            try:
                config = yaml.safe_load(Path(value).read_text())
            except (OSError, yaml.YAMLError):
                continue  # LightningCLI reports it
            data = config.get("data") if isinstance(config, dict) else None
            if isinstance(data, dict):
                if "class_path" in data and "DownscalingDataModule" not in str(data["class_path"]):
                    found.clear()  # another DataModule: its arguments differ
                    continue
                init = data.get("init_args", data)
                found.update({k: init[k] for k in ("path", "variable")
                              if isinstance(init, dict) and k in init})
        for name in ("path", "variable"):
            if key in (f"--data.{name}", f"--data.init_args.{name}") and value is not None:
                found[name] = yaml.safe_load(value) if value.startswith("[") else value
    return found


def _flag_value(argv: list[str], i: int) -> tuple[str, str | None]:
    """The flag at ``argv[i]`` and its value (``--flag value`` or ``--flag=value``)."""
    arg = argv[i]
    if "=" in arg and arg.startswith("-"):
        key, value = arg.split("=", 1)
        return key, value
    return arg, argv[i + 1] if i + 1 < len(argv) else None


def check_data_arguments(argv: Sequence[str]) -> None:
    """Fail fast (one line) when the data file is missing or lacks the variable.

    Datasets named ``manifest://<id>`` are checked when the DataModule resolves them.

    Raises:
        InputError: A file is missing or unreadable, or lacks the variable.
    """
    args = data_arguments(argv)
    paths = args.get("path")
    variable = args.get("variable")
    if paths is None or not isinstance(variable, str):
        return
    path_list = [paths] if isinstance(paths, str) else list(paths)
    if not path_list or any(str(p).startswith("manifest://") for p in path_list):
        return
    from downscale.errors import InputError
    from downscale.io import open_field

    for path in path_list:
        if not Path(str(path)).exists():
            raise InputError("file not found", path=str(path), variable=variable,
                             hint="check --data.path")
    # The first file tells whether the variable is there; opening all of a long list of
    # files is the DataModule's job.
    open_field(str(path_list[0]), variable).close()
