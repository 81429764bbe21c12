"""The one URL policy: which URLs GRID_XFER accepts, and how any text is made safe to show.

A URL given to GRID_XFER travels far: into tokens that every worker and the
status page read, job files, logs and error messages. A credential inside one
(``user:password@``, ``?access_token=``, ``;password=``, ``#id_token=``) would
travel with it. So every URL the project accepts (configuration, command line,
``--from`` files, templates, URL lists, the stager) is checked here, and one
carrying a credential is refused before anything is stored; credentials belong
in the storage's own authentication (proxy, token file) or in the password
settings of docs/configuration.md. :func:`redact` hides credentials in any text
that is shown anyway (messages, log lines), as a second line of defence.

The policy is defined through :func:`redact`: a URL that redaction would change
is always refused (as is any userinfo, a control character, a missing scheme), so
the check can never accept a URL whose output would have to hide something.
Redaction knows a secret by where it sits (userinfo) or by its parameter's name;
a secret value runs to the next ``&``, ``;``, ``#`` or blank, as servers split it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Annotated
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from pydantic import AfterValidator

from GRID_XFER.errors import GridXferError, InvalidInput

__all__ = [
    "PlainURL",
    "RedactingFormatter",
    "check_http_url",
    "check_plain_url",
    "http_url_problem",
    "join",
    "redact",
    "secret_name",
    "url_problem",
]

MASK = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# userinfo ends at the last "@" before the path, query or fragment: a password with a
# raw "@" (or ";", ":", "&") stays covered. No word boundary before the scheme, so a
# URL glued to other text ("url_https://u:p@h") is still found.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
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


def join(base: str, *parts: str) -> str:
    """``base/part/...``; a base ending in '/' (``file:///``, ``root://host//``) keeps it."""
    rest = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if not rest:
        return base
    return base + rest if base.endswith("/") else f"{base}/{rest}"


def basename(url: str) -> str:
    """The last path element (``root://h//a/b/`` -> ``b``): a per-file name in a token.

    A query or fragment (``a.MS?oss.asize=1``) is no part of the name, except in a
    file:// URL, whose path gfal2 takes as it is.
    """
    if not url.startswith("file://"):
        url = re.split(r"[?#]", url, maxsplit=1)[0]
    return url.rstrip("/").rsplit("/", 1)[-1]


def parent(url: str) -> str:
    """The URL one level up (``root://h//a/b`` -> ``root://h//a``)."""
    return url.rstrip("/").rsplit("/", 1)[0]


def public_url(url: str) -> str:
    """The URL without userinfo, path parameters, query or fragment: safe to show and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets
    if parts.port:
        host = f"{host}:{parts.port}"
    path = re.sub(r";[^/]*", "", re.sub(r"/;[^/]*(?=/)", "", parts.path))
    return urlunsplit((parts.scheme, host, path, "", ""))


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
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    spans = [(a, b) for a, b in _secret_values(text) if b > a and text[a:b] != MASK]
    for start, stop in reversed(spans):
        text = text[:start] + MASK + text[stop:]
    return _BEARER.sub(rf"\g<1>{MASK}", text)


def _control(url: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in url)


def url_problem(url: object) -> str | None:
    """Why a storage URL (source, destination, URL list line) is refused, or None.

    It must name a scheme (``root://``, ``file://``, ``davs://``, ...), hold no control
    characters (a newline would forge a log line) and no credentials.
    """
    if not isinstance(url, str) or not url:
        return "must be a URL"
    if _control(url):
        return "must not contain control characters or line breaks"
    if not _SCHEME.match(url):
        return "must be a URL with a scheme (root://, file://, davs://, ...)"
    if redact(url) != url or _USERINFO.match(url):
        return (
            "must not carry credentials (user:password@ or a secret parameter such as "
            "access_token=); use the storage's own authentication (proxy, token file)"
        )
    return None


def http_url_problem(url: object, credentials_from: str) -> str | None:
    """Why a service URL (CouchDB, the LTA stager) is refused, or None.

    http(s) with a host and a valid port, and nothing but a path after it: no
    userinfo, query or fragment, whose values would reach logs; credentials are
    read from ``credentials_from`` instead.
    """
    if not isinstance(url, str) or not url:
        return "must be a URL"
    if _control(url):
        return "must not contain control characters or line breaks"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return "has an invalid port"
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return "must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return f"must not carry credentials; use {credentials_from}"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "must not carry a query string or fragment (they would reach logs)"
    if url_problem(url):  # a secret path parameter (";password=..."), anything redact() hides
        return f"must not carry credentials; use {credentials_from}"
    return None


def check_plain_url(url: str, what: str, error: type[GridXferError] = InvalidInput) -> str:
    """``url`` if :func:`url_problem` finds nothing; else ``error`` naming ``what``.

    The message shows the URL redacted, never the credential it carried.
    """
    problem = url_problem(url)
    if problem:
        if not isinstance(url, str) or not url:
            raise error(f"{what} {problem}")
        shown = redact(url)
        raise error(f"{what} {repr(shown) if _control(shown) else shown} {problem}")
    return url


def _valid_plain(url: str) -> str:
    problem = url_problem(url)
    if problem:
        raise ValueError(problem)  # pydantic reports the field, never the value
    return url


PlainURL = Annotated[str, AfterValidator(_valid_plain)]
"""A storage URL field of a pydantic model (config, templates, exposure entries)."""


def check_http_url(
    url: str, what: str, credentials_from: str, error: type[GridXferError] = InvalidInput
) -> str:
    """``url`` if :func:`http_url_problem` finds nothing; else ``error`` naming ``what``
    (without the URL: a refused service URL may hold anything)."""
    problem = http_url_problem(url, credentials_from)
    if problem:
        raise error(f"{what} {problem}")
    return url


class RedactingFormatter(logging.Formatter):
    """A log formatter that passes every line, traceback included, through :func:`redact`.

    The library never configures logging; programs that do (the CLI) use this so
    that no message a library or gfal2 produces shows a credential.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
