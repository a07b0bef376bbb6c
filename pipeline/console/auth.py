"""Operator authentication: one shared token (OPERATOR_TOKEN), presented as `Authorization: Bearer`,
or as the console's session cookie, which holds an HMAC of the token rather than the token itself.

Comparisons are constant-time (`hmac.compare_digest` on bytes). Without a configured token the
protected routes are disabled, never open. No error or log line repeats what was presented.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum

from pydantic import SecretStr

SESSION_COOKIE = "shop3d_session"
_SESSION_LABEL = b"shop3d console session v1"   # rotating the token ends every session


class Access(Enum):
    GRANTED = "granted"
    DISABLED = "disabled"     # no OPERATOR_TOKEN configured
    MISSING = "missing"       # nothing presented
    WRONG = "wrong"           # something presented that does not match


def session_value(token: SecretStr) -> str:
    """The session cookie's value for `token`: stable, and useless for recovering the token."""
    return hmac.new(token.get_secret_value().encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an `Authorization: Bearer <credentials>` header, else None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def check_access(expected: SecretStr | None, *, authorization: str | None, session: str | None) -> Access:
    """Decide a request's access from its Authorization header and session cookie."""
    if expected is None or not expected.get_secret_value():
        return Access.DISABLED
    presented = bearer_token(authorization)
    if presented is None and session is None:
        return Access.MISSING
    if presented is not None and _same(presented, expected.get_secret_value()):
        return Access.GRANTED
    if session is not None and _same(session, session_value(expected)):
        return Access.GRANTED
    return Access.WRONG
