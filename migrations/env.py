"""Alembic environment shared by the five services; each has its own version history
under versions/<service>/ and its own database (see app/schema.py)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from app.schema import METADATA

config = context.config
service = config.attributes.get("service") or context.get_x_argument(as_dictionary=True)["service"]
target_metadata = METADATA[service]


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection") or engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        # render_as_batch: SQLite can only ALTER a table by copying it.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
