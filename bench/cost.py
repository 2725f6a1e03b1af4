"""What a piece of work costs, in units that hold across machines: CPU time summed over every
process involved, database commits, Redis commands.

- CPU: utime + stime + cutime + cstime from /proc/<pid>/stat of every process in each
  watched tree (a stack process and its children), the Redis server, and on PostgreSQL the
  whole server (the postmaster and every process under it). The children's fields are
  what a process's reaped children used, so a backend or pool child that exits between two
  readings is still counted, once, through its parent. The bench process itself (the load
  generator and its polling) is left out; its own CPU is reported apart.
- Commits: `pg_stat_database.xact_commit` of each of the run's databases, less the
  commits of the bench process's own connections (its setup and polling), counted with a
  SQLAlchemy event on its engines. A backend reports its counts when it goes idle, but
  not twice within a second: one that reported less than a second ago reports again only
  after 10 s idle (PostgreSQL 15's PGSTAT_MIN_INTERVAL and PGSTAT_IDLE_INTERVAL), so every
  reading waits STATS_FLUSH first. (With 1 s, the last commits of a run landed in the
  next window: an idle stack seemed to commit 20 to 40 times a second.) SQLite: not measured (the
  commits happen in the stack's processes, which this process cannot count).
- Redis: every command's `calls` in INFO commandstats, less the INFO calls themselves.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

from bench.memory import process_tree

CLK_TCK = os.sysconf("SC_CLK_TCK")
# PostgreSQL 15 backends report their counters when idle, at the latest 10 s after their
# last transaction (pgstat.c: PGSTAT_IDLE_INTERVAL).
STATS_FLUSH = 10.5


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces and parentheses: split after it.
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one process, in clock ticks (0 once it is gone)."""
    fields = _stat_fields(pid)
    return sum(int(v) for v in fields[11:15]) if fields else 0


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def tree_seconds(root: int) -> float:
    """CPU seconds used so far by a process, its live descendants and its reaped children."""
    return sum(ticks(pid) for pid in set(process_tree(root))) / CLK_TCK


def client_seconds() -> float:
    """CPU seconds of this (bench) process, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Postgres:
    """The PostgreSQL server's processes and the run's databases' commit counters."""

    def __init__(self, admin_url: str, databases: dict[str, str]):
        self.admin_url = admin_url
        self.databases = databases  # name in the bench ("orders") -> database name
        self.postmaster = self._postmaster()

    def _connect(self):
        import psycopg

        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)

    def _postmaster(self) -> int | None:
        """The server's main process, when it runs on this machine (its backend's parent)."""
        with self._connect() as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        parent = parent_of(backend)
        return parent if parent and parent > 1 else None

    def commits(self) -> dict[str, int]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT datname, xact_commit FROM pg_stat_database WHERE datname = ANY(%s)",
                (list(self.databases.values()),),
            ).fetchall()
        by_db = {datname: int(n) for datname, n in rows}
        return {name: by_db.get(db, 0) for name, db in self.databases.items()}

    def other_clients(self) -> int:
        """Connections to other databases than the run's: their CPU is in the server's."""
        with self._connect() as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname IS NOT NULL "
                "AND datname <> 'postgres' AND NOT (datname = ANY(%s))",
                (list(self.databases.values()),),
            ).fetchone()[0]


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]  # process label -> CPU seconds so far
    client_cpu: float
    commits: dict[str, int] | None  # database -> commits so far, less the bench's own
    redis: dict[str, int]  # command -> calls so far
    other_clients: int = 0
    detail: dict = field(default_factory=dict)


class Meter:
    """Readings before and after a piece of work; `cost()` divides their difference by the
    orders it completed, `rates()` by the seconds between them."""

    def __init__(self, redis_client, redis_pid: int, postgres: Postgres | None = None):
        self.redis, self.redis_pid, self.postgres = redis_client, redis_pid, postgres
        self._own_commits: dict[str, int] = {}

    def count_own_commits(self, databases: dict) -> None:
        """Count the commits of this process's engines (sagaflow._db.Database by name), so the
        bench's setup and polling are not charged to the stack."""
        from sqlalchemy import event

        for name, db in databases.items():
            engines = {id(e): e for e in (db.engine, getattr(db, "_reader", db.engine))}
            for engine in engines.values():
                if getattr(engine, "_bench_counted", False):
                    continue
                engine._bench_counted = True
                event.listen(engine, "commit", self._counter(name))

    def _counter(self, name: str):
        def on_commit(_conn):
            self._own_commits[name] = self._own_commits.get(name, 0) + 1

        return on_commit

    def _redis_calls(self) -> dict[str, int]:
        stats = self.redis.info("commandstats")
        calls = {}
        for key, value in stats.items():
            command = key.removeprefix("cmdstat_")
            if command != "info":
                calls[command] = int(value["calls"])
        return calls

    def snapshot(
        self, roots: dict[str, int], databases: bool = True, redis: bool = True
    ) -> Snapshot:
        """`roots`: label -> pid of each stack process (its tree is counted). `databases`:
        the PostgreSQL server's CPU and commits too (a run that uses no database: not);
        `redis`: the Redis server's CPU too (the monolith uses none)."""
        postgres = self.postgres if databases else None
        commits, others = None, 0
        if postgres is not None:
            time.sleep(STATS_FLUSH)  # let the backends report their last transactions
            commits = {
                name: n - self._own_commits.get(name, 0) for name, n in postgres.commits().items()
            }
            others = postgres.other_clients()
        cpu = {label: tree_seconds(pid) for label, pid in roots.items()}
        if redis:
            cpu["redis"] = tree_seconds(self.redis_pid)
        if postgres is not None and postgres.postmaster:
            cpu["postgres"] = tree_seconds(postgres.postmaster)
        return Snapshot(time.time(), cpu, client_seconds(), commits, self._redis_calls(), others)

    @staticmethod
    def _delta(before: Snapshot, after: Snapshot) -> dict:
        cpu = {k: after.cpu[k] - before.cpu.get(k, 0.0) for k in after.cpu}
        redis = {k: v - before.redis.get(k, 0) for k, v in after.redis.items()}
        commits = None
        if after.commits is not None and before.commits is not None:
            commits = {k: after.commits[k] - before.commits.get(k, 0) for k in after.commits}
        return {"cpu": cpu, "redis": {k: v for k, v in redis.items() if v}, "commits": commits}

    def cost(self, before: Snapshot, after: Snapshot, orders: int) -> dict:
        """Per completed order (or chain, or request): CPU ms summed over every process and
        by process, commits per database and in all, Redis commands."""
        d = self._delta(before, after)
        per = (lambda v: round(v / orders, 3)) if orders else (lambda v: None)
        commits = d["commits"]
        return {
            "orders": orders,
            "window_s": round(after.at - before.at, 2),
            "cpu_ms": per(sum(d["cpu"].values()) * 1000),
            "cpu_ms_by_process": {k: per(v * 1000) for k, v in d["cpu"].items()},
            "client_cpu_ms": per((after.client_cpu - before.client_cpu) * 1000),
            "commits": None if commits is None else per(sum(commits.values())),
            "commits_by_database": None
            if commits is None
            else {k: per(v) for k, v in commits.items() if v},
            "redis_commands": per(sum(d["redis"].values())),
            "redis_by_command": {
                k: per(v) for k, v in sorted(d["redis"].items(), key=lambda kv: -kv[1])[:8]
            },
            "other_postgres_clients": max(before.other_clients, after.other_clients),
        }

    def idle(self, roots: dict[str, int], seconds: float) -> dict:
        """What the processes cost with nothing to do, per second over `seconds`."""
        before = self.snapshot(roots)
        time.sleep(seconds)
        after = self.snapshot(roots)
        span = after.at - before.at
        d = self._delta(before, after)
        commits = d["commits"]
        return {
            "seconds": round(span, 1),
            "cpu_ms_per_s": round(sum(d["cpu"].values()) * 1000 / span, 2),
            "cpu_ms_per_s_by_process": {k: round(v * 1000 / span, 2) for k, v in d["cpu"].items()},
            "commits_per_s": None if commits is None else round(sum(commits.values()) / span, 2),
            "commits_per_s_by_database": None
            if commits is None
            else {k: round(v / span, 2) for k, v in commits.items() if v},
            "redis_commands_per_s": round(sum(d["redis"].values()) / span, 2),
            "redis_by_command_per_s": {
                k: round(v / span, 2)
                for k, v in sorted(d["redis"].items(), key=lambda kv: -kv[1])[:8]
            },
            "other_postgres_clients": max(before.other_clients, after.other_clients),
        }


class Window:
    """The cost of one measured run: `begin()` right before its first order is sent (after
    its untimed setup), `end(completed)` once the last one is done."""

    def __init__(
        self, meter: Meter, roots: dict[str, int], databases: bool = True, redis: bool = True
    ):
        self.meter, self.roots, self.databases, self.redis = meter, roots, databases, redis
        self.before: Snapshot | None = None

    def begin(self) -> None:
        self.before = self.meter.snapshot(self.roots, self.databases, self.redis)

    def end(self, completed: int) -> dict:
        after = self.meter.snapshot(self.roots, self.databases, self.redis)
        return {**self.meter.cost(self.before, after, completed), "databases": self.databases}


class _NoWindow:
    def begin(self) -> None:
        pass

    def end(self, completed: int) -> None:
        return None


NO_WINDOW = _NoWindow()
