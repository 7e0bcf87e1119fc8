"""Who may use the console: users with a role, their passwords (argon2), sessions and CSRF tokens.

Roles, each with everything of the one before:

- ``viewer``: reads every page;
- ``dispatcher``: also accepts, dispatches, resolves, closes and rejects orders;
- ``admin``: also pushes rule files to gateways and manages users.

A session is a random token in an HttpOnly, SameSite=Strict cookie; the database keeps only its
SHA-256 (``sessions``), so several platform processes share sessions and a copy of the database
opens none. A session ends 12 hours after the login, at logout, or when its user is removed,
disabled or given a new password. Every form that changes something carries the session's CSRF
token, an HMAC of the session token: a page of another site can neither read it nor compute it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["ROLES", "SESSION_HOURS", "User", "UserError", "add_user", "allows", "csrf_token", "csrf_matches",
           "end_session", "find_session", "list_users", "login", "remove_user", "set_password", "set_role"]

ROLES = ("viewer", "dispatcher", "admin")  # each may do what the ones before it may
SESSION_HOURS = 12
MIN_PASSWORD = 10  # characters
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked when a name is unknown, so a wrong name takes as long as a wrong password."""
    return _hasher.hash(secrets.token_hex(16))


class UserError(ValueError):
    """A user cannot be added or changed as asked; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    csrf: str = ""  # the session's CSRF token (empty outside a request)

    def may(self, role: str) -> bool:
        return allows(self.role, role)


def allows(have: str, need: str) -> bool:
    """Whether role ``have`` may do what ``need`` may."""
    return have in ROLES and ROLES.index(have) >= ROLES.index(need)


def _check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise UserError(f"user name {name!r}: 1 to 64 letters, digits or _ . @ -, starting with a letter or digit")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("the password must have at most 1024 characters")
    return password


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


# -- users ----------------------------------------------------------------------------------

def add_user(store, name: str, password: str, role: str) -> None:
    """A new user; UserError when the name is taken or a value is not allowed."""
    _check_name(name), _check_role(role), _check_password(password)
    hashed = _hasher.hash(password)

    def add(tx) -> int:
        return tx.executemany("INSERT INTO users (name, password_hash, role, created_at, disabled) VALUES (?, ?, ?, ?, 0) "
                              "ON CONFLICT DO NOTHING", [(name, hashed, role, time.time())])

    if not store.db.write(add):
        raise UserError(f"there is already a user {name!r} (users passwd to change the password)")


def list_users(store) -> list[dict]:
    """Every user: name, role, created_at, disabled, sessions (open now)."""
    return store.db.read(
        "SELECT u.name, u.role, u.created_at, u.disabled, "
        "(SELECT count(*) FROM sessions s WHERE s.name = u.name AND s.expires_at > ?) AS sessions "
        "FROM users u ORDER BY u.name", [time.time()])


def _change(store, name: str, sql: str, args: list) -> None:
    def change(tx) -> int:
        tx.execute(sql, args)
        changed = tx.rowcount
        if changed:
            tx.execute("DELETE FROM sessions WHERE name = ?", [name])
        return changed

    if not store.db.write(change):
        raise UserError(f"there is no user {name!r}")


def remove_user(store, name: str) -> None:
    """Remove a user and end their sessions."""
    _change(store, name, "DELETE FROM users WHERE name = ?", [name])


def set_password(store, name: str, password: str) -> None:
    """A new password; the user's sessions end (they log in again)."""
    _check_password(password)
    _change(store, name, "UPDATE users SET password_hash = ? WHERE name = ?", [_hasher.hash(password), name])


def set_role(store, name: str, role: str) -> None:
    """A new role; the user's sessions end, so no page keeps the old role's buttons."""
    _change(store, name, "UPDATE users SET role = ? WHERE name = ?", [_check_role(role), name])


# -- sessions -------------------------------------------------------------------------------

def login(store, name: str, password: str) -> str | None:
    """A new session's token for the right name and password (of a user not disabled), else None."""
    row = store.db.read_one("SELECT password_hash, disabled FROM users WHERE name = ?", [name]) if NAME.fullmatch(name) else None
    try:
        _hasher.verify(row["password_hash"] if row else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row["disabled"]:
        return None
    token = secrets.token_urlsafe(32)
    now = time.time()

    def start(tx) -> None:
        tx.execute("DELETE FROM sessions WHERE expires_at <= ?", [now])  # the expired ones of everybody
        tx.execute("INSERT INTO sessions (token_hash, name, created_at, expires_at) VALUES (?, ?, ?, ?)",
                   [_digest(token), name, now, now + SESSION_HOURS * 3600])
        if _hasher.check_needs_rehash(row["password_hash"]):
            tx.execute("UPDATE users SET password_hash = ? WHERE name = ?", [_hasher.hash(password), name])

    store.db.write(start)
    return token


def find_session(store, token: str | None) -> User | None:
    """The user of a live session token (with the session's CSRF token), else None."""
    if not token or len(token) > 256:
        return None
    row = store.db.read_one(
        "SELECT u.name, u.role FROM sessions s JOIN users u ON u.name = s.name "
        "WHERE s.token_hash = ? AND s.expires_at > ? AND u.disabled = 0", [_digest(token), time.time()])
    if row is None or row["role"] not in ROLES:
        return None
    return User(row["name"], row["role"], csrf_token(token))


def end_session(store, token: str | None) -> None:
    if token:
        store.db.write(lambda tx: tx.execute("DELETE FROM sessions WHERE token_hash = ?", [_digest(token)]))


def csrf_token(secret: str) -> str:
    """The CSRF token of a session (or of a login form's cookie): an HMAC of its secret."""
    return hmac.new(secret.encode("utf-8", "surrogateescape"), b"console csrf", hashlib.sha256).hexdigest()


def csrf_matches(given: str | None, expected: str) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                                  expected.encode())
