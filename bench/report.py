"""The benchmark's outputs: latest.json, a markdown table (latest.md, also printed) and a
plot (latest.png: latency CDFs of the raw chain and the saga, and throughputs side by side)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.2f}" if value < 100 else f"{value:,.1f}"
    return f"{value}{unit}"


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}x"


def _failed_at(run: dict) -> str:
    counts = run.get("failed_at") or {}
    shown = ", ".join(f"{step} {n}" for step, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    if "stock_restored" in run:
        shown += f"; stock restored: {'yes' if run['stock_restored'] else 'NO'}"
    return shown


def _naive_rows(r: dict) -> list[tuple]:
    """The main table's rows for the naive chain (when it ran)."""
    rows, mem, naive = [], r["memory_mb"], r.get("naive_chain")
    if naive:
        lat, sat = naive["latency"], naive["saturation"]
        rows += [
            (
                "2n. naive chain (the floor)",
                "throughput, COMPLETED orders/s",
                _fmt(sat["throughput"]),
                _ratio(ratio_of(sat["throughput"], r["raw_chain"]["throughput"])),
                _fmt(mem.get("naive_saturation")),
            ),
            (
                "",
                "POST -> COMPLETED p50 / p95 / p99, ms",
                f"{_fmt(lat['completed_ms']['p50'])} / {_fmt(lat['completed_ms']['p95'])} / "
                f"{_fmt(lat['completed_ms']['p99'])}",
                _ratio(ratio_of(lat["completed_ms"]["p50"], r["raw_chain"]["p50_ms"])) + " (p50)",
                "",
            ),
        ]
    return rows


def _dbos_rows(r: dict) -> list[tuple]:
    """The main table's rows for DBOS (when it ran)."""
    rows, dbos = [], r.get("dbos")
    if dbos:
        lat, sat, fail = dbos["latency"], dbos["saturation"], dbos["failure"]
        rows += [
            (
                "7. DBOS Transact",
                "throughput, COMPLETED orders/s",
                _fmt(sat["throughput"]),
                _ratio(ratio_of(sat["throughput"], r["raw_chain"]["throughput"])),
                _fmt(r["web_memory_mb"].get("dbos_saturation")) + " (web)",
            ),
            (
                "",
                "POST -> COMPLETED p50 / p95 / p99, ms",
                f"{_fmt(lat['completed_ms']['p50'])} / {_fmt(lat['completed_ms']['p95'])} / "
                f"{_fmt(lat['completed_ms']['p99'])}",
                _ratio(ratio_of(lat["completed_ms"]["p50"], r["raw_chain"]["p50_ms"])) + " (p50)",
                "",
            ),
            (
                "",
                "failure at use_coupon: orders/s until FAILED; failed at",
                f"{_fmt(fail['throughput'])}; {_failed_at(fail)}",
                "",
                "",
            ),
        ]
    return rows


def ratio_of(a, b):
    return round(a / b, 3) if a is not None and b else None


def markdown(r: dict) -> str:
    raw, saga, ratios = r["raw_chain"], r["saga"], r["ratios"]
    fail, cont, cpn, mono = r["failure"], r["contention"], r["coupons"], r["monolith"]
    mem = r["memory_mb"]
    rows = [
        (
            "1. raw 5-task chain (ceiling)",
            "throughput, chains/s",
            _fmt(raw["throughput"]),
            "1.00x",
            _fmt(mem.get("raw_chain")),
        ),
        (
            "",
            "latency p50 / p95 / p99, ms",
            f"{_fmt(raw['p50_ms'])} / {_fmt(raw['p95_ms'])} / {_fmt(raw['p99_ms'])}",
            "1.00x",
            "",
        ),
        *_naive_rows(r),
        (
            "2. saga happy path",
            "throughput, COMPLETED orders/s",
            _fmt(saga["throughput"]),
            _ratio(ratios["throughput_vs_raw"]),
            _fmt(mem.get("saga_saturation")),
        ),
        (
            "",
            "POST -> COMPLETED p50 / p95 / p99, ms",
            f"{_fmt(saga['p50_ms'])} / {_fmt(saga['p95_ms'])} / {_fmt(saga['p99_ms'])}",
            _ratio(ratios["p50_vs_raw"]) + " (p50)",
            _fmt(mem.get("saga_latency")),
        ),
        (
            "",
            "POST -> published (5th task) p50, ms",
            _fmt(saga["published_p50_ms"]),
            _ratio(ratios["published_p50_vs_raw"]),
            "",
        ),
        (
            "",
            "POST /orders p50 / p95 / p99, ms (one at a time)",
            f"{_fmt(saga['post_p50_ms'])} / {_fmt(saga['post_p95_ms'])} / "
            f"{_fmt(saga['post_p99_ms'])}",
            "",
            "",
        ),
        (
            "3. failure at use_coupon, 3 compensations",
            "orders/s until FAILED",
            _fmt(fail["throughput"]),
            _ratio(ratios["failure_vs_raw"]),
            _fmt(mem.get("failure")),
        ),
        ("", "where they failed (saga log)", _failed_at(fail) or "n/a", "", ""),
        (
            f"4. contention: {cont['orders']} orders, {cont['products']} products x "
            f"{cont['stock_each']}",
            "orders/s until settled",
            _fmt(cont["throughput"]),
            _ratio(ratios["contention_vs_raw"]),
            _fmt(mem.get("contention")),
        ),
        ("", "invariants (stock, money)", "hold" if cont["invariants"]["ok"] else "BROKEN", "", ""),
        (
            f"5. coupon rush: {cpn['requests']} requests, quantity {cpn['quantity']}",
            "POST requests/s; processed/s",
            f"{_fmt(cpn['requests_per_s'])}; {_fmt(cpn['processed_per_s'])}",
            "",
            _fmt(mem.get("coupons")),
        ),
        (
            "",
            "issued",
            f"{cpn['issued']} (exactly {cpn['quantity']}: "
            f"{'yes' if cpn['exactly_quantity_issued'] else 'NO'})",
            "",
            "",
        ),
        (
            "6. monolith, one transaction",
            "throughput, orders/s",
            _fmt(mono["throughput"]),
            _ratio(ratios["monolith_vs_raw"]),
            "",
        ),
        ("", "POST (= whole order) p50, ms", _fmt(mono["p50_ms"]), "", ""),
        *_dbos_rows(r),
    ]
    lines = [
        f"Benchmark ({r['mode']} mode, {r['databases']} databases, "
        f"{r['settings']['submitters']} concurrent submitters), {r['started_at']}",
        "",
        "| scenario | figure | value | vs raw chain | worker peak RSS, MiB |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for target in r["targets"]:
        met = {True: "yes", False: "no", None: "n/a"}[target["met"]]
        lines.append(f"| {target['target']} | {target['measured']} | {met} |")
    if r.get("peers"):
        lines += ["", *peers_table(r)]
    if r.get("costs"):
        lines += ["", *costs_table(r)]
    if r.get("idle"):
        lines += ["", *idle_table(r["idle"])]
    if r.get("modes"):
        lines += ["", *modes_table(r["modes"])]
    m = r["machine"]
    lines += [
        "",
        f"Machine: {m['cpu_count']} x {m['cpu_model']}, Python {m['python']}, {m['platform']}. "
        f"Worker: celery prefork -c {r['settings']['worker']['concurrency']} on all 5 queues; "
        f"gunicorn --workers {r['settings']['web']['workers']}; settings as `make run` "
        f"(step soft/hard limit {r['settings']['saga']['step_soft_time_limit']}/"
        f"{r['settings']['saga']['step_time_limit']} s, log level "
        f"{r['settings']['saga']['log_level']}).",
        "Peak RSS: summed VmRSS of the worker's main process and pool children, sampled "
        "every 0.2 s during the scenario.",
        f"Load average at start {m.get('load_average_at_start')}, at end "
        f"{m.get('load_average_at_end')}: the bench client, Redis, the workers and gunicorn "
        "share these cores, and anything else running at the same time adds noise.",
    ]
    return "\n".join(lines) + "\n"


PEERS = (
    ("raw_chain", "raw no-op chain (ceiling)"),
    ("naive_chain", "naive chain (floor)"),
    ("saga", "saga"),
    ("dbos", "DBOS Transact"),
    ("monolith", "monolith"),
)


def _commits(c: dict | None) -> str:
    if not c:
        return "n/a"
    if not c.get("databases", True):
        return "none (no database)"
    if c.get("commits") is None:
        return "not measured (SQLite)"
    return _fmt(c["commits"])


def peers_table(r: dict) -> list[str]:
    """Every peer's happy path side by side, with what one order costs (bench/cost.py)."""
    lines = [
        "Peers, happy path (one-item orders with a coupon, the same 16 submitters), same "
        "run; cost per COMPLETED order (chain, for the raw chain) over the throughput run:",
        "",
        "| peer | orders/s | p50 / p99, ms | CPU ms per order | commits per order | "
        "Redis commands per order |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in PEERS:
        fig = r["peers"].get(key)
        if not fig:
            continue
        c = fig.get("cost") or {}
        if key == "saga":
            label = f"saga ({r.get('saga_mode', 'orchestration')})"
        lines.append(
            f"| {label} | {_fmt(fig['throughput'])} | {_fmt(fig['p50_ms'])} / "
            f"{_fmt(fig['p99_ms'])} | {_fmt(c.get('cpu_ms'))} | {_commits(c)} | "
            f"{_fmt(c.get('redis_commands'))} |"
        )
    return lines


COSTS = (
    ("raw_chain", "1. raw chain, per chain"),
    ("naive_chain", "2n. naive chain, per COMPLETED order"),
    ("saga_happy", "2. saga happy path, per COMPLETED order"),
    ("saga_failure", "3. saga failure path, per FAILED order"),
    ("saga_contention", "4. saga contention, per settled order"),
    ("saga_coupons", "5. coupon rush, per request"),
    ("dbos_happy", "7. DBOS happy path, per COMPLETED order"),
    ("dbos_failure", "7. DBOS failure path, per FAILED order"),
    ("monolith", "6. monolith, per order"),
)


def _by(values: dict | None, limit: int = 8) -> str:
    if not values:
        return ""
    top = sorted(values.items(), key=lambda kv: -(kv[1] or 0))[:limit]
    return ", ".join(f"{k} {_fmt(v)}" for k, v in top)


def costs_table(r: dict) -> list[str]:
    """Cost per unit of work of every scenario and peer: CPU summed over every process
    (and where it went), commits by database, Redis commands."""
    lines = [
        "Cost per unit of work (CPU: every stack process and its children, Redis, and on "
        "PostgreSQL the whole server; the bench client apart):",
        "",
        "| run | CPU ms | CPU ms by process | commits by database | Redis commands (top) | "
        "bench client CPU ms |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in COSTS:
        c = r["costs"].get(key)
        if not c:
            continue
        commits = _commits(c)
        if c.get("commits_by_database"):
            commits += f": {_by(c['commits_by_database'])}"
        lines.append(
            f"| {label} | {_fmt(c['cpu_ms'])} | {_by(c['cpu_ms_by_process'])} | {commits} | "
            f"{_fmt(c['redis_commands'])}: {_by(c['redis_by_command'], 4)} | "
            f"{_fmt(c['client_cpu_ms'])} |"
        )
    others = max((c or {}).get("other_postgres_clients", 0) for c in r["costs"].values())
    if others:
        lines += [
            "",
            f"WARNING: up to {others} connections of other clients were open on the "
            "PostgreSQL server: its CPU figures include their work.",
        ]
    return lines


def idle_table(idle: dict) -> list[str]:
    names = {"saga": "saga stack", "naive_chain": "naive chain", "dbos": "DBOS"}
    lines = [
        "Idle: no orders, after a warm-up (per second):",
        "",
        "| stack | seconds | CPU ms per s | CPU ms per s by process | commits per s | "
        "Redis commands per s (top) |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in names.items():
        i = idle.get(key)
        if not i:
            continue
        commits = "not measured (SQLite)" if i["commits_per_s"] is None else i["commits_per_s"]
        if i.get("commits_per_s_by_database"):
            commits = f"{commits}: {_by(i['commits_per_s_by_database'])}"
        lines.append(
            f"| {label} | {i['seconds']} | {_fmt(i['cpu_ms_per_s'])} | "
            f"{_by(i['cpu_ms_per_s_by_process'])} | {commits} | "
            f"{_fmt(i['redis_commands_per_s'])}: {_by(i['redis_by_command_per_s'], 4)} |"
        )
    return lines


def modes_table(modes: dict) -> list[str]:
    """The saga modes side by side, each on fresh processes in the same run."""
    names = list(modes)
    figures = [
        ("happy path, COMPLETED orders/s", lambda m: _fmt(m["throughput"])),
        ("POST -> COMPLETED p50 / p99, ms", lambda m: f"{_fmt(m['p50_ms'])} / {_fmt(m['p99_ms'])}"),
        ("POST -> published p50, ms", lambda m: _fmt(m["published_p50_ms"])),
        ("POST /orders p50, ms", lambda m: _fmt(m["post_p50_ms"])),
        ("failure at use_coupon, orders/s", lambda m: _fmt(m["failure_throughput"])),
        ("contention, orders/s", lambda m: _fmt(m["contention_throughput"])),
        ("invariants under contention", lambda m: "hold" if m["invariants_hold"] else "BROKEN"),
        ("outbox rows per order", lambda m: _fmt(m["outbox"]["outbox_rows_per_order"])),
        ("relay CPU per order, ms", lambda m: _fmt(m["outbox"]["relay_cpu_ms_per_order"])),
        ("relay CPU when idle, ms per s", lambda m: _fmt(m["outbox"]["relay_idle_cpu_ms_per_s"])),
        ("happy path CPU per COMPLETED order, ms", lambda m: _fmt(m.get("cpu_ms_per_order"))),
        ("happy path commits per order", lambda m: _fmt(m.get("commits_per_order"))),
        ("happy path Redis commands per order", lambda m: _fmt(m.get("redis_per_order"))),
    ]
    return [
        "Saga modes side by side (SAGA_MODE), each on fresh processes:",
        "",
        f"| figure | {' | '.join(names)} |",
        "|---|" + "---|" * len(names),
        *(f"| {label} | {' | '.join(get(modes[n]) for n in names)} |" for label, get in figures),
    ]


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.FormatStrFormatter below)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2))
    curves = [
        ("raw chain: submit -> 5th task", r["raw_chain"]["latency_samples_ms"]),
        ("saga: POST -> COMPLETED", r["saga"]["latency_samples_ms"]),
    ]
    for key, label in (("naive_chain", "naive chain"), ("dbos", "DBOS")):
        if r.get(key):
            curves.append((f"{label}: POST -> COMPLETED", r[key]["latency"]["latency_samples_ms"]))
    for label, samples in curves:
        ordered = sorted(samples)
        if ordered:
            left.plot(
                ordered,
                [(i + 1) / len(ordered) for i in range(len(ordered))],
                label=f"{label} (n={len(ordered)})",
            )
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.tick_params(axis="x", which="minor", labelsize=7)
    left.set_xlabel("latency, ms (log scale), one at a time")
    left.set_ylabel("fraction of runs")
    left.set_title("Latency CDF at low load")
    left.grid(True, which="both", alpha=0.3)
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=2)

    bars = [
        ("raw chain", r["raw_chain"]["throughput"]),
        ("saga\nhappy", r["saga"]["throughput"]),
        ("saga\nfailure", r["failure"]["throughput"]),
        ("saga\ncontention", r["contention"]["throughput"]),
        ("monolith", r["monolith"]["throughput"]),
    ]
    colors = ["#888888", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"]
    for key, label, color in (
        ("naive_chain", "naive\nchain", "#9467bd"),
        ("dbos", "DBOS", "#8c564b"),
    ):
        if r.get(key):
            bars.append((label, r[key]["saturation"]["throughput"]))
            colors.append(color)
    names, values = zip(*bars, strict=True)
    drawn = right.bar(names, values, color=colors)
    right.bar_label(drawn, fmt="%.1f", fontsize=8)
    right.set_ylabel("per second at saturation")
    right.set_title("Throughput (chains or orders per second)")
    right.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"{r['mode']} mode, {r['databases']} databases, "
        f"{r['machine']['cpu_count']} CPUs, {r['started_at']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(r)
    (out / "latest.json").write_text(json.dumps(r, indent=2, sort_keys=False) + "\n")
    (out / "latest.md").write_text(table)
    plot(r, out / "latest.png")
    return table
