"""Celery tasks: one thin task per forward step, plus the saga's chain builder."""
