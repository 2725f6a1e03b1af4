"""What the console says about a saga: its failure class (DESIGN.md section 3) and what
happens next. Pure: it reads the timeline and the saga's DLQ entries, nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MOVING = ("pending", "running", "retrying")


@dataclass
class Explanation:
    failure_class: str  # "" while nothing failed
    next: str


def _first(steps: list[dict], kind: str, statuses=MOVING) -> dict | None:
    return next((s for s in steps if s["kind"] == kind and s["status"] in statuses), None)


def explain(timeline: dict, entries: list[dict], max_attempts: int) -> Explanation:
    steps, status = timeline["steps"], timeline["status"]
    open_entries = [e for e in entries if e["status"] != "resolved"]
    human = [e for e in open_entries if e["status"] == "needs_human"]
    if human:
        e = human[0]
        return Explanation(
            "5: every retry failed",
            f"{e['name']} waits for a human (alerted: {'yes' if e['alerted'] else 'not yet'}). "
            "Requeue it once the cause is fixed"
            + (", or compensate to undo the order" if e["kind"] == "step" else "")
            + ", or resolve it with a note if it was fixed by hand.",
        )
    for e in open_entries:
        attempt = f"attempt {e['attempts']} of {max_attempts}"
        if e["kind"] == "compensation":
            return Explanation(
                "4: a compensation failed",
                f"The DLQ retries {e['name']} ({attempt}); the undos after it wait for it.",
            )
        if e["kind"] == "after_pivot":
            return Explanation(
                "3: publication failed",
                f"The order stays completed; the DLQ retries {e['name']} ({attempt}).",
            )
        return Explanation(
            "2: timeout or transient error, retries exhausted",
            f"The DLQ sends {e['name']} back to its queue ({attempt}), then alerts a human.",
        )
    failed = next((s for s in steps if s["status"] == "failed"), None)
    if status == "FAILED":
        return Explanation(
            f"1: business error in {timeline['failed_step']}" if failed else "",
            "Nothing more: every step that applied was undone, newest first.",
        )
    if status == "COMPENSATING":
        undo = _first(steps, "compensation")
        return Explanation(
            f"1: business error in {timeline['failed_step']}" if failed else "turned back",
            f"Undoing, newest first: next is {undo['name'] if undo else '...'}.",
        )
    if status == "PENDING":
        step = _first(steps, "step")
        return Explanation("", f"Moving forward: next is {step['name'] if step else '...'}.")
    after = _first(steps, "after_pivot")
    if status == "COMPLETED" and after:
        return Explanation("", f"Completed; {after['name']} runs next (retried, never undone).")
    return Explanation("", "Done: nothing more happens.")


def bars(timeline: dict) -> list[dict]:
    """Each row of the timeline as a bar: where it starts and how wide it is, in percent of
    the saga's span, and how long it took."""

    def at(value):
        return datetime.fromisoformat(value).timestamp() if value else None

    begin = at(timeline["created_at"])
    moments = [begin] + [
        at(t) for s in timeline["steps"] for t in (s["started_at"], s["finished_at"]) if t
    ]
    end = max(m for m in moments if m is not None)
    span = max(end - begin, 1e-3)
    rows = []
    for step in timeline["steps"]:
        start, finish = at(step["started_at"]), at(step["finished_at"])
        left = ((start - begin) / span * 100) if start else 0.0
        width = (((finish or end) - start) / span * 100) if start else 0.0
        rows.append(
            {
                **step,
                "left": round(max(0.0, min(left, 99.0)), 2),
                "width": round(max(width, 0.8), 2) if start else 0,
                "ms": round(((finish or end) - start) * 1000, 1) if start else None,
            }
        )
    return rows
