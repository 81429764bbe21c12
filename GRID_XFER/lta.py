"""The LTA client: XML-RPC calls to the LOFAR long-term archive's stager (LtaStager).

The service speaks XML-RPC under the ``LtaStager`` prefix: ``add_getid(surls)``
returns a request id, ``getstatus(id)``, ``getstagedurls(id)``, ``abort(id)``,
``reschedule(id)`` and ``getprogress()``. Authentication is HTTP basic.

Credentials are read only when the first call is made (never at import) from,
in this order: ``$GRIDXFER_STAGER_USER`` / ``$GRIDXFER_STAGER_PASSWORD``,
GRID_LRT's ``$LOFAR_LTA_USER`` / ``$LOFAR_LTA_PWD`` (which GRID_LRT lets override
its files, as here), ``~/.stagingrc`` (``user=`` / ``password=`` lines) and the awlofar catalogue's
``~/.awe/Environment.cfg`` (``database_user:`` / ``database_password:``). They
travel in an Authorization header, never in the URL, and every error message
is scrubbed of them: a message may end up in a token, a log or a terminal.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import time
import xmlrpc.client
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

from GRID_XFER.errors import ConfigError, StagerError
from GRID_XFER.urls import check_http_url, public_url

log = logging.getLogger(__name__)

USER_ENV = "GRIDXFER_STAGER_USER"
PASSWORD_ENV = "GRIDXFER_STAGER_PASSWORD"
LTA_USER_ENV = "LOFAR_LTA_USER"  # GRID_LRT's stager_access reads these two
LTA_PASSWORD_ENV = "LOFAR_LTA_PWD"
# (user, password) variable pairs, first complete pair wins
ENV_PAIRS = ((USER_ENV, PASSWORD_ENV), (LTA_USER_ENV, LTA_PASSWORD_ENV))
# getstatus answers: still working, finished well, finished badly.
PENDING = frozenset({"new", "scheduled", "in progress", "on hold", "queued", "running"})
SUCCESS = frozenset({"success"})


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)
    origin: str = ""  # where they were read (a path or $VARIABLE), for messages

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, origin={self.origin!r})"


def _key_values(path: Path, sep: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or sep not in line:
            continue
        key, _, value = line.partition(sep)
        out[key.strip().lower()] = value.strip().strip("'\"")
    return out


def load_credentials(env: Mapping[str, str] | None = None, home: Path | None = None) -> Credentials:
    """The first complete user/password pair from the environment (ours, then
    GRID_LRT's), ~/.stagingrc or ~/.awe/Environment.cfg; ConfigError (naming the
    places, never a value) if none."""
    env = os.environ if env is None else env
    home = Path(os.path.expanduser("~")) if home is None else home
    for user_var, password_var in ENV_PAIRS:
        if env.get(user_var) and env.get(password_var):
            return Credentials(env[user_var], env[password_var], f"${user_var}")
    sources = (
        (home / ".stagingrc", "=", "user", "password"),
        (home / ".awe" / "Environment.cfg", ":", "database_user", "database_password"),
    )
    for path, sep, ukey, pkey in sources:
        try:
            values = _key_values(path, sep)
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read stager credentials from {path}: "
                f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
            ) from None
        if values.get(ukey) and values.get(pkey):
            return Credentials(values[ukey], values[pkey], str(path))
    raise ConfigError(
        f"no stager credentials: set {USER_ENV} and {PASSWORD_ENV} (or {LTA_USER_ENV} "
        f"and {LTA_PASSWORD_ENV}), or write "
        f"user=/password= lines to {home / '.stagingrc'}"
    )


class _Transport(xmlrpc.client.Transport):
    """HTTP(S) with a timeout and a basic-auth header added per request.

    One class for both schemes: the HTTPS branch makes its connection as
    ``xmlrpc.client.SafeTransport`` does (default SSL context).
    """

    def __init__(self, *, https: bool, timeout: float, authorization: Callable[[], str]) -> None:
        super().__init__()
        self._https = https
        self._timeout = timeout
        self._authorization = authorization

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        cached = self._connection[1] if host == self._connection[0] else None
        if cached is not None:
            conn = cached
        elif self._https:
            chost, self._extra_headers, _ = self.get_host_info(host)  # host: a plain name
            conn = http.client.HTTPSConnection(chost)
            self._connection = host, conn
        else:
            conn = super().make_connection(host)
        conn.timeout = self._timeout
        return conn

    def send_headers(
        self, connection: http.client.HTTPConnection, headers: list[tuple[str, str]]
    ) -> None:
        super().send_headers(connection, [*headers, ("Authorization", self._authorization())])


class LtaClient:
    """Calls with a timeout, retries of transient failures, and scrubbed errors."""

    def __init__(
        self,
        url: str,
        *,
        credentials: Credentials | Callable[[], Credentials] | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.url = check_http_url(
            url, "the stager URL", f"{USER_ENV} / {PASSWORD_ENV} or ~/.stagingrc", error=ConfigError
        )
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._credentials_source = credentials
        self._credentials: Credentials | None = None

    # -- plumbing -------------------------------------------------------------
    def _creds(self) -> Credentials:
        if self._credentials is None:
            src = self._credentials_source
            if isinstance(src, Credentials):
                self._credentials = src
            elif src is not None:
                self._credentials = src()
            else:
                self._credentials = load_credentials()
        return self._credentials

    def _authorization(self) -> str:
        c = self._creds()
        return "Basic " + base64.b64encode(f"{c.user}:{c.password}".encode()).decode()

    def _scrub(self, text: str) -> str:
        text = text.replace(self.url, public_url(self.url))
        c = self._credentials
        if c is not None:
            for secret in (self._authorization().split(" ", 1)[1], c.password):
                if secret:
                    text = text.replace(secret, "***")
        return " ".join(text.split())[:500]

    def _proxy(self) -> xmlrpc.client.ServerProxy:
        transport = _Transport(
            https=self.url.startswith("https:"),
            timeout=self.timeout,
            authorization=self._authorization,
        )
        return xmlrpc.client.ServerProxy(self.url, transport=transport, allow_none=True)

    def _call(self, method: str, *args: Any) -> Any:
        self._creds()  # a missing credential is a ConfigError before any network call
        where = public_url(self.url)
        attempt = 0
        while True:
            attempt += 1
            try:
                return getattr(self._proxy().LtaStager, method)(*args)
            except xmlrpc.client.Fault as exc:
                raise StagerError(
                    f"stager {where} refused {method}: {self._scrub(str(exc.faultString))}"
                ) from None
            except xmlrpc.client.ProtocolError as exc:
                transient = exc.errcode >= 500 or exc.errcode == 429
                message = (
                    f"stager {where}: {method} failed: HTTP {exc.errcode} {self._scrub(exc.errmsg)}"
                )
                if exc.errcode in (401, 403):
                    message += " (the stager rejected the credentials)"
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                transient = True
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                message = f"stager {where}: {method} failed: {self._scrub(reason)}"
            except (xmlrpc.client.ResponseError, ExpatError) as exc:
                transient = False
                message = f"stager {where}: {method}: bad answer: {self._scrub(str(exc))}"
            if not transient or attempt > self.retries:
                raise StagerError(message, transient=transient)
            log.info("%s; retrying (%d/%d)", message, attempt, self.retries)
            time.sleep(self.backoff * 2 ** (attempt - 1))

    # -- the LtaStager API ------------------------------------------------------
    def stage(self, surls: list[str]) -> str:
        """Request a recall of ``surls``; the request id (as text)."""
        return str(self._call("add_getid", list(surls)))

    def status(self, request_id: str) -> str:
        """'new', 'scheduled', 'in progress', 'success', or a failure ('failed', 'aborted', ...)."""
        return str(self._call("getstatus", _rid(request_id))).strip().lower()

    def staged_urls(self, request_id: str) -> list[str]:
        return [str(u) for u in self._call("getstagedurls", _rid(request_id)) or []]

    def abort(self, request_id: str) -> None:
        self._call("abort", _rid(request_id))

    def reschedule(self, request_id: str) -> None:
        self._call("reschedule", _rid(request_id))

    def progress(self) -> dict[str, Any]:
        """Every request of this account: {id: {status, files done, ...}}."""
        return dict(self._call("getprogress") or {})


def _rid(request_id: str) -> int | str:
    """Ids travel as XML-RPC ints when they are numbers (the LTA's are)."""
    text = str(request_id)
    return int(text) if text.isdigit() and len(text) < 10 else text
