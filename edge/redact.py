"""Credentials kept out of everything the gateway shows: logs, the status page, status.json.

A URL may carry a password (``http://user:pw@host``, ``mqtt://user:pw@host``) or a token in
its query (``?token=...``). ``redact_url`` shows the URL with those replaced by ``***``;
``redact_text`` does the same for every URL inside a longer text (an error message);
``url_secrets`` gives the secret parts themselves, for the log filter (edge/logs.py).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

__all__ = ["redact_text", "redact_url", "url_secrets"]

MASK = "***"
SECRET_QUERY_KEYS = re.compile(r"token|password|passwd|pass|pwd|secret|key|auth|signature|sig", re.I)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"(//)[^/@\s]*@")


def redact_url(url: str) -> str:
    """``url`` with the password (or a user name standing alone, often a token) and secret query
    values replaced by ``***``; a URL that cannot be parsed loses everything before an ``@``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
        query = parts.query
        if query:
            query = "&".join(
                f"{key}={MASK}" if SECRET_QUERY_KEYS.search(key) else piece
                for piece in query.split("&")
                for key in [piece.split("=", 1)[0]]
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return _USERINFO.sub(rf"\g<1>{MASK}@", url)


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted as by ``redact_url``."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url`` (password, lone user name, secret query values), as written
    and percent-decoded, for a filter that replaces them wherever they appear."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        match = re.search(r"//([^/@\s]*)@", url)
        if match:
            user, has_password, password = match.group(1).partition(":")
            found.append(password if has_password else user)
        return sorted({s for s in found + [unquote(s) for s in found] if s}, key=len, reverse=True)
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        user, has_password, password = userinfo.partition(":")
        found.append(password if has_password else user)
    for key, value in parse_qsl(parts.query, keep_blank_values=False):
        if SECRET_QUERY_KEYS.search(key):
            found.append(value)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)
