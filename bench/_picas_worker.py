"""The PiCaS side of bench/claim.py: runs with the *picas* virtualenv's python.

It imports only picas 1.1.2 (and its couchdb client), never GRID_XFER, so the
two stacks stay in separate virtualenvs. Two modes:

    _picas_worker.py setup URL DB COUNT      fresh database, PiCaS Monitor views, COUNT
                                             Task documents through picas's bulk save
    _picas_worker.py work URL DB RESULT      one worker: picas's own claim loop

On Apache CouchDB 3 the login comes from PICAS_USER / PICAS_PASSWORD in the
environment (never the command line).

A worker prints ``ready`` once it is connected, waits for a line on stdin (the
start signal, so interpreter start-up is not timed), runs the loop, and writes
a JSON result (claimed ids, request counts, its monotonic start/end) to RESULT.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

import couchdb.http
from couchdb.http import ResourceConflict
from picas.clients import CouchDB
from picas.documents import Task
from picas.iterators import TaskViewIterator

# The PiCaS standard Monitor views (as in picas's own examples), on type "task".
MONITOR_VIEWS = {
    "todo": 'function(doc) { if (doc.type == "task" && doc.lock == 0 && doc.done == 0) '
    "{ emit(doc._id, doc._id); } }",
    "locked": 'function(doc) { if (doc.type == "task" && doc.lock > 0 && doc.done == 0) '
    "{ emit(doc._id, doc._id); } }",
    "done": 'function(doc) { if (doc.type == "task" && doc.lock > 0 && doc.done > 0 '
    "&& !(doc.lock == 99 && doc.done == 99)) { emit(doc._id, doc._id); } }",
    "error": 'function(doc) { if (doc.type == "task" && doc.lock == 99 && doc.done == 99) '
    "{ emit(doc._id, doc._id); } }",
}

# HTTP requests made by this process, by kind; installed before any request.
REQUESTS: Counter = Counter()
_orig_request = couchdb.http.Session.request


def _kind(method: str, url: str) -> str:
    if "/_view/" in url:
        return "view"
    if "_bulk_docs" in url:
        return "bulk"
    return method


def _counting_request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
    kind = _kind(method, url)
    REQUESTS[kind] += 1
    try:
        return _orig_request(self, method, url, *args, **kwargs)
    except ResourceConflict:
        REQUESTS[kind + "_409"] += 1
        raise


couchdb.http.Session.request = _counting_request


def _client(url: str, db_name: str, create: bool = False) -> CouchDB:
    user = os.environ.get("PICAS_USER") or None
    return CouchDB(
        url=url,
        db=db_name,
        username=user,
        password=os.environ.get("PICAS_PASSWORD", ""),
        create=create,
    )


def setup(url: str, db_name: str, count: int, batch: int = 1000) -> None:
    db = _client(url, db_name, create=True)
    for name, map_fun in MONITOR_VIEWS.items():
        db.add_view(name, map_fun)
    ids = [f"bench_e{i:06d}" for i in range(count)]
    saved = 0
    for start in range(0, count, batch):
        tasks = [
            Task({"_id": i, "input": {"exposure": i.split("_", 1)[1]}})
            for i in ids[start : start + batch]
        ]
        saved += sum(db.save_documents(tasks))
    # Build the todo index now so that no worker pays for it inside the timing.
    list(db.view("todo", limit=1))
    print(json.dumps({"saved": saved}))


def work(url: str, db_name: str, result_path: str) -> None:
    db = _client(url, db_name)
    db.doc_count()  # connect (and count) before the clock starts
    REQUESTS.clear()
    print("ready", flush=True)
    sys.stdin.readline()
    t_start = time.monotonic()
    claimed: list[str] = []
    gave_up = 0  # EnvironmentError "Unable to claim task." (10 conflicts in a row)
    done_conflicts = 0  # the done-save lost to another worker's write (a double claim)
    while True:
        try:
            # picas's standard loop, as in its examples and AbstractRunActor.run.
            for task in TaskViewIterator(db, "todo"):
                claimed.append(task.id)
                task.done()
                try:
                    db.save(task)
                except ResourceConflict:
                    # AbstractRunActor._run logs this and moves on ("model results are
                    # more important"); the token was re-locked or finished by another.
                    done_conflicts += 1
            break  # StopIteration: the todo view is empty
        except OSError:
            gave_up += 1  # too much contention: start the loop again
    t_end = time.monotonic()
    with open(result_path, "w") as f:
        json.dump(
            {
                "claimed": claimed,
                "gave_up": gave_up,
                "done_conflicts": done_conflicts,
                "requests": dict(REQUESTS),
                "t_start": t_start,
                "t_end": t_end,
            },
            f,
        )


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[1] == "setup":
        setup(argv[2], argv[3], int(argv[4]))
        return 0
    if len(argv) == 5 and argv[1] == "work":
        work(argv[2], argv[3], argv[4])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
