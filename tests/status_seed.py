"""Seed nights with tokens in every state, and what `gridxfer status` must say about them.

Tokens go through the pool as workers would move them (claim, done, fail); the
states no transition reaches yet (staging, archiving) are set on a held lease.
The expected numbers are computed from the stored documents, independently of
the views.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import Code
from GRID_XFER.pool import Lease, Pool
from GRID_XFER.token import STATES, parse_spec

# night -> (tokens, [(state, code or None)] for the tokens that move)
PLAN: dict[str, list[tuple[str, int | None]]] = {
    "20261125": [("done", None)] * 4
    + [("error", Code.CHECKSUM_MISMATCH)] * 2
    + [("error", Code.SOURCE_MISSING)]
    + [("error", Code.MISSING_AT_SOURCE)] * 3,
    "20261126": [("done", None)] * 3
    + [("locked", None)] * 2
    + [("staging", None)]
    + [("archiving", None)]
    + [("error", Code.TRANSFER_FAILED)],
    "20261127": [("locked", None), ("done", None)],
}
SIZES = {"20261125": 10, "20261126": 12, "20261127": 5}  # tokens per night

MESSAGES = {
    Code.CHECKSUM_MISMATCH: "checksum mismatch: {f} adler32 expected 0000abcd, got 1234ffff",
    Code.SOURCE_MISSING: "source missing: {f}: No such file or directory",
    Code.MISSING_AT_SOURCE: "listed in manifest, not at source: {f}",
    Code.TRANSFER_FAILED: "transfer failed: {f}: connection reset by peer",
}


def seed(pool: Pool) -> list[Lease]:
    """Create and move the tokens of PLAN; returns the leases still held."""
    held: list[Lease] = []
    for night, n in SIZES.items():
        pool.create(
            night,
            [
                parse_spec(
                    {
                        "exposure": f"{i:08d}",
                        "files": [{"name": f"raw-{i:08d}.fits.fz", "size": 1000 * (i + 1)}],
                    }
                )
                for i in range(n)
            ],
        )
        for state, code in PLAN[night]:
            lease = pool.claim(night)
            assert lease is not None
            name = lease.doc["files"][0]["name"]
            if state == "done":
                lease.done()
            elif state == "error":
                assert code is not None
                lease.fail(code, MESSAGES[code].format(f=name), file=name)
            else:
                if state != "locked":
                    lease.update(state=state)
                held.append(lease)
    return held


def tokens(couch: Couch) -> list[dict[str, Any]]:
    return [
        r["doc"] for r in couch.all_docs(include_docs=True) if not r["id"].startswith("_design/")
    ]


def expected(couch: Couch) -> dict[str, dict[str, Any]]:
    """``{night: {"states", "errors", "bytes_done", "bytes_total", "messages", "holders"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for doc in tokens(couch):
        e = out.setdefault(
            doc["token_set"],
            {
                "states": dict.fromkeys(STATES, 0),
                "errors": Counter(),
                "bytes_done": 0,
                "bytes_total": 0,
                "messages": defaultdict(set),
                "holders": Counter(),
            },
        )
        e["states"][doc["state"]] += 1
        e["bytes_total"] += doc["bytes_total"]
        if doc["state"] == "done":
            e["bytes_done"] += doc["bytes_total"]
        if doc["state"] == "error":
            e["errors"][str(doc["error"]["code"])] += 1
            e["messages"][doc["error"]["code"]].add(doc["error"]["message"])
        if doc["state"] in ("locked", "staging", "archiving"):
            e["holders"][doc["worker"]["id"]] += 1
    return out
