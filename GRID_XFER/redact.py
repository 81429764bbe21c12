"""Making any text safe to show: credentials inside URLs and messages masked.

The lowest rule of the package, so that everything (the exception tree included)
can use it: a credential that reached a message, a log line or a token would
travel with it. Redaction knows a secret by where it sits (userinfo) or by its
parameter's name; a secret value runs to the next ``&``, ``;``, ``#`` or blank, as
servers split it. Which URLs are accepted at all is :mod:`GRID_XFER.urls`' business,
and it is defined through :func:`redact`.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

MASK = "***"

# userinfo ends at the last "@" before the path, query or fragment: a password with a
# raw "@" (or ";", ":", "&") stays covered. No word boundary before the scheme, so a
# URL glued to other text ("url_https://u:p@h") is still found.
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
# A parameter starts after "?", "&", ";" or "#" (query, path parameters, fragment).
_PARAM = re.compile(r"[?&;#](?P<name>[^=&;#?\s]+)=")
# A secret value runs to the next separator; a raw "?" or "/" inside it is still secret.
_VALUE_END = re.compile(r"[&;#\s]")
_SECRET_NAME = re.compile(
    r"token|passw|pwd|^pass$|secret|auth|sig|credential|key|session|bearer|cert|proxy|"
    r"macaroon|jwt",
    re.I,
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)\S+")


def secret_name(name: str) -> bool:
    """Whether a parameter name suggests a credential (``access_token``, ``authz``,
    ``X-Amz-Signature``, ``password``, ...), after percent-decoding: a server decodes
    ``acc%65ss_t%6Fken`` to ``access_token`` too."""
    return bool(_SECRET_NAME.search(name) or _SECRET_NAME.search(unquote_plus(name)))


def _secret_values(text: str) -> list[tuple[int, int]]:
    """Spans of the values of secret-named parameters, merged where they overlap.

    Every ``?name=``, ``&name=``, ``;name=`` and ``#name=`` is looked at, including
    one inside another parameter's value (``?a=b?token=...``): values are not
    consumed while searching.
    """
    spans: list[tuple[int, int]] = []
    for match in _PARAM.finditer(text):
        if not secret_name(match["name"]):
            continue
        start = match.end()
        end = _VALUE_END.search(text, start)
        stop = end.start() if end else len(text)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(stop, spans[-1][1]))
        else:
            spans.append((start, stop))
    return spans


def redact(text: str) -> str:
    """Hide credentials in a URL, or in any text containing URLs.

    Removes userinfo (``user:password@`` becomes ``***@``), the values of parameters
    whose names suggest secrets (in the query, path parameters or fragment), and
    bearer tokens, so the text can go into a message, token or log. Empty secret
    values stay empty: there is nothing to hide.
    """
    text = USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    spans = [(a, b) for a, b in _secret_values(text) if b > a and text[a:b] != MASK]
    for start, stop in reversed(spans):
        text = text[:start] + MASK + text[stop:]
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def one_line(text: str) -> str:
    """``text`` on one line: gfal2/XrdCl messages carry NULs (raw and as literal "\\x00")
    and newlines, which would forge or break a log line."""
    text = text.replace("\\x00", " ").replace("\x00", " ")
    return " ".join(text.split())


class RedactingFormatter(logging.Formatter):
    """A log formatter that passes every line, traceback included, through :func:`redact`.

    The library never configures logging; programs that do (the CLI) use this so
    that no message a library or gfal2 produces shows a credential.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
