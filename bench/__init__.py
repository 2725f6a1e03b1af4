"""`make bench`: the order saga measured against a raw Celery chain and a monolith."""
