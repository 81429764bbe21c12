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

import re
import unicodedata
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator

from GRID_XFER.errors import GridXferError, InvalidInput
from GRID_XFER.redact import USERINFO, RedactingFormatter, redact, secret_name

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

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


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
    if redact(url) != url or USERINFO.match(url):
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
