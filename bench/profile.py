"""`python -m bench --profile [--postgres] [--quick|--smoke]` (or `python -m bench.profile`):
where one order's CPU goes in the saga's stack.

It starts the stack as the bench does (a private Redis, fresh databases, the Procfile's
worker, orchestrator, relay and web processes, the first --modes entry), warms it up,
then runs the happy path's throughput run (scenario 2: the profile's saga_saturation
orders from 16 submitters) with `py-spy record --subprocesses --nonblocking` attached to
every stack process (the Celery worker and its pool children, gunicorn and its workers,
the orchestrator, the relay). It writes profile.md and profile.json to --out, and each
process tree's raw py-spy stacks (collapsed, for flamegraph.pl) to --out/profile-raw/.

- By process: each process's own CPU time (utime + stime, /proc/<pid>/stat) over the
  run, per COMPLETED order, with Redis and (PostgreSQL) the database server beside them.
  Exact, and what bench/cost.py sums.
- By package and by function: py-spy's samples of a process (idle threads left out)
  shared out over that process's measured CPU, so the figures add up to its ms per order.
  Self time (the frame on top) by package and by function, and time inclusive of callees
  for the project's own functions (app/, sagaflow/, tasks/, compensations/).

py-spy reads the processes' memory without stopping them (--nonblocking), at --rate
samples a second; its own CPU is not counted, but it shares the cores, so throughput
under the profiler is lower than without it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import cost, scenarios
from bench.memory import process_tree

PROJECT = ("app/", "sagaflow/", "tasks/", "compensations/", "config/")
TOP = 25


class PySpy:
    """`py-spy record` on one process tree, until stopped with SIGINT (it then writes)."""

    def __init__(self, label: str, pid: int, out: Path, rate: int):
        self.label, self.pid, self.path = label, pid, out / f"{label}.txt"
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent))
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install -r bench/requirements.txt")
        self.argv = [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
        self.argv += ["--rate", str(rate), "--format", "raw", "--output", str(self.path)]
        self.log = out / f"{label}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PySpy:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self, grace: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def own_seconds(pid: int) -> float:
    """utime + stime of one process (not its children)."""
    fields = cost._stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / cost.CLK_TCK if fields else 0.0


def name_of(label: str, root: int, pid: int) -> str:
    return f"{label} (main)" if pid == root else f"{label} child"


class Recording:
    """A cost window (bench/cost.py's interface) that also runs py-spy on every root and
    reads each process's own CPU, from begin() to end()."""

    def __init__(self, meter: cost.Meter, roots: dict[str, int], out: Path, rate: int):
        self.window = cost.Window(meter, roots)
        self.roots, self.out, self.rate = roots, out, rate
        self.spies: list[PySpy] = []
        self.before: dict[str, float] = {}
        self.result: dict | None = None

    def _by_process(self) -> dict[str, float]:
        seconds: dict[str, float] = {}
        for label, root in self.roots.items():
            for pid in set(process_tree(root)):
                name = name_of(label, root, pid)
                seconds[name] = seconds.get(name, 0.0) + own_seconds(pid)
        return seconds

    def begin(self) -> None:
        self.spies = [
            PySpy(label, pid, self.out, self.rate).start() for label, pid in self.roots.items()
        ]
        time.sleep(1.0)  # py-spy attaches to every process of its tree
        self.window.begin()
        self.before = self._by_process()

    def end(self, completed: int) -> dict:
        after = self._by_process()
        total = self.window.end(completed)
        for spy in self.spies:
            spy.stop()
        self.result = {
            "completed": completed,
            "total": total,
            "process_ms": {
                name: (after[name] - self.before.get(name, 0.0)) * 1000 / completed
                for name in after
            },
        }
        return total

    def stop(self) -> None:
        for spy in self.spies:
            spy.stop()


# --- py-spy's collapsed stacks -------------------------------------------------------------


def read_stacks(path: Path, label: str, root: int, names: dict[int, str]):
    """(process name, [frames, outermost first], samples) for each line of a raw file."""
    if not path.exists():
        return
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        pid, code = root, []
        for frame in frames:
            if frame.startswith("process ") and ":" in frame:
                pid = int(frame.split()[1].split(":")[0])
            else:
                code.append(frame)
        yield names.get(pid, name_of(label, root, pid)), code, int(count)


def function_of(frame: str) -> str:
    """'Session.get (sqlalchemy/orm/session.py:3712)': the same, without the line number."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def package_of(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")")
    path = where.rsplit(":", 1)[0]
    if path.startswith(PROJECT):
        return path.split("/")[0] + "/ (project)"
    return path.split("/")[0].removesuffix(".py") or "?"


def breakdown(recording: Recording, out: Path) -> dict:
    """Samples shared out over each process's measured CPU: ms per order."""
    process_ms = recording.result["process_ms"]
    samples: dict[str, int] = {}
    stacks = []
    for label, root in recording.roots.items():
        for name, code, count in read_stacks(out / f"{label}.txt", label, root, {}):
            samples[name] = samples.get(name, 0) + count
            stacks.append((name, code, count))
    # A process's entry points (main, its run loop) are in nearly every sample: left out
    # of the inclusive table, which is about what the loop spends its time on.
    seen: dict[tuple[str, str], int] = {}
    for name, code, count in stacks:
        for fn in {function_of(f) for f in code}:
            seen[(fn, name)] = seen.get((fn, name), 0) + count
    entry = {key for key, n in seen.items() if n >= 0.9 * samples[key[1]]}
    self_fn, self_pkg, inclusive = {}, {}, {}
    for name, code, count in stacks:
        if not code or not samples.get(name):
            continue
        ms = process_ms.get(name, 0.0) * count / samples[name]
        top = code[-1]
        key = (function_of(top), name.split(" ")[0])
        self_fn[key] = self_fn.get(key, 0.0) + ms
        pkg = (package_of(top), name.split(" ")[0])
        self_pkg[pkg] = self_pkg.get(pkg, 0.0) + ms
        for fn in {function_of(f) for f in code if package_of(f).endswith("(project)")}:
            if (fn, name) in entry:
                continue
            key = (fn, name.split(" ")[0])
            inclusive[key] = inclusive.get(key, 0.0) + ms

    def top(table: dict, n: int = TOP) -> list[dict]:
        ordered = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [{"what": k[0], "process": k[1], "ms": round(v, 3)} for k, v in ordered]

    return {
        "samples_by_process": samples,
        "self_by_package": top(self_pkg, 15),
        "self_by_function": top(self_fn),
        "project_inclusive": top(inclusive),
    }


def markdown(p: dict) -> str:
    total = p["cost"]
    lines = [
        f"Where one order's CPU goes: saga ({p['saga_mode']}), {p['databases']} databases, "
        f"{p['orders']} happy-path orders from {p['submitters']} submitters, py-spy at "
        f"{p['rate']} Hz; {p['started_at']}",
        "",
        f"{p['throughput']} COMPLETED orders/s under the profiler; CPU per COMPLETED order "
        f"{total['cpu_ms']} ms in all (every process, Redis"
        f"{', the PostgreSQL server' if p['databases'] == 'postgresql' else ''}).",
        "",
        "| process | CPU ms per order | share | py-spy samples |",
        "|---|---|---|---|",
    ]
    rows = dict(p["process_ms"])
    for name in ("redis", "postgres"):
        if name in total["cpu_ms_by_process"]:
            rows[name] = total["cpu_ms_by_process"][name]
    whole = sum(rows.values()) or 1.0
    for name, ms in sorted(rows.items(), key=lambda kv: -kv[1]):
        samples = p["breakdown"]["samples_by_process"].get(name, "")
        lines.append(f"| {name} | {ms:.2f} | {100 * ms / whole:.0f} % | {samples} |")
    for title, key in (
        ("Self time by package (the frame on top of the stack)", "self_by_package"),
        ("Self time by function", "self_by_function"),
        (
            "The project's own functions, time inclusive of what they call (entry points "
            "and run loops left out)",
            "project_inclusive",
        ),
    ):
        lines += ["", f"{title}, ms per order:", "", "| what | process | ms |", "|---|---|---|"]
        lines += [
            f"| `{r['what']}` | {r['process']} | {r['ms']:.2f} |" for r in p["breakdown"][key]
        ]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    """Called by `python -m bench --profile`: the bench's arguments."""
    from datetime import UTC, datetime

    from bench.__main__ import Bench, say

    bench = Bench(args)
    out: Path = args.out
    raw = out / "profile-raw"
    raw.mkdir(parents=True, exist_ok=True)
    recording = None
    try:
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        redis, _urls, env = bench.setup()
        from config.settings import Settings

        mode = args.modes[0]
        env = {**env, "SAGA_MODE": mode}
        settings = Settings.from_env(env)
        stack = bench.start_saga(env, mode)
        roots = {label: process.pid for label, process in stack.items()}
        rt, shop = bench._shop(settings, stack["web"].port)
        try:
            scenarios.happy_latency(shop, bench.counts["saga_warmup"])
            count = bench.counts["saga_saturation"]
            say(f"profile: {count} happy-path orders under py-spy ({args.rate} Hz)")
            recording = Recording(bench.meter, roots, raw, args.rate)
            sat = scenarios.happy_saturation(shop, count, recording)
        finally:
            if recording is not None:
                recording.stop()
            rt.dispose()
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        return 130
    finally:
        bench.close()
    profile = {
        "started_at": started,
        "saga_mode": mode,
        "databases": "postgresql" if args.postgres else "sqlite",
        "orders": count,
        "submitters": shop.threads,
        "rate": args.rate,
        "throughput": sat["throughput"],
        "statuses": sat["statuses"],
        "cost": recording.result["total"],
        "process_ms": {k: round(v, 3) for k, v in recording.result["process_ms"].items()},
        "breakdown": breakdown(recording, raw),
    }
    (out / "profile.json").write_text(json.dumps(profile, indent=2) + "\n")
    table = markdown(profile)
    (out / "profile.md").write_text(table)
    print()
    print(table)
    say(f"wrote {out / 'profile.md'}, profile.json and the raw stacks in {raw}")
    return 0


def main(argv=None) -> int:
    from bench.__main__ import main as bench_main

    return bench_main([*(sys.argv[1:] if argv is None else argv), "--profile"])


if __name__ == "__main__":
    raise SystemExit(main())
