"""Peak memory of a run, measured from outside its processes (Linux ``/proc``).

Two figures, because a multi-process layout and a single process compare badly on either alone:

* per process, the resident high-water mark ``VmHWM`` since the process started (model loading included);
  summed over processes it over-counts the pages they share (the torch and vLLM libraries);
* for the machine, the peak of used memory (``MemTotal - MemAvailable``) sampled while the work runs,
  minus what was used just before it started: what the run adds, shared pages counted once. This is what
  Ray's memory monitor acts on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType


def _status_kb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """``VmHWM`` of process ``pid`` in MB (None if it is gone or not on this machine)."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def used_memory_mb() -> float:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        info[name] = float(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


class MemorySampler:
    """``with MemorySampler() as m: ...`` then ``m.peak_added_mb``: the most memory the machine used above its
    level at entry, sampled every ``interval_s`` in a background thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.baseline_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, used_memory_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self.baseline_mb = self.peak_mb = used_memory_mb()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.peak_mb = max(self.peak_mb, used_memory_mb())

    @property
    def peak_added_mb(self) -> float:
        return self.peak_mb - self.baseline_mb


def actor_peaks(controller: object) -> dict[str, float]:
    """Peak RSS (MB) of each engine and learner rank of a running ``Controller``, by name."""
    import ray

    out: dict[str, float] = {}
    for pool in (getattr(controller, "engines", None), getattr(controller, "learners", None)):
        if pool is None:
            continue
        infos = ray.get([a.info.remote() for a in pool.actors], timeout=60)
        for name, info in zip(pool.names, infos):
            peak = peak_rss_mb(int(info["pid"]))
            if peak is not None:
                out[name] = peak
    return out
