"""Console sessions: a browser signed in with an API token.

Signing in to the operator console exchanges an API token for a session
whose secret lives only in the browser's HttpOnly cookie (``fws_<secret>``,
32 random bytes); the database keeps its SHA-256 as the row's id. The
session **is** its token, narrowed in time:

1. it carries the token's tenant, role and scope, read again on every
   request, so a token that expires or is revoked ends its sessions at once;
2. it ends at :data:`SESSION_LIFETIME` after sign-in, or the token's own
   expiry if sooner, or at sign-out;
3. a token keeps at most :data:`MAX_SESSIONS_PER_TOKEN` sessions: signing in
   again ends the oldest beyond that.

The console's CSRF token is derived from the session secret
(:func:`csrf_token`, an HMAC), so it needs no storage and is worthless
without the cookie it is bound to.

Sign-in and sign-out are audited (``console.signin``, ``console.signout``);
a request with an ended or unknown session is refused (and counted by the
caller), never audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from fleetward import audit
from fleetward.errors import AuthenticationError
from fleetward.store import utcnow
from fleetward.tenancy.models import ApiToken, ConsoleSession, Tenant
from fleetward.tenancy.roles import Principal
from fleetward.tenancy.service import TOKEN_COLUMNS, authenticate, token_principal

__all__ = [
    "MAX_SESSIONS_PER_TOKEN",
    "MAX_SESSION_LENGTH",
    "SESSION_LIFETIME",
    "csrf_token",
    "end_session",
    "open_session",
    "session_principal",
]

PREFIX = "fws_"
SESSION_LIFETIME = dt.timedelta(hours=8)  # a working day; then sign in again
MAX_SESSIONS_PER_TOKEN = 16  # browsers signed in with one token at once
MAX_SESSION_LENGTH = 64  # characters of a presented session secret, checked before any work
_CSRF_LABEL = b"fleetward console csrf v1"

_SESSION = (
    select(ConsoleSession.expires_at, ConsoleSession.ended_at, *TOKEN_COLUMNS)
    .join(ApiToken, ApiToken.id == ConsoleSession.token_id)
    .join(Tenant, Tenant.id == ApiToken.tenant_id)
)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _well_formed(secret: str | None) -> str:
    if not secret or len(secret) > MAX_SESSION_LENGTH or not secret.startswith(PREFIX):
        raise AuthenticationError("no console session: sign in")
    return secret


def csrf_token(secret: str) -> str:
    """The CSRF token of the session whose cookie holds ``secret``."""
    return hmac.new(secret.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def open_session(
    session: Session, token: str, *, now: dt.datetime | None = None
) -> tuple[Principal, str]:
    """Sign in with an API token: ``(principal, session secret)``.

    Raises:
        AuthenticationError: the token is malformed, unknown, expired or revoked.
    """
    now = now or utcnow()
    principal = authenticate(session, token, now=now)
    token_id = principal.actor.removeprefix("token:")
    # Rows of this token's sessions that ended over a day ago are of no use.
    stale = now - dt.timedelta(days=1)
    session.execute(
        delete(ConsoleSession).where(
            ConsoleSession.token_id == token_id, ConsoleSession.expires_at < stale
        )
    )
    live = list(
        session.execute(
            select(ConsoleSession.id)
            .where(
                ConsoleSession.token_id == token_id,
                ConsoleSession.ended_at.is_(None),
                ConsoleSession.expires_at > now,
            )
            .order_by(ConsoleSession.created_at.desc())
        ).scalars()
    )
    surplus = live[MAX_SESSIONS_PER_TOKEN - 1 :]
    if surplus:
        session.execute(
            update(ConsoleSession).where(ConsoleSession.id.in_(surplus)).values(ended_at=now)
        )
    expires = now + SESSION_LIFETIME
    if principal.expires_at is not None and principal.expires_at < expires:
        expires = principal.expires_at
    secret = PREFIX + secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            id=_digest(secret),
            token_id=token_id,
            tenant_id=principal.tenant_id,
            created_at=now,
            expires_at=expires,
        )
    )
    audit.append(
        session,
        actor=principal.actor,
        action="console.signin",
        subject=f"token:{token_id}",
        tenant_id=principal.tenant_id,
        details={"expires_at": expires.isoformat(), "ended_sessions": len(surplus)},
    )
    return principal, secret


def session_principal(
    session: Session, secret: str | None, *, now: dt.datetime | None = None
) -> Principal:
    """The principal of a live console session (one indexed read).

    Raises:
        AuthenticationError: no, a malformed or an unknown session; it ended,
            expired, or its token expired or was revoked.
    """
    secret = _well_formed(secret)
    row = session.connection().execute(_SESSION.where(ConsoleSession.id == _digest(secret))).first()
    if row is None:
        raise AuthenticationError("no console session: sign in")
    now = now or utcnow()
    if row[1] is not None:
        raise AuthenticationError("the console session has ended: sign in again")
    if row[0] <= now:
        raise AuthenticationError("the console session has expired: sign in again")
    token = row[2:]  # TOKEN_COLUMNS
    if token[5] is not None:
        raise AuthenticationError("the session's API token has been revoked")
    if token[4] is not None and token[4] <= now:
        raise AuthenticationError("the session's API token has expired")
    return token_principal(token)


def end_session(session: Session, secret: str | None, *, now: dt.datetime | None = None) -> bool:
    """Sign out: end the session (audited). ``False`` when there was none to end."""
    try:
        principal = session_principal(session, secret, now=now)
    except AuthenticationError:
        return False
    now = now or utcnow()
    session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == _digest(secret or ""))
        .values(ended_at=now)
    )
    audit.append(
        session,
        actor=principal.actor,
        action="console.signout",
        subject=principal.actor,
        tenant_id=principal.tenant_id,
        details={},
    )
    return True
