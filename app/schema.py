"""Create or migrate each service's database: its own tables with Alembic (one history per
service), then sagaflow's tables with sagaflow's own numbered migrations (which know the
tables the shop's older revisions made and only record their version)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.services import module
from app.workflows import SERVICES, WORKFLOWS
from config.settings import REPO_ROOT, Settings
from sagaflow import SagaBase, migrations
from sagaflow.migrations import HOME_PARTS, SERVICE_PARTS

HOMES = {wf.home for wf in WORKFLOWS.values()}
# Each service's tables; a workflow's home also keeps the saga runtime's log.
METADATA = {
    service: [module(service).Base.metadata, *([SagaBase.metadata] if service in HOMES else [])]
    for service in SERVICES
}


def alembic_config(service: str, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(REPO_ROOT / "migrations" / "versions" / service))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["service"] = service
    return cfg


def upgrade_service(service: str, url: str) -> None:
    """One service's database: its Alembic history, then sagaflow's own migrations."""
    command.upgrade(alembic_config(service, url), "head")
    migrations.upgrade(url, HOME_PARTS if service in HOMES else SERVICE_PARTS)


def upgrade_all(settings: Settings) -> None:
    """Bring every service's database to its latest schema (safe to run again)."""
    for service in SERVICES:
        url = settings.database_url(service)
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        upgrade_service(service, url)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    upgrade_all(Settings.from_env())
    print("databases migrated:", ", ".join(SERVICES))
