"""The shop's services, one module each: `app.services.<name>` for the service a
workflow's steps name (`Step(..., "products", ...)`). Each module declares

- `Base`: its tables (its own database, its own Alembic history under
  `migrations/versions/<name>/`);
- `Outbox`: its outbox table, in that database;
- `INTERFACES`: what the code reaches as `services.<attribute>`, each class built on the
  service's database.

Nothing lists the services by hand: `app.workflows.SERVICES` derives them from the
workflows, and bootstrap, the schema, the workers and the tests find each module here by
its name. `python -m app.services` prints them (scripts/run.sh reads it).
"""

from __future__ import annotations

import importlib
from types import ModuleType


def module(service: str) -> ModuleType:
    """The module of one service; a name with none is a declaration error, said so."""
    if not service.isidentifier():
        raise ValueError(f"service {service!r} is not a valid module name")
    try:
        return importlib.import_module(f"{__name__}.{service}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{service}":
            raise
        raise ValueError(
            f"a workflow names the service {service!r}, but app/services/{service}.py is missing"
        ) from None
