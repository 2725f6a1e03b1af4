"""One log format for every process: time, level, logger, then key=value fields."""

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
    )
    # Client libraries log request details (tokens, webhook URLs) at DEBUG: keep them quiet.
    logging.getLogger("slack_sdk").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
