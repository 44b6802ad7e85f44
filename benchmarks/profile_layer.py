"""Where the conserving layer's time goes: torch.profiler tables, before and after.

``python -m benchmarks.profile_layer [--size 128] [--threads 1]`` prints, for the layer as
it was in 0.1.0 (:func:`benchmarks.layer._before`) and as it is now, the operators that took
the most time over a few forward+backward calls, and the share of ``aten::copy_`` and
``aten::fill_`` (the cost of autograd's backward of slices and in-place adds that the
rewrite removed), with the self CPU time per call. The figures quoted in RESULTS.md come
from this command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.layer import _before
from downscale.nn.conserving import MassConservingConvTranspose2d


def copy_fill_share(step: Callable[[], None], calls: int = 3) -> tuple[float, float, str]:
    """Share of self CPU time in ``copy_`` and ``fill_`` over ``calls`` calls, the self CPU
    time per call (ms), and the table."""
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    copies = sum(e.self_cpu_time_total for e in events
                 if e.key in ("aten::copy_", "aten::fill_"))
    return (copies / total, total / calls / 1e3,
            events.table(sort_by="self_cpu_time_total", row_limit=8))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_layer")
    parser.add_argument("--size", type=int, default=128, help="coarse grid edge (cells)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    layer = MassConservingConvTranspose2d(8, 4, 8)
    x = torch.randn(4, 8, args.size, args.size, requires_grad=True)
    area = torch.rand(1, 1, 4 * args.size, 4 * args.size) + 0.5
    def before() -> None:
        _before(layer, x, area).sum().backward()  # type: ignore[no-untyped-call]

    def after() -> None:
        layer(x, area).sum().backward()  # type: ignore[no-untyped-call]

    for name, step in (("before", before), ("after", after)):
        share, per_call_ms, table = copy_fill_share(step)
        print(f"{name}: {per_call_ms:.0f} ms self CPU per forward+backward; aten::copy_ + "
              f"aten::fill_ = {share:.0%} of forward+backward\n{table}")


if __name__ == "__main__":
    main()
