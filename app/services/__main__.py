"""`python -m app.services`: the services the workflows need, one per line (for shell
scripts such as scripts/run.sh, which set each one's database URL)."""

from app.workflows import SERVICES

print("\n".join(SERVICES))
