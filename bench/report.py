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
        lines.append(
            f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else 'no'} |"
        )
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
    for label, samples in (
        ("raw chain: submit -> 5th task", r["raw_chain"]["latency_samples_ms"]),
        ("saga: POST -> COMPLETED", r["saga"]["latency_samples_ms"]),
    ):
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
    names, values = zip(*bars, strict=True)
    colors = ["#888888", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"]
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
