"""A stand-in for the LOFAR LTA staging service, for tests only.

It speaks the same XML-RPC API as the remote ``LtaStager`` (add_getid,
getstatus, getstagedurls, abort, reschedule, getprogress) behind HTTP basic
authentication, and stages for real: through gfal2's bring_online against the
tape testbed (XRootD + FRM). Request states follow the LTA's words: 'scheduled',
'in progress', 'success', 'partial success', 'failed', 'aborted'.
"""

from __future__ import annotations

import base64
import errno
import itertools
import threading
from socketserver import ThreadingMixIn
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import gfal2

BATCH = 10


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class LtaStagerService:
    def __init__(self, user: str, password: str) -> None:
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.requests: dict[int, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.rejected = 0
        self._ids = itertools.count(31415)
        self._lock = threading.Lock()
        service = self

        class Handler(SimpleXMLRPCRequestHandler):
            rpc_paths = ("/service-public/xmlrpc",)

            def parse_request(self) -> bool:
                if not super().parse_request():
                    return False
                if self.headers.get("Authorization") != service.expected:
                    service.rejected += 1
                    self.send_error(401, "Unauthorized")
                    return False
                return True

        self.server = _Server(
            ("127.0.0.1", 0), requestHandler=Handler, logRequests=False, allow_none=True
        )
        for name in (
            "add_getid",
            "getstatus",
            "getstagedurls",
            "abort",
            "reschedule",
            "getprogress",
        ):
            self.server.register_function(getattr(self, name), f"LtaStager.{name}")
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/service-public/xmlrpc"

    def start(self) -> LtaStagerService:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API -------------------------------------------------------------------
    def _bring_online(self, urls: list[str]) -> list[tuple[str, list[str]]]:
        ctx = gfal2.creat_context()
        batches = []
        for i in range(0, len(urls), BATCH):
            chunk = urls[i : i + BATCH]
            _, token = ctx.bring_online(chunk, 3600, 3600, True)
            batches.append((token, chunk))
        return batches

    def add_getid(self, surls: list[str]) -> int:
        self.calls.append("add_getid")
        rid = next(self._ids)
        with self._lock:
            self.requests[rid] = {
                "surls": list(surls),
                "batches": self._bring_online(list(surls)),
                "staged": set(),
                "failed": set(),
                "status": "scheduled",
            }
        return rid

    def _refresh(self, rid: int) -> dict[str, Any]:
        req = self.requests.get(int(rid))
        if req is None:
            raise ValueError(f"no request {rid}")
        if req["status"] in ("aborted", "success", "partial success", "failed"):
            return req
        ctx = gfal2.creat_context()
        for token, chunk in req["batches"]:
            for url, err in zip(chunk, ctx.bring_online_poll(chunk, token), strict=False):
                if err is None:
                    req["staged"].add(url)
                elif err.code == errno.ENOENT:
                    req["failed"].add(url)
        waiting = len(req["surls"]) - len(req["staged"]) - len(req["failed"])
        if waiting:
            req["status"] = "in progress"
        elif req["failed"]:
            req["status"] = "partial success" if req["staged"] else "failed"
        else:
            req["status"] = "success"
        return req

    def getstatus(self, rid: int) -> str:
        self.calls.append("getstatus")
        with self._lock:
            return str(self._refresh(rid)["status"])

    def getstagedurls(self, rid: int) -> list[str]:
        self.calls.append("getstagedurls")
        with self._lock:
            return sorted(self._refresh(rid)["staged"])

    def abort(self, rid: int) -> bool:
        self.calls.append("abort")
        with self._lock:
            self.requests[int(rid)]["status"] = "aborted"
        return True

    def reschedule(self, rid: int) -> bool:
        self.calls.append("reschedule")
        with self._lock:
            req = self.requests[int(rid)]
            req.update(status="scheduled", failed=set(), batches=self._bring_online(req["surls"]))
        return True

    def getprogress(self) -> dict[str, dict[str, Any]]:
        self.calls.append("getprogress")
        with self._lock:
            return {
                str(rid): {
                    "Status": r["status"],
                    "File count": len(r["surls"]),
                    "Files done": len(r["staged"]),
                }
                for rid, r in self.requests.items()
            }
