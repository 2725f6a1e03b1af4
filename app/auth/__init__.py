"""Who may do what: bearer tokens (signed JWTs) that name a role and a subject.

The domain knows nothing of this; the HTTP layer (app/http/access.py) checks every route
against its rule, and the CLI (`python -m app.auth`) mints tokens and rotates keys.
"""

from app.auth.tokens import (
    ADMIN,
    CUSTOMER,
    OPERATOR,
    ROLES,
    Identity,
    InvalidCredential,
    Keyring,
    TokenVerifier,
)

__all__ = [
    "ADMIN",
    "CUSTOMER",
    "OPERATOR",
    "ROLES",
    "Identity",
    "InvalidCredential",
    "Keyring",
    "TokenVerifier",
]
