"""Tape: file locality, staging (recall) requests and their poll, archive confirmation.

- :mod:`.locality`: where a file is (ONLINE, NEARLINE, ...), asked in parallel.
- :mod:`.methods`: the two recall methods (gfal2, the LTA stager) behind one interface.
- :mod:`.poll`: the one poll loop for tokens waiting on tape (recall and archive).
- :mod:`.recall`: :class:`Staging`, what workers and the CLI call.
- :mod:`.archive`: :class:`Archive`, done only once a copy is on tape.
- :mod:`.night`: a whole night (or a file of URLs, or one URL) at once, for the CLI.
"""

from GRID_XFER.staging.archive import Archive, decide_archive
from GRID_XFER.staging.locality import (
    BOTH,
    DISK_ONLY_SCHEMES,
    LOCALITIES,
    LOST,
    NEARLINE,
    ON_DISK,
    ON_TAPE,
    ONLINE,
    PROBLEMS,
    UNAVAILABLE,
    FileState,
    StateReport,
    chunks,
    classify,
    destination_urls,
    locality,
    may_be_on_tape,
    state_all,
    state_all_processes,
    token_urls,
)
from GRID_XFER.staging.methods import Gfal2Method, Method, Outcome, StagerMethod
from GRID_XFER.staging.night import (
    StageResult,
    Target,
    abort_request,
    poll_once,
    request_status,
    reschedule_request,
    stage_target,
    stager_progress,
    state_report,
    target_urls,
)
from GRID_XFER.staging.poll import PollReport, TokenPoll, Verdict, run_poll
from GRID_XFER.staging.recall import MAX_ROUNDS, Staging, decide_recall

__all__ = [
    "BOTH",
    "DISK_ONLY_SCHEMES",
    "LOCALITIES",
    "LOST",
    "MAX_ROUNDS",
    "NEARLINE",
    "ONLINE",
    "ON_DISK",
    "ON_TAPE",
    "PROBLEMS",
    "UNAVAILABLE",
    "Archive",
    "FileState",
    "Gfal2Method",
    "Method",
    "Outcome",
    "PollReport",
    "StageResult",
    "StagerMethod",
    "StateReport",
    "Staging",
    "Target",
    "TokenPoll",
    "Verdict",
    "abort_request",
    "chunks",
    "classify",
    "decide_archive",
    "decide_recall",
    "destination_urls",
    "locality",
    "may_be_on_tape",
    "poll_once",
    "request_status",
    "reschedule_request",
    "run_poll",
    "stage_target",
    "stager_progress",
    "state_all",
    "state_all_processes",
    "state_report",
    "target_urls",
    "token_urls",
]
