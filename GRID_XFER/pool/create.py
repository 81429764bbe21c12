"""Creating a night's tokens, and catching up when a night is created again.

Ids are deterministic (``<night>_<exposure>``), so a re-run writes only what is
new or changed; a token someone holds or has finished is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from GRID_XFER import token as tk
from GRID_XFER.couch import chunked
from GRID_XFER.errors import InvalidToken
from GRID_XFER.pool.base import BATCH, PoolBase

log = logging.getLogger(__name__)


@dataclass
class CreateReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # held or finished: left alone
    # Done, but the source changed since (late files): left alone until a reset.
    outdated: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}


class Creating(PoolBase):
    """The pool's ``create``."""

    def create(
        self,
        night: str,
        specs: Iterable[tk.ExposureSpec],
        *,
        source: str | None = None,
        destination: str | None = None,
        batch: int = BATCH,
    ) -> CreateReport:
        """Add a night's tokens; re-running adds only what is new (ids are deterministic).

        An exposure whose files changed is updated while nobody holds it and it is
        not done; done and held tokens are never touched.
        """
        report = CreateReport()
        now = self.clock()
        tk.check_id_part(night, "night")
        seen: set[str] = set()
        for chunk in chunked(specs, batch):
            docs = self._new_tokens(night, chunk, seen, source, destination, now)
            rows = self.couch.all_docs(keys=[d["_id"] for d in docs], include_docs=True)
            existing = {r["key"]: r["doc"] for r in rows if r.get("doc")}
            to_save = []
            for doc in docs:
                old = existing.get(doc["_id"])
                if old is None:
                    to_save.append(doc)
                elif _catch_up(old, doc, night, report, now):
                    to_save.append(old)
            self._save_created(to_save, report)
        return report

    def _new_tokens(
        self,
        night: str,
        specs: Iterable[tk.ExposureSpec],
        seen: set[str],
        source: str | None,
        destination: str | None,
        now: float,
    ) -> list[dict[str, Any]]:
        """The chunk's tokens as new; an exposure listed twice (``seen``) is refused."""
        docs = []
        for spec in specs:
            doc = tk.new_token(
                night,
                spec,
                source=source,
                destination=destination,
                max_attempts=self.settings.max_attempts,
                now=now,
            )
            if doc["_id"] in seen:
                raise InvalidToken(f"exposure {spec.exposure!r} listed twice")
            seen.add(doc["_id"])
            docs.append(doc)
        return docs

    def _save_created(self, docs: list[dict[str, Any]], report: CreateReport) -> None:
        for result, doc in zip(self.couch.bulk_docs(docs), docs, strict=False):
            bucket = report.updated if "_rev" in doc else report.created
            if result.get("error") == "conflict":
                report.skipped.append(doc["_id"])  # changed by someone meanwhile
            elif result.get("error"):
                raise InvalidToken(
                    f"token {doc['_id']}: server refused it: "
                    f"{result.get('reason') or result['error']}"
                )
            else:
                bucket.append(doc["_id"])


def _catch_up(
    old: dict[str, Any], doc: dict[str, Any], night: str, report: CreateReport, now: float
) -> bool:
    """Update ``old`` (stored under ``doc``'s id) to ``doc``'s work if that is allowed:
    True if ``old`` is to be saved, else False with the reason recorded in ``report``."""
    if not (tk.is_token(old) and old["token_set"] == night):
        log.warning(
            "%s: the id is taken by a document that is no token of night %s; left alone",
            doc["_id"],
            night,
        )
        report.skipped.append(doc["_id"])
        return False
    problem = tk.problem(old)
    if problem is not None and tk.shown_state(old) in ("todo", "error"):
        tk.quarantine(old, problem, now)  # then it is updated like any error token
    if _same_work(old, doc):
        report.unchanged.append(doc["_id"])
        return False
    if old.get("state") not in ("todo", "error"):
        report.skipped.append(doc["_id"])
        if old.get("state") == "done":
            report.outdated.append(doc["_id"])
        return False
    # Catch-up: late files or a fixed manifest; an errored token
    # gets a fresh start since its inputs changed.
    if old.get("state") == "error":
        tk.reset(old, now)
    old.update(
        files=doc["files"],
        bytes_total=doc["bytes_total"],
        source=doc["source"],
        destination=doc["destination"],
        payload=doc["payload"],
        manifest=doc["manifest"],
        incarnation=tk.new_incarnation(),
    )  # other work now
    tk.add_event(old, now, "updated")
    return True


def _work(files: Any) -> list[Any] | None:
    """Files as the scan would write them (results and empty fields aside), for comparing;
    None for a list that is no list of files (a malformed token: not the same work)."""
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return None
    out = []
    for f in files:
        entry = {k: v for k, v in f.items() if k != "result" and v not in (None, {}, [])}
        out.append(entry)
    return out


def _same_work(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return (
        _work(old.get("files", [])) == _work(new["files"])
        and old.get("manifest") == new.get("manifest")
        and old.get("source") == new["source"]
        and old.get("destination") == new["destination"]
    )
