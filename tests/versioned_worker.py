"""`celery -A tests.versioned_worker worker`: a worker of a later build of the shop, for
tests/test_rolling_versions.py. Its current order workflow is version "v2-test" (the
shop's plan under another version, as a build whose plan changed would have one), and it
keeps the shop's own version as `earlier` only with TEST_KNOWS_SHOP_VERSION=1: without
it, it is a build that dropped that version and must refuse its sagas' work."""

from __future__ import annotations

import dataclasses
import os

from app import workflows
from app.order_saga import ORDER

LATER = dataclasses.replace(
    ORDER,
    version="v2-test",
    earlier=(ORDER,) if os.environ.get("TEST_KNOWS_SHOP_VERSION") == "1" else (),
)
# Before the Celery app is built from it: the runtime, the tasks and the projector read
# this one mapping.
workflows.WORKFLOWS[ORDER.name] = LATER

from tasks.worker import celery  # noqa: E402

__all__ = ["celery"]
