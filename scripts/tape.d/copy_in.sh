#!/bin/bash
# FRM recall ("tape" -> disk buffer): copy_in.sh <file in the MSS> <file on disk>.
# Sleeps the recall latency read from @STATE@/recall_delay (scripts/tape delay).
echo "$(date +%T) IN  $1 -> $2" >>"@STATE@/xfr.log"
[ -f "$1" ] || exit 2
sleep "$(cat "@STATE@/recall_delay" 2>/dev/null || echo 5)"
cp "$1" "$2"
