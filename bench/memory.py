"""Resident memory of a process tree (a Celery worker and its pool children), from /proc."""

from __future__ import annotations

import threading


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/<pid>/children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def rss_by_pid(pid: int) -> dict[int, float]:
    """Current resident memory of each process of a tree, in MiB."""
    return {p: _status_kb(p, "VmRSS") / 1024 for p in process_tree(pid)}


def rss_mb(pid: int) -> float:
    """Current resident memory of a process tree, in MiB."""
    return sum(rss_by_pid(pid).values())


def hwm_mb(pid: int) -> float:
    """Sum of each process's own peak RSS (VmHWM) over a process tree, in MiB."""
    return sum(_status_kb(p, "VmHWM") for p in process_tree(pid)) / 1024


class PeakRss:
    """Samples the summed VmRSS of some process trees every `interval` seconds in a thread;
    `take()` returns the peak since the last take (a phase's peak) and starts a new one."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.roots: dict[str, int] = {}
        self._peaks: dict[str, float] = {}
        self._detail: dict[str, dict] = {}
        self.last_detail: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self.roots[name] = pid
            self._peaks[name] = rss_mb(pid)

    def unwatch(self, name: str) -> None:
        with self._lock:
            self.roots.pop(name, None)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def _sample(self) -> None:
        with self._lock:
            for name, pid in self.roots.items():
                each = rss_by_pid(pid)
                self._peaks[name] = max(self._peaks.get(name, 0.0), sum(each.values()))
                seen = self._detail.setdefault(name, {"processes": 0, "largest_process": 0.0})
                seen["processes"] = max(seen["processes"], len(each))
                seen["largest_process"] = max(seen["largest_process"], max(each.values()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def take(self) -> dict[str, float]:
        """Peak summed RSS per watched tree since the last take; details in `last_detail`:
        the most processes seen in the tree and the largest single process."""
        self._sample()
        with self._lock:
            peaks = {name: round(mb, 1) for name, mb in self._peaks.items() if name in self.roots}
            self.last_detail = {
                name: {
                    "processes": d["processes"],
                    "largest_process": round(d["largest_process"], 1),
                }
                for name, d in self._detail.items()
                if name in self.roots
            }
            self._peaks = {name: rss_mb(pid) for name, pid in self.roots.items()}
            self._detail = {}
        return peaks

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
