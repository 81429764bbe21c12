"""Files attached to tokens: parsets and scripts a user adds, the worker's own logs.

A user's file goes in with :func:`attach`, at the token's latest revision: the
attachment PUT changes nothing but the attachment, so on a 409 (a worker's
claim or progress save got in first) it is sent again on the fresh revision and
no one's update is lost; the worker's save that then meets our 409 re-reads
too (:mod:`GRID_XFER.lease`). Names are plain file names, so a task can write
them into a directory as they are; the worker's log names are its own.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

from GRID_XFER.couch import Couch
from GRID_XFER.errors import Conflict, InvalidInput, NotFound
from GRID_XFER.token import check_token_id, is_token

# Our own limit, well under CouchDB 3's max_attachment_size (1 GiB by default):
# the file is read whole into memory here and by every worker that runs the token.
MAX_BYTES = 64 * 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_WORKER_LOG = re.compile(r"worker-[0-9]+\.log")
_TRIES = 20


def log_name(attempt: int) -> str:
    """The name the worker attaches its log of one attempt under."""
    return f"worker-{attempt}.log"


def is_worker_log(name: str) -> bool:
    return _WORKER_LOG.fullmatch(name) is not None


def check_name(name: str) -> str:
    """A name a user may attach under: a plain file name, none of the worker's logs."""
    if not NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid attachment name {name!r}: use 1-255 letters, digits and ._+- "
            "(not starting with a symbol)"
        )
    if is_worker_log(name):
        raise InvalidInput(
            f"attachment name {name!r} is reserved for the worker's log; choose another"
        )
    return name


def user_attachments(doc: dict[str, Any]) -> dict[str, int]:
    """``{name: length}`` of the token's attachments that are not worker logs."""
    stubs = doc.get("_attachments")
    if not isinstance(stubs, dict):
        return {}
    return {
        name: int(att.get("length") or 0) if isinstance(att, dict) else 0
        for name, att in sorted(stubs.items())
        if isinstance(name, str) and not is_worker_log(name)
    }


def attach(couch: Couch, token_id: str, name: str, data: bytes, content_type: str) -> str:
    """Attach ``data`` to a token; the new revision. NotFound for no token, Conflict
    only when the token changed between every read and write (``_TRIES`` times)."""
    check_token_id(token_id)
    check_name(name)
    if len(data) > MAX_BYTES:
        raise InvalidInput(
            f"{name!r} is {len(data)} bytes; attachments are at most {MAX_BYTES} bytes "
            "(put larger files on storage and name them in the token)"
        )
    for attempt in range(_TRIES):
        if attempt:
            time.sleep(random.uniform(0, 0.02 * attempt))  # let a busy writer's save pass
        doc = couch.get_or_none(token_id)
        if doc is None or not is_token(doc):
            raise NotFound(f"no token {token_id!r}")
        try:
            return couch.put_attachment(token_id, doc["_rev"], name, data, content_type)
        except Conflict:
            continue  # someone saved the token meanwhile: attach to their revision
    raise Conflict(f"token {token_id}: changed {_TRIES} times while attaching {name!r}; try again")


def read(couch: Couch, token_id: str, name: str) -> bytes:
    """One attachment's content; NotFound naming what is missing."""
    check_token_id(token_id)
    try:
        return couch.get_attachment(token_id, name)
    except NotFound:
        raise NotFound(f"token {token_id!r} has no attachment {name!r}") from None
