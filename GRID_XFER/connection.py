"""The HTTP connection to a CouchDB-API server: the one module that knows the ``cloudant`` client.

The cloudant client gives us session (cookie) or basic authentication with
automatic renewal; everything else goes through its authenticated HTTP session
so that we control failover between a cluster's coordinators, retries, timeouts
and error text. Only the CouchDB HTTP API is used, so pouchdb-server and Apache
CouchDB 3 behave the same.

Credentials live in the client only: URLs we format never carry them, and no
exception text includes headers, cookies or bodies we sent.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import warnings
from typing import Any

import requests

from GRID_XFER.config import CouchDBConfig
from GRID_XFER.errors import (
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    NotFound,
    Rejected,
    ViewError,
)

log = logging.getLogger(__name__)

# A coordinator that went away: refused, timed out, or cut off in mid-answer (a node
# killed while it was sending).
_BROKEN = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
# Status codes that mean "the server is struggling, try again".
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


# View parameters CouchDB expects JSON-encoded.
_JSON_PARAMS = frozenset({"key", "keys", "startkey", "endkey", "start_key", "end_key"})


def _encode(
    params: dict[str, Any] | None,
    body: Any,
    data: bytes | None,
    headers: dict[str, str] | None,
) -> dict[str, Any]:
    """Keyword arguments for requests: view parameters as JSON, a body as JSON or bytes."""
    if params:
        params = {
            k: json.dumps(v) if k in _JSON_PARAMS or isinstance(v, bool) else v
            for k, v in params.items()
        }
    kwargs: dict[str, Any] = {"params": params, "headers": dict(headers or {})}
    if body is not None:
        kwargs["data"] = json.dumps(body)
        kwargs["headers"]["Content-Type"] = "application/json"
    elif data is not None:
        kwargs["data"] = data
    return kwargs


class Connection:
    """One database on a CouchDB-API server over HTTP, with retries that ride out outages.

    ``cfg.url`` may list several coordinators of one cluster: a request that
    cannot reach one (refused, timed out, 502-504) goes to the next at once, and
    only when all failed does it back off. ``outage_seconds`` bounds how long one
    call keeps retrying; when None, ``cfg.retries`` rounds are made. Workers pass
    a long outage so that a restarted server costs no tokens; ``stopping`` (a
    worker's first signal) ends the waiting: a call that fails then is not retried.
    """

    def __init__(self, cfg: CouchDBConfig, *, outage_seconds: float | None = None) -> None:
        self.cfg = cfg
        self.urls = list(cfg.url)
        self.db = cfg.db
        self.outage_seconds = outage_seconds
        # When a call last got through after a whole round of coordinators failed:
        # an outage just ended (see Pool.reap).
        self.recovered_at: float | None = None
        # Workers start at a random coordinator, so that they spread over the cluster.
        self._current = random.randrange(len(self.urls))
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cluster: dict[str, int] | None = None
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        """The coordinator in use."""
        return self.urls[self._current]

    # -- plumbing ---------------------------------------------------------
    def _session(self, url: str) -> requests.Session:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                with warnings.catch_warnings():  # cloudant announces its successor
                    warnings.simplefilter("ignore", DeprecationWarning)
                    from cloudant.client import CouchDB

                user = self.cfg.user
                password = self.cfg.secret()
                timeout = (min(5.0, self.cfg.timeout), self.cfg.timeout)
                if user:
                    client = CouchDB(
                        user,
                        password,
                        url=url,
                        connect=False,
                        auto_renew=True,
                        use_basic_auth=self.cfg.auth == "basic",
                        timeout=timeout,
                    )
                else:
                    client = CouchDB(
                        None, None, url=url, admin_party=True, connect=False, timeout=timeout
                    )
                try:
                    client.connect()
                except requests.HTTPError as exc:
                    status = exc.response.status_code if exc.response is not None else "?"
                    raise DatabaseError(
                        f"login to {url} as {user!r} refused (HTTP {status})",
                        status if isinstance(status, int) else None,
                    ) from None
                self._clients[url] = client
            session: requests.Session = client.r_session
            return session

    def _reset_session(self, url: str) -> None:
        with self._lock:
            self._clients.pop(url, None)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        db: bool = True,
        view: str | None = None,
    ) -> requests.Response:
        """One HTTP call, failed over and retried on connection errors and 5xx.

        Except a 500 from a ``view`` (``ddoc/name``): that is the view failing on
        what it read (a reduce over a value it cannot add), the same on every try
        and every coordinator, so it is reported at once, not ridden out.
        """
        kwargs = _encode(params, body, data, headers)
        deadline = time.monotonic() + self.outage_seconds if self.outage_seconds else None
        attempt = 0  # requests sent
        rounds = 0  # full rounds of coordinators that all failed
        failed_in_round = 0
        while True:
            attempt += 1
            base = self.url
            url = f"{base}/{self.db}/{path}" if db else f"{base}/{path}"
            url = url.rstrip("/") if not path else url
            answer = self._send(base, method, url, kwargs, view)
            if isinstance(answer, requests.Response):
                if rounds:
                    self.recovered_at = time.monotonic()  # see Pool.reap
                try:
                    return self._check(answer, f"{method} {url}")
                except Conflict as exc:
                    exc.retried = attempt > 1
                    raise
            failed_in_round += 1
            with self._lock:
                self._current = (self._current + 1) % len(self.urls)
            if failed_in_round < len(self.urls):
                # Another coordinator of the same cluster: at once, no backoff.
                log.warning(
                    "database coordinator %s unavailable (%s); failing over to %s",
                    base,
                    answer,
                    self.url,
                )
                continue
            failed_in_round = 0
            rounds += 1
            self._back_off(base, answer, attempt, rounds, deadline)

    def _send(
        self, base: str, method: str, url: str, kwargs: dict[str, Any], view: str | None
    ) -> requests.Response | str:
        """The answer to keep, or why this coordinator could not give one."""
        try:
            resp = self._session(base).request(method, url, **kwargs)
        except _BROKEN as exc:
            self._reset_session(base)
            if isinstance(exc, requests.Timeout):
                return f"no answer within {self.cfg.timeout:g}s"
            return "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
        if resp.status_code == 500 and view is not None:
            raise ViewError(
                f"{method} {url}: view {view} failed on the server: HTTP 500 "
                f"{_reason(resp, with_error=True)}",
                500,
            )
        if resp.status_code in _RETRY_STATUS:
            return f"HTTP {resp.status_code}"
        return resp

    def _back_off(
        self, base: str, problem: str, attempt: int, rounds: int, deadline: float | None
    ) -> None:
        """Wait before the next round of coordinators, or give up saying why."""
        delay = min(30.0, self.cfg.backoff * 2 ** min(rounds - 1, 10)) * random.uniform(0.8, 1.2)
        where = base if len(self.urls) == 1 else f"{len(self.urls)} coordinators, last {base}"
        gave_up = (
            f"database server {where} unavailable ({problem}) after {attempt} "
            f"attempt{'s' if attempt > 1 else ''}"
        )
        if deadline is None and rounds > self.cfg.retries:
            raise DatabaseUnavailable(gave_up)
        if deadline is not None and time.monotonic() + delay > deadline:
            raise DatabaseUnavailable(gave_up)
        if self.stopping.is_set():
            raise DatabaseUnavailable(f"{gave_up}; not retried: stopping")
        log.warning(
            "database server %s unavailable (%s); retry %d in %.1fs", where, problem, rounds, delay
        )
        if self.stopping.wait(delay):
            raise DatabaseUnavailable(f"{gave_up}; not retried: stopping")

    @staticmethod
    def _check(resp: requests.Response, shown: str) -> requests.Response:
        if resp.status_code < 400:
            return resp
        reason = _reason(resp)
        if resp.status_code == 409:
            raise Conflict(f"{shown}: conflict (document changed meanwhile)")
        if resp.status_code == 404:
            if "/_view/" in shown or "/_design/" in shown:
                if reason in (
                    "no_db_file",
                    "Database does not exist.",
                    "missing",
                    "missing_named_view",
                    "deleted",
                ):
                    raise NotFound(
                        f"{shown}: not found ({reason}); run `gridxfer init` to create "
                        "the database and its views"
                    )
            raise NotFound(f"{shown}: not found ({reason})")
        if resp.status_code == 403 and reason.startswith("invalid token"):
            raise Rejected(f"{shown}: refused by the database's write check: {reason}")
        if resp.status_code in (401, 403):
            raise DatabaseError(
                f"{shown}: not authorised (HTTP {resp.status_code}: {reason})", resp.status_code
            )
        raise DatabaseError(f"{shown}: HTTP {resp.status_code}: {reason}", resp.status_code)


def _reason(resp: requests.Response, *, with_error: bool = False) -> str:
    """The server's reason for an error answer, on one line (``error: reason``)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return resp.text[:200].replace("\n", " ")
    error, reason = body.get("error"), body.get("reason")
    text = f"{error}: {reason}" if with_error and error and reason else reason or error or ""
    return str(text).replace("\n", " ")[:500]
