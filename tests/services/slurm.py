"""A real single-node SLURM cluster for tests and CI: install, start, stop (by PID).

Debian's ``slurm-wlm`` and ``munge``, run as root without systemd: ``munged`` as the
``munge`` user (socket in ``/run/munge``), ``slurmctld`` and ``slurmd`` with a slurm.conf,
state, spool, logs and PID files under one folder. Clients find the cluster through
``SLURM_CONF``. Starting takes about a second once the packages are installed.

    python tests/services/slurm.py start DIR   # prints: export SLURM_CONF=DIR/slurm.conf
    python tests/services/slurm.py stop DIR    # stops what start started, by PID

(``eval "$(python tests/services/slurm.py start DIR)"`` exports it, as ``.ci/run`` does.)
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged")
#: Memory the node offers (MiB): at least the largest --mem a test asks for (dask-jobqueue's
#: memory="1GB" asks for 954M).
REAL_MEMORY_MB = 2048
CPUS = 2
MUNGE_RUN = Path("/run/munge")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


def missing_reason() -> str | None:
    """Why SLURM cannot run here (None: it can, possibly after installing it)."""
    if sys.platform != "linux":
        return "SLURM tests need Linux"
    if all(shutil.which(d) for d in ("slurmctld", "slurmd", "munged", "sbatch")):
        return None if os.geteuid() == 0 else "starting SLURM's daemons needs root"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed, and cannot be (needs root and apt-get)"
    return None


def install() -> None:
    """Install slurm-wlm and munge with apt-get where they are missing.

    Raises:
        SlurmUnavailable: Not root, no apt-get, or the installation failed.
    """
    reason = missing_reason()
    if reason is not None:
        raise SlurmUnavailable(reason)
    if all(shutil.which(d) for d in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path) -> Path:
    """Write ``slurm.conf`` for this host into ``directory``; its path."""
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    conf = directory / "slurm.conf"
    conf.write_text(f"""\
ClusterName=downscale-ci
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
KillWait=5
SlurmdTimeout=30
StateSaveLocation={directory / "state"}
SlurmdSpoolDir={directory / "spool"}
SlurmctldPidFile={directory / "slurmctld.pid"}
SlurmdPidFile={directory / "slurmd.pid"}
SlurmctldLogFile={directory / "slurmctld.log"}
SlurmdLogFile={directory / "slurmd.log"}
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={REAL_MEMORY_MB} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _munge_works() -> bool:
    try:
        token = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=True)
        subprocess.run(["unmunge"], input=token.stdout, capture_output=True, timeout=10,
                       check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _start_munge(directory: Path) -> None:
    """Start munged as the munge user unless one already answers (then it is left alone)."""
    if _munge_works():
        return
    munge = pwd.getpwnam("munge")
    MUNGE_RUN.mkdir(parents=True, exist_ok=True)
    os.chown(MUNGE_RUN, munge.pw_uid, munge.pw_gid)
    MUNGE_RUN.chmod(0o755)
    # munged writes its PID file as the munge user, so in its own folder; the copy here
    # tells stop() which process this start owns.
    (MUNGE_RUN / "munged.pid").unlink(missing_ok=True)
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True,
                   capture_output=True, timeout=30)
    _wait(lambda: bool((MUNGE_RUN / "munged.pid").is_file()
                       and (MUNGE_RUN / "munged.pid").read_text().strip()),
          "munged wrote no PID file", directory)
    (directory / "munged.pid").write_text((MUNGE_RUN / "munged.pid").read_text())
    _wait(_munge_works, "munged did not answer", directory)


def _wait(ready: Callable[[], bool], what: str, directory: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-2000:]
                   for p in sorted(directory.glob("*.log")))
    raise SlurmUnavailable(f"{what} within {timeout:g} s{logs}")


def client_env(directory: Path) -> dict[str, str]:
    """The environment of a SLURM client (sbatch, scontrol, dask-jobqueue) of the cluster."""
    return {**os.environ, "SLURM_CONF": str(directory / "slurm.conf")}


def _node_idle(directory: Path) -> bool:
    result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=client_env(directory),
                            capture_output=True, text=True, timeout=10)
    return result.returncode == 0 and result.stdout.strip().rstrip("*") in ("idle", "mixed")


def start(directory: Path) -> Path:
    """Install if needed, then start munged, slurmctld and slurmd; the slurm.conf path.

    Raises:
        SlurmUnavailable: SLURM cannot be installed or did not come up (logs attached).
    """
    install()
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    conf = write_config(directory)
    _start_munge(directory)
    env = client_env(directory)
    for daemon in ("slurmctld", "slurmd"):
        result = subprocess.run([daemon, "-f", str(conf)], env=env, capture_output=True,
                                text=True, timeout=30)
        if result.returncode != 0:
            stop(directory)
            raise SlurmUnavailable(f"{daemon} failed to start: {result.stderr.strip()}")
    try:
        _wait(lambda: _node_idle(directory), "the node did not become idle", directory)
    except SlurmUnavailable:
        stop(directory)
        raise
    return conf


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(directory: Path) -> None:
    """Stop the daemons that :func:`start` started, by the PIDs in their PID files."""
    directory = Path(directory).resolve()
    for daemon in DAEMONS:
        pid_file = directory / f"{daemon}.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid > 1 and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """``start DIR`` (prints the export line) or ``stop DIR``."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/services/slurm.py start|stop DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1])
    if argv[0] == "stop":
        stop(directory)
        return 0
    try:
        conf = start(directory)
    except SlurmUnavailable as exc:
        print(f"slurm: {exc}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={conf}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
