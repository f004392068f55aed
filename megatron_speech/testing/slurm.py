"""A one-node Slurm cluster in a scratch directory, so tests run the real sbatch scripts.

Everything is private to the directory: its own munge key and socket, its own ports, state and
spool, so it runs beside (or without) a system Slurm. Needs Debian's ``slurm-wlm`` and ``munge``
(installed by ``scripts/setup.sh``) and root, as the daemons run as the current user.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from megatron_speech.parallel import free_port

REQUEUE_DELAY_S = 10  # a requeued job starts again after this many seconds (Slurm's default: 120)
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "mungekey")
_RUNNING: set["LocalSlurmCluster"] = set()
_TEARDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _stop_all() -> None:
    for cluster in list(_RUNNING):
        cluster.stop()


def _stop_all_and_die(signum: int, frame) -> None:
    """A test run killed by a signal stops its clusters' daemons first, then dies of the signal."""
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_teardown() -> None:
    """Once a process: stop every running cluster at exit and on SIGTERM/SIGHUP (an interrupted
    suite must not leave daemons behind). Ctrl-C is a KeyboardInterrupt, which unwinds ``with``."""
    if getattr(_install_teardown, "done", False):
        return
    atexit.register(_stop_all)
    for signum in _TEARDOWN_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _stop_all_and_die)
    _install_teardown.done = True


def wait_for(predicate, timeout_s: float, what: str, detail=lambda: ""):
    """Poll ``predicate`` until it returns something true (returned); on timeout, say what and ``detail()``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{detail()}")


class LocalSlurmCluster:
    def __init__(self, root: str | Path, cpus: int | None = None) -> None:
        missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
        if missing:
            raise RuntimeError(f"Slurm/munge programs not found: {missing}; run scripts/setup.sh")
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname()
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def _path(self, name: str) -> str:
        return str(self.root / name)

    def _write_config(self) -> None:
        config = {
            "ClusterName": "megatronspeech",
            "SlurmctldHost": self.host,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            # cred_expire also sets how long a requeued job waits before it may start again (120 s
            # by default). A job started sooner is refused by slurmd ("credential revoked") and FAILS.
            "AuthInfo": f"socket={self._path('munge/munge.socket')},cred_expire={REQUEUE_DELAY_S}",
            "CredType": "cred/munge",
            "SlurmctldPort": free_port(),
            "SlurmdPort": free_port(),
            "StateSaveLocation": self._path("state"),
            "SlurmdSpoolDir": self._path("spool"),
            "SlurmctldPidFile": self._path("slurmctld.pid"),
            "SlurmdPidFile": self._path("slurmd.pid"),
            "SlurmctldLogFile": self._path("log/slurmctld.log"),
            "SlurmdLogFile": self._path("log/slurmd.log"),
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "MpiDefault": "none",
            "ReturnToService": 2,
            "JobRequeue": 1,
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
        }
        lines = [f"{k}={v}" for k, v in config.items()]
        lines.append(f"NodeName={self.host} CPUs={self.cpus} State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        (self.root / "slurm.conf").write_text("\n".join(lines) + "\n")

    def start(self) -> "LocalSlurmCluster":
        _install_teardown()
        _RUNNING.add(self)
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", "--force", f"--keyfile={key}"], check=True)
        key.chmod(0o600)
        subprocess.run(
            ["munged", f"--socket={self._path('munge/munge.socket')}", f"--key-file={key}",
             f"--pid-file={self._path('munge/munged.pid')}", f"--log-file={self._path('munge/munged.log')}",
             f"--seed-file={self._path('munge/seed')}", "--force"],
            check=True,
        )
        self._write_config()
        conf = self._path("slurm.conf")
        subprocess.run(["slurmctld", "-f", conf], check=True, env=self.env)
        subprocess.run(["slurmd", "-f", conf], check=True, env=self.env)
        wait_for(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False), 60, "the node to be idle")
        return self

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(args, capture_output=True, text=True, env=self.env)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def submit(self, script: str | Path, *args: str, cwd: str | Path, options: tuple[str, ...] = (),
               env: dict | None = None) -> int:
        """``sbatch [options] script [args]`` from ``cwd``; returns the job id."""
        result = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], capture_output=True,
                                text=True, cwd=cwd, env={**self.env, **(env or {})})
        if result.returncode:
            raise RuntimeError(f"sbatch {script} failed: {result.stderr.strip()}")
        return int(result.stdout.strip().split(";")[0])

    def job_field(self, job_id: int, field: str) -> str:
        """A field of ``scontrol show job`` (e.g. JobState, Restarts), or '' once the job is gone."""
        out = self.run("scontrol", "show", "job", str(job_id), check=False)
        for token in out.split():
            key, _, value = token.partition("=")
            if key == field:
                return value
        return ""

    def completed(self, job_id: int) -> bool:
        """Whether the job has completed; raises once it has failed."""
        state = self.job_field(job_id, "JobState")
        if state == "FAILED":
            raise RuntimeError(f"job {job_id} failed: {self.run('scontrol', 'show', 'job', str(job_id), check=False)}")
        return state == "COMPLETED"

    def stop(self) -> None:
        _RUNNING.discard(self)
        self.run("scancel", "--user=root", check=False)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass

    def __enter__(self) -> "LocalSlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
