#!/usr/bin/python3
"""XRootD prepare plugin program (ofs.preplib libXrdOfsPrepGPI.so -run prep.py).

Called as ``prep.py [options] -- <reqid> <stage|prep|query|cancel|evict> <lfn>...``:
stage queues recalls in the FRM transfer daemon (the queue xrootd itself uses on
open), query answers gfal2's bring_online_poll, evict drops a disk replica that
is safe on "tape" (gfal2 release).
"""

import json
import os
import subprocess
import sys
import time

DISK, MSS, STATE, CFG, NAME = "@DISK@", "@MSS@", "@STATE@", "@CFG@", "@NAME@"
REQS = os.path.join(STATE, "req")


def online(lfn: str) -> bool:
    return os.path.isfile(DISK + lfn) and not os.path.exists(DISK + lfn + ".anew")


def main() -> None:
    args = sys.argv[1:]
    args = args[args.index("--") + 1 :]
    reqid, op, lfns = args[0], args[1], args[2:]
    os.makedirs(REQS, exist_ok=True)
    with open(os.path.join(STATE, "prep.log"), "a") as f:
        f.write(f"{time.strftime('%T')} {op} {reqid} {lfns}\n")
    rf = os.path.join(REQS, reqid.replace("/", "_"))
    if op in ("stage", "prep"):
        with open(rf + ".tmp", "w") as f:
            json.dump({"t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "paths": lfns}, f)
        os.replace(rf + ".tmp", rf)
        todo = [lfn for lfn in lfns if not online(lfn)]
        if todo:
            line = f"+ {reqid} - 1 r {' '.join(todo)}\n"
            subprocess.run(
                ["frm_xfragent", "-c", CFG, "-n", NAME],
                input=line.encode(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
    elif op == "query":
        req = {"t": "", "paths": []}
        if os.path.exists(rf):
            with open(rf) as f:
                req = json.load(f)
        resp = []
        for lfn in lfns:
            on = online(lfn)
            failed = os.path.exists(DISK + lfn + ".fail")
            resp.append(
                {
                    "path": lfn,
                    "path_exists": on or os.path.exists(MSS + lfn),
                    "online": on,
                    "requested": lfn in req["paths"] and not on,
                    "has_reqid": lfn in req["paths"],
                    "req_time": req["t"],
                    "error_text": "recall failed" if failed else "",
                }
            )
        print(json.dumps({"request_id": reqid, "responses": resp}))
    elif op == "cancel":
        if os.path.exists(rf):
            os.unlink(rf)
    elif op == "evict":
        for lfn in lfns:
            if (
                online(lfn)
                and os.path.exists(MSS + lfn)
                and os.path.getsize(MSS + lfn) == os.path.getsize(DISK + lfn)
            ):
                os.unlink(DISK + lfn)


main()
