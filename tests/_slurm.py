"""A one-node SLURM cluster on this machine, for tests/test_workflow_slurm.py.

munged, slurmctld and slurmd (Debian's ``slurm-wlm``; ``tools/setup.sh
--slurm`` installs them) run as root with every file in one folder: their own
munge key and socket, ports, state, spool and logs. A system SLURM or munge,
if the machine has one, is neither used nor disturbed; clients (sbatch,
squeue, srun, the executor plugin) find this cluster through ``SLURM_CONF``.

The node is this machine as ``slurmd -C`` reports it (CPUs, memory), in two
partitions named like the SLURM profile's (``cpu``, ``gpu``), with no GPU
gres. No cgroups: containers rarely delegate a writable cgroup hierarchy,
and slurmd's cgroup plugins then cannot start a job step. So
``proctrack/linuxproc`` finds a job's processes through /proc's parent
links, ``task/none`` binds nothing, ``jobacct_gather/none`` samples nothing,
and no cgroup.conf is written. No accounting either (slurmdbd, MariaDB): the
executor plugin asks ``squeue`` for job states, which is reliable while the
controller keeps finished jobs for longer than the plugin's status interval
(``MinJobAge``, see :data:`MIN_JOB_AGE_S`).

Inside a job, the jobstep plugin (snakemake-executor-plugin-slurm-jobstep
0.6.1) runs the rule through a nested ``srun`` after dropping every
``SLURM_*`` variable but the job's identity, ``SLURM_CONF`` included; that
srun would look for /etc/slurm/slurm.conf (a real cluster's place, which
this one must not take). So the cluster's clients run with a ``bin/srun``
first on PATH that sets ``SLURM_CONF`` again and calls the real srun.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# Daemons and clients the cluster needs (packages slurmctld, slurmd,
# slurm-client and munge).
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun", "sinfo")
PARTITIONS = ("cpu", "gpu")
# Seconds the controller keeps a finished job: the executor plugin uses squeue
# only when this is at least 3 status intervals; ten minutes is ample.
MIN_JOB_AGE_S = 600
_START_TIMEOUT_S = 60
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def missing_programs() -> list[str]:
    """Programs of :data:`PROGRAMS` that are not on PATH."""
    return [name for name in PROGRAMS if shutil.which(name) is None]


@dataclass(frozen=True)
class Node:
    """This machine as a SLURM node: ``slurmd -C``'s line, e.g. ``NodeName=vm CPUs=2 ... RealMemory=24105``."""

    name: str
    cpus: int
    memory_mb: int
    line: str

    @classmethod
    def of_this_machine(cls) -> Node:
        """Read the node's name, CPUs, sockets, cores and memory from ``slurmd -C``."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
        line = out.splitlines()[0].strip()
        fields = dict(item.split("=", 1) for item in line.split())
        return cls(name=fields["NodeName"], cpus=int(fields["CPUs"]), memory_mb=int(fields["RealMemory"]),
                   line=line)


def _free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ClusterFiles:
    """Where one test cluster keeps its configuration, key, socket, state and logs."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_key(self) -> Path:
        return self.root / "munge" / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def write_srun_wrapper(self) -> None:
        """``bin/srun``: the real srun with this cluster's SLURM_CONF (see the module's docstring)."""
        real = shutil.which("srun")
        wrapper = self.bin / "srun"
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{real}" "$@"\n')
        wrapper.chmod(0o755)

    def make_folders(self) -> None:
        """Create the folders, and a fresh munge key only root can read."""
        for sub in ("etc", "munge", "state", "spool", "log", "bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.munge_key.write_bytes(os.urandom(1024))
        self.munge_key.chmod(0o400)


def slurm_conf(files: ClusterFiles, node: Node, *, ctld_port: int, slurmd_port: int) -> str:
    """slurm.conf of a one-node cluster: root daemons, no cgroups, no accounting."""
    r = files.root
    host = socket.gethostname().split(".")[0]
    node_line = node.line.replace(f"NodeName={node.name}", f"NodeName={node.name} NodeAddr=127.0.0.1")
    partitions = "\n".join(
        f"PartitionName={p} Nodes={node.name} MaxTime=INFINITE State=UP" + (" Default=YES" if i == 0 else "")
        for i, p in enumerate(PARTITIONS))
    return f"""\
ClusterName=dmritest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={files.munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'state' / 'slurmctld.pid'}
SlurmdPidFile={r / 'spool' / 'slurmd.pid'}
SlurmctldLogFile={files.logs / 'slurmctld.log'}
SlurmdLogFile={files.logs / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
MailProg=/bin/true
{node_line} State=UNKNOWN
{partitions}
"""


class SlurmCluster:
    """munged, slurmctld and slurmd of a one-node cluster in ``root``; a context manager.

    Entering writes the configuration, starts the daemons and waits until
    the node is idle; leaving cancels every job, stops the daemons and ends
    whatever a job left running (also after a failed start or test).
    """

    def __init__(self, root: Path):
        self.files = ClusterFiles(Path(root))
        self.node = Node.of_this_machine()
        self._daemons: list[subprocess.Popen] = []

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) as a client of this cluster.

        ``SLURM_CONF`` names this cluster's slurm.conf and ``bin/srun`` comes
        first on PATH; sbatch passes both on to the jobs.
        """
        base = dict(os.environ if base is None else base)
        return {**base, "SLURM_CONF": str(self.files.conf),
                "PATH": f"{self.files.bin}{os.pathsep}{base.get('PATH', os.defpath)}"}

    def __enter__(self) -> SlurmCluster:
        try:
            self._write_config()
            self._start_daemons()
            self._wait_until_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _write_config(self) -> None:
        """Folders, munge key and slurm.conf with free ports."""
        self.files.make_folders()
        self.files.write_srun_wrapper()
        self.files.conf.write_text(slurm_conf(self.files, self.node, ctld_port=_free_port(),
                                              slurmd_port=_free_port()))

    def _spawn(self, name: str, args: list[str]) -> None:
        """Start one daemon in the foreground (-D/-F), its output in log/<name>.out."""
        with (self.files.logs / f"{name}.out").open("w") as out:
            self._daemons.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                                  env=self.client_env(), start_new_session=True,
                                                  preexec_fn=_die_with_parent))

    def _start_daemons(self) -> None:
        """munged first (both SLURM daemons authenticate through it), then slurmctld and slurmd."""
        f = self.files
        # --force: pytest's temporary folders are private (0700), and munged
        # refuses a socket below them otherwise; only root talks to it here.
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={f.munge_socket}",
                               f"--key-file={f.munge_key}", f"--log-file={f.logs / 'munged.log'}",
                               f"--pid-file={f.root / 'munge' / 'munged.pid'}",
                               f"--seed-file={f.root / 'munge' / 'munged.seed'}"])
        self._wait_for(lambda: f.munge_socket.exists(), "munged to create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])  # -i: ignore any saved state
        self._spawn("slurmd", ["slurmd", "-D"])

    def _wait_for(self, ready, what: str) -> None:
        """Poll ``ready()`` until true; fail with the daemons' logs after the start timeout."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not ready():
            dead = [p.args[0] for p in self._daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"no answer in {_START_TIMEOUT_S} s"
                raise RuntimeError(f"test SLURM cluster: waited for {what}, {why}\n{self.log_tail()}")
            time.sleep(0.5)

    def _node_state(self) -> str:
        """The node's state as sinfo prints it (``idle``, ``down*``, ...), or '' while slurmctld is not up."""
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                             env=self.client_env(), timeout=30)
        return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else ""

    def _wait_until_idle(self) -> None:
        """Wait until slurmd has registered and the node takes jobs."""
        self._wait_for(lambda: self._node_state() == "idle", "the node to become idle")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of every daemon log, to explain a failure."""
        parts = []
        for path in sorted(self.files.logs.glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, end what jobs left; safe to call twice."""
        if self._daemons and all(p.poll() is None for p in self._daemons[:2]):
            subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True,
                           env=self.client_env(), timeout=30)
        for proc in reversed(self._daemons):
            _terminate(proc)
        self._daemons.clear()
        _kill_cluster_leftovers(self.files.conf)


def _die_with_parent() -> None:
    """Run in a daemon before exec: SIGTERM it when pytest dies without tearing down (a killed worker)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: stop() still ends the daemons
        pass


def _terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds, to one daemon we started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _kill_cluster_leftovers(conf: Path) -> None:
    """SIGKILL every process whose environment names this cluster's slurm.conf.

    slurmstepd and the job's own processes outlive slurmd (they are
    reparented to init); all of them inherited ``SLURM_CONF`` from the
    daemons or from sbatch, which identifies them as ours.
    """
    marker = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
