r"""Batch downscaling on SLURM: ``downscale run`` with its Dask workers as SLURM jobs.

Needs dask-jobqueue (``pip install dask-jobqueue``), which is not a dependency of downscale.
Run it where ``sbatch`` works (a login node, or a small long-running job); the workers need
the same Python environment, and the inputs and the output directory on a shared file system.

Example (8 jobs of 4 single-threaded CPU workers each; everything after ``--`` goes to
``downscale run``)::

    python pipelines/slurm_run.py --jobs 8 --cores 4 --memory 16GB --walltime 02:00:00 \
        --queue compute --account myproject -- \
        --checkpoint model.ckpt --input /data/tas_*.nc --output-dir /scratch/tas_fine \
        --time-block 120 --tile-size 512

One worker per GPU, with one thread and 8 booked CPUs (for reading and writing):
``--cores 1 --processes 1 --job-cpu 8 --job-extra=--gres=gpu:1`` and
``-- --device cuda ...``. ``--dry-run`` prints the job script and submits nothing. The run
is resumable: start the same command again after a time-out; it skips the finished outputs
(``downscale_run_record.json``). With ``-- ... --output /scratch/tas_fine.zarr`` (or
``--output-dir DIR --format zarr``) each worker writes the chunks it computes into a Zarr
store, and a rerun after a time-out computes only the chunks that are missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python pipelines/slurm_run.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs to start (default 4)")
    parser.add_argument("--cores", type=int, default=4, help="Dask worker threads per job "
                        "(default 4)")
    parser.add_argument("--processes", type=int, help="Dask workers per job (default: "
                        "--cores, i.e. single-threaded workers; 1 per GPU on GPU nodes)")
    parser.add_argument("--job-cpu", type=int, help="CPUs to book per job (default: --cores)")
    parser.add_argument("--memory", default="16GB", help="memory per job (default 16GB)")
    parser.add_argument("--walltime", default="01:00:00", help="time limit of each job")
    parser.add_argument("--queue", help="SLURM partition (#SBATCH -p)")
    parser.add_argument("--account", help="SLURM account (#SBATCH -A)")
    parser.add_argument("--job-extra", action="append", default=[],
                        help="extra #SBATCH directive, e.g. --job-extra=--gres=gpu:1 "
                        "(repeatable)")
    parser.add_argument("--prologue", action="append", default=[],
                        help="shell line run before each worker starts, e.g. 'module load "
                        "cuda' or 'source venv/bin/activate' (repeatable)")
    parser.add_argument("--interface", help="network interface of the workers, e.g. ib0")
    parser.add_argument("--local-directory", help="node-local scratch for the workers")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the job script and exit")
    parser.add_argument("run_args", nargs=argparse.REMAINDER,
                        help="-- then the arguments of 'downscale run'")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Start a SLURMCluster, run ``downscale run`` on it, release the jobs."""
    args = _parser().parse_args(argv)
    run_args = [a for a in args.run_args if a != "--"]
    if not args.dry_run and not run_args:
        print("slurm_run: error: give the arguments of 'downscale run' after --",
              file=sys.stderr)
        raise SystemExit(2)
    if "--scheduler" in run_args:
        print("slurm_run: error: --scheduler is set here (the SLURM cluster's address); "
              "leave it out", file=sys.stderr)
        raise SystemExit(2)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        print("slurm_run: error: dask-jobqueue is not installed. Install it with 'pip install "
              "dask-jobqueue' (it is not a dependency of downscale), or start the workers "
              "yourself and use 'downscale run --scheduler ADDRESS'.", file=sys.stderr)
        raise SystemExit(2) from None
    from distributed import Client

    from downscale.main import main as downscale_main

    cluster = SLURMCluster(
        cores=args.cores, processes=args.processes or args.cores, job_cpu=args.job_cpu,
        memory=args.memory, walltime=args.walltime, queue=args.queue, account=args.account,
        job_extra_directives=args.job_extra, job_script_prologue=args.prologue,
        interface=args.interface, local_directory=args.local_directory)
    with cluster:
        if args.dry_run:
            print(cluster.job_script())
            return
        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            print(f"slurm_run: {args.jobs} job(s) submitted; dashboard {client.dashboard_link}",
                  file=sys.stderr)
            client.wait_for_workers(1)
            downscale_main(["run", *run_args, "--scheduler", cluster.scheduler_address])


if __name__ == "__main__":
    main()
