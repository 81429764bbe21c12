"""CouchDB access: the one module that knows the ``cloudant`` client.

The cloudant client gives us session (cookie) or basic authentication with
automatic renewal; everything else goes through its authenticated HTTP session
so that we control retries, timeouts and error text. Only the CouchDB HTTP API
is used, so pouchdb-server and Apache CouchDB 3 behave the same.

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
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import requests

from GRID_XFER.config import CouchDBConfig
from GRID_XFER.errors import Conflict, DatabaseError, DatabaseUnavailable, NotFound

log = logging.getLogger(__name__)

# Status codes that mean "the server is struggling, try again".
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _quote_id(doc_id: str) -> str:
    for prefix in ("_design/", "_local/"):
        if doc_id.startswith(prefix):
            return prefix + quote(doc_id[len(prefix):], safe="")
    return quote(doc_id, safe="")


class Couch:
    """A database on a CouchDB-API server, with retries that ride out outages.

    ``outage_seconds`` bounds how long one call keeps retrying on connection
    errors and 5xx answers; when None, ``cfg.retries`` attempts are made. Workers
    pass a long outage so that a restarted server costs no tokens.
    """

    def __init__(self, cfg: CouchDBConfig, *, outage_seconds: float | None = None) -> None:
        self.cfg = cfg
        self.url = cfg.url
        self.db = cfg.db
        self.outage_seconds = outage_seconds
        # When a call last got through after failing: an outage just ended.
        self.recovered_at: float | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------
    def _session(self) -> requests.Session:
        with self._lock:
            if self._client is None:
                with warnings.catch_warnings():  # cloudant announces its successor
                    warnings.simplefilter("ignore", DeprecationWarning)
                    from cloudant.client import CouchDB

                user = self.cfg.user
                password = self.cfg.secret()
                if user:
                    client = CouchDB(user, password, url=self.url, connect=False,
                                     auto_renew=True, use_basic_auth=self.cfg.auth == "basic",
                                     timeout=self.cfg.timeout)
                else:
                    client = CouchDB(None, None, url=self.url, admin_party=True,
                                     connect=False, timeout=self.cfg.timeout)
                try:
                    client.connect()
                except requests.HTTPError as exc:
                    status = exc.response.status_code if exc.response is not None else "?"
                    raise DatabaseError(f"login to {self.url} as {user!r} refused "
                                        f"(HTTP {status})") from None
                self._client = client
            return self._client.r_session

    def _reset_session(self) -> None:
        with self._lock:
            self._client = None

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                body: Any = None, data: bytes | None = None,
                headers: dict[str, str] | None = None, db: bool = True) -> requests.Response:
        """One HTTP call, retried on connection errors and 5xx; raises our errors."""
        url = f"{self.url}/{self.db}/{path}" if db else f"{self.url}/{path}"
        url = url.rstrip("/") if not path else url
        shown = f"{method} {url}"
        if params:
            params = {k: json.dumps(v) if k in _JSON_PARAMS or isinstance(v, bool) else v
                      for k, v in params.items()}
        kwargs: dict[str, Any] = {"params": params, "headers": dict(headers or {})}
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs["headers"]["Content-Type"] = "application/json"
        elif data is not None:
            kwargs["data"] = data
        deadline = time.monotonic() + self.outage_seconds if self.outage_seconds else None
        attempt = 0
        while True:
            attempt += 1
            problem: str
            try:
                resp = self._session().request(method, url, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._reset_session()
                problem = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
                if isinstance(exc, requests.Timeout):
                    problem = f"no answer within {self.cfg.timeout:g}s"
            else:
                if resp.status_code not in _RETRY_STATUS:
                    if attempt > 1:
                        self.recovered_at = time.monotonic()  # see Pool.reap
                    try:
                        return self._check(resp, shown)
                    except Conflict as exc:
                        exc.retried = attempt > 1
                        raise
                problem = f"HTTP {resp.status_code}"
            delay = min(30.0, self.cfg.backoff * 2 ** min(attempt - 1, 10)) * random.uniform(0.8, 1.2)
            if deadline is None and attempt > self.cfg.retries or (
                    deadline is not None and time.monotonic() + delay > deadline):
                raise DatabaseUnavailable(f"database server {self.url} unavailable ({problem}) "
                                          f"after {attempt} attempt{'s' if attempt > 1 else ''}")
            log.warning("database server %s unavailable (%s); retry %d in %.1fs",
                        self.url, problem, attempt, delay)
            time.sleep(delay)

    @staticmethod
    def _check(resp: requests.Response, shown: str) -> requests.Response:
        if resp.status_code < 400:
            return resp
        try:
            reason = resp.json().get("reason") or resp.json().get("error") or ""
        except ValueError:
            reason = resp.text[:200]
        reason = str(reason).replace("\n", " ")
        if resp.status_code == 409:
            raise Conflict(f"{shown}: conflict (document changed meanwhile)")
        if resp.status_code == 404:
            if "/_view/" in shown or "/_design/" in shown:
                if reason in ("no_db_file", "Database does not exist.", "missing", "missing_named_view",
                              "deleted"):
                    raise NotFound(f"{shown}: not found ({reason}); run `gridxfer init` to create "
                                   "the database and its views")
            raise NotFound(f"{shown}: not found ({reason})")
        if resp.status_code in (401, 403):
            raise DatabaseError(f"{shown}: not authorised (HTTP {resp.status_code}: {reason})")
        raise DatabaseError(f"{shown}: HTTP {resp.status_code}: {reason}")

    # -- server and database ----------------------------------------------
    def server_info(self) -> dict[str, Any]:
        return self.request("GET", "", db=False).json()

    def db_exists(self) -> bool:
        try:
            self.request("GET", "")
        except NotFound:
            return False
        return True

    def create_db(self) -> bool:
        """Create the database; False when it already existed."""
        try:
            self.request("PUT", "")
        except DatabaseError as exc:
            if "412" in str(exc) or "exist" in str(exc):
                return False
            raise
        return True

    def require_db(self) -> None:
        if not self.db_exists():
            raise NotFound(f"database {self.db!r} does not exist on {self.url}; "
                           "run `gridxfer init` first")

    # -- documents ----------------------------------------------------------
    def get(self, doc_id: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", _quote_id(doc_id), params=params or None).json()

    def get_or_none(self, doc_id: str) -> dict[str, Any] | None:
        try:
            return self.get(doc_id)
        except NotFound:
            return None

    def put(self, doc: dict[str, Any]) -> str:
        """Save with the doc's ``_rev``; sets and returns the new rev; Conflict on 409."""
        rev = self.request("PUT", _quote_id(doc["_id"]), body=doc).json()["rev"]
        doc["_rev"] = rev
        return rev

    def delete(self, doc_id: str, rev: str) -> None:
        self.request("DELETE", _quote_id(doc_id), params={"rev": rev})

    def bulk_docs(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST _bulk_docs; per-doc results (``error: conflict`` for losers)."""
        return self.request("POST", "_bulk_docs", body={"docs": docs}).json()

    def all_docs(self, keys: list[str] | None = None, **params: Any) -> list[dict[str, Any]]:
        if keys is not None:
            return self.request("POST", "_all_docs", params=params or None,
                                body={"keys": keys}).json()["rows"]
        return self.request("GET", "_all_docs", params=params or None).json()["rows"]

    def view(self, ddoc: str, name: str, *, keys: list[Any] | None = None,
             **params: Any) -> dict[str, Any]:
        path = f"_design/{quote(ddoc, safe='')}/_view/{quote(name, safe='')}"
        if keys is not None:
            return self.request("POST", path, params=params or None, body={"keys": keys}).json()
        return self.request("GET", path, params=params or None).json()

    def iter_view(self, ddoc: str, name: str, *, page: int = 1000,
                  **params: Any) -> Iterator[dict[str, Any]]:
        """All rows of a view range, paged by key so memory stays flat.

        The view's keys must be unique (pouchdb-server ignores startkey_docid, so
        equal keys cannot be paged portably).
        """
        params = dict(params)
        while True:
            rows = self.view(ddoc, name, limit=page, **params)["rows"]
            yield from rows
            if len(rows) < page:
                return
            params["startkey"] = rows[-1]["key"]
            params["skip"] = 1

    def put_attachment(self, doc_id: str, rev: str, name: str, data: bytes,
                       content_type: str) -> str:
        path = f"{_quote_id(doc_id)}/{quote(name, safe='')}"
        return self.request("PUT", path, params={"rev": rev}, data=data,
                            headers={"Content-Type": content_type}).json()["rev"]

    def get_attachment(self, doc_id: str, name: str) -> bytes:
        return self.request("GET", f"{_quote_id(doc_id)}/{quote(name, safe='')}").content


# View parameters CouchDB expects JSON-encoded.
_JSON_PARAMS = frozenset({"key", "keys", "startkey", "endkey", "start_key", "end_key"})


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
