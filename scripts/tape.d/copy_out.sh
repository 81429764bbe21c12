#!/bin/bash
# FRM migration (disk buffer -> "tape"): copy_out.sh <file on disk> <file in the MSS>.
# The MSS copy appears under its final name only when complete.
echo "$(date +%T) OUT $1 -> $2" >>"@STATE@/xfr.log"
mkdir -p "$(dirname "$2")" &&
    sleep "$(cat "@STATE@/migrate_delay" 2>/dev/null || echo 2)" &&
    cp "$1" "$2.part" && mv "$2.part" "$2"
