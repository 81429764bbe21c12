"""CouchDB documents: reads, writes, bulk calls, views and attachments of one database.

Every call goes through :class:`~GRID_XFER.connection.Connection`, which fails over
between a cluster's coordinators and rides out outages; this module only knows the
CouchDB API's shapes (revisions, conflicts, leaves, quorum).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from GRID_XFER.connection import Connection
from GRID_XFER.errors import DatabaseError, NotFound


def _quote_id(doc_id: str) -> str:
    for prefix in ("_design/", "_local/"):
        if doc_id.startswith(prefix):
            return prefix + quote(doc_id[len(prefix) :], safe="")
    return quote(doc_id, safe="")


@dataclass(frozen=True)
class Write:
    """What a server said about one document write.

    ``quorum`` is True for ``201 Created``: a majority of the copies took it (the
    only copy on a single node). ``202 Accepted`` means fewer did: on a cluster
    that is not a won race, only a branch that may survive as a conflict.
    """

    rev: str
    quorum: bool = True


class Couch(Connection):
    """A database on a CouchDB-API server: the document API over one connection."""

    # -- server and database ----------------------------------------------
    def server_info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.request("GET", "", db=False).json()
        return info

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
            if exc.status == 412:
                return False
            raise
        return True

    def require_db(self) -> None:
        if not self.db_exists():
            raise NotFound(
                f"database {self.db!r} does not exist on {self.url}; run `gridxfer init` first"
            )

    # -- documents ----------------------------------------------------------
    def get(self, doc_id: str, **params: Any) -> dict[str, Any]:
        doc: dict[str, Any] = self.request("GET", _quote_id(doc_id), params=params or None).json()
        return doc

    def get_or_none(self, doc_id: str) -> dict[str, Any] | None:
        try:
            return self.get(doc_id)
        except NotFound:
            return None

    def put(self, doc: dict[str, Any]) -> Write:
        """Save with the doc's ``_rev``; sets its new rev; Conflict on 409."""
        resp = self.request("PUT", _quote_id(doc["_id"]), body=doc)
        doc["_rev"] = resp.json()["rev"]
        return Write(doc["_rev"], quorum=resp.status_code != 202)

    def delete(self, doc_id: str, rev: str) -> Write:
        """Delete one leaf revision (a whole document when it has no conflicts)."""
        resp = self.request("DELETE", _quote_id(doc_id), params={"rev": rev})
        return Write(resp.json()["rev"], quorum=resp.status_code != 202)

    # -- a cluster's copies ---------------------------------------------------
    def cluster(self) -> dict[str, int]:
        """``{"n": copies, "q": shards, "w": .., "r": ..}``; n = 1 on a single node."""
        if self._cluster is None:
            info = self.request("GET", "").json()
            self._cluster = {k: int(v) for k, v in (info.get("cluster") or {"n": 1}).items()}
        return self._cluster

    @property
    def replicated(self) -> bool:
        """More than one copy of each document: writes can branch (docs/tokens.md)."""
        return self.cluster().get("n", 1) > 1

    def leaves(self, doc_id: str) -> list[dict[str, Any]]:
        """Every leaf revision, live and deleted, from every reachable copy.

        ``open_revs=all`` with ``r`` = the number of copies makes the coordinator
        wait for each live copy and merge their revision trees, so a branch that
        any reachable copy holds is in the answer. Each leaf has ``_revisions``.
        """
        params = {
            "open_revs": "all",
            "revs": "true",
            "latest": "true",
            "r": str(self.cluster().get("n", 1)),
        }
        try:
            rows = self.request(
                "GET", _quote_id(doc_id), params=params, headers={"Accept": "application/json"}
            ).json()
        except NotFound:
            return []
        return [r["ok"] for r in rows if isinstance(r, dict) and "ok" in r]

    def docs(self, ids: list[str], *, conflicts: bool = False) -> dict[str, dict[str, Any] | None]:
        """The current revision of each id, read from a quorum of copies.

        ``_all_docs`` with ``keys`` opens every document like a GET (quorum read),
        unlike a view, which answers from one copy per shard range.
        """
        out: dict[str, dict[str, Any] | None] = {}
        for chunk in chunked(ids, 500):
            params: dict[str, Any] = {"include_docs": True}
            if conflicts:
                params["conflicts"] = True
            for row in self.all_docs(keys=chunk, **params):
                out[row["key"]] = row.get("doc") or None
        return out

    def bulk_docs(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST _bulk_docs; per-doc results (``error: conflict`` for losers)."""
        results: list[dict[str, Any]] = self.request(
            "POST", "_bulk_docs", body={"docs": docs}
        ).json()
        return results

    def all_docs(self, keys: list[str] | None = None, **params: Any) -> list[dict[str, Any]]:
        if keys is not None:
            resp = self.request("POST", "_all_docs", params=params or None, body={"keys": keys})
        else:
            resp = self.request("GET", "_all_docs", params=params or None)
        rows: list[dict[str, Any]] = resp.json()["rows"]
        return rows

    def iter_ids(self, prefix: str, *, page: int = 1000) -> Iterator[str]:
        """Ids of the documents whose id starts with ``prefix``, paged by id.

        Unlike a view row, a document id does not move when the document
        changes, so pages read from different copies of a cluster still add up.
        """
        params: dict[str, Any] = {"startkey": prefix, "endkey": prefix + "\ufff0", "limit": page}
        while True:
            rows = self.all_docs(**params)
            yield from (r["id"] for r in rows)
            if len(rows) < page:
                return
            params.update(startkey=rows[-1]["id"], skip=1)

    def view(
        self, ddoc: str, name: str, *, keys: list[Any] | None = None, **params: Any
    ) -> dict[str, Any]:
        path = f"_design/{quote(ddoc, safe='')}/_view/{quote(name, safe='')}"
        view = f"{ddoc}/{name}"
        if keys is not None:
            resp = self.request("POST", path, params=params or None, body={"keys": keys}, view=view)
        else:
            resp = self.request("GET", path, params=params or None, view=view)
        answer: dict[str, Any] = resp.json()
        return answer

    def iter_view(
        self, ddoc: str, name: str, *, page: int = 1000, **params: Any
    ) -> Iterator[dict[str, Any]]:
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

    def put_attachment(
        self, doc_id: str, rev: str, name: str, data: bytes, content_type: str
    ) -> str:
        path = f"{_quote_id(doc_id)}/{quote(name, safe='')}"
        resp = self.request(
            "PUT", path, params={"rev": rev}, data=data, headers={"Content-Type": content_type}
        )
        return str(resp.json()["rev"])

    def get_attachment(self, doc_id: str, name: str) -> bytes:
        return self.request("GET", f"{_quote_id(doc_id)}/{quote(name, safe='')}").content


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
