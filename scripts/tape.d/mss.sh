#!/bin/bash
# oss.msscmd gateway to the emulated MSS: mss.sh <cmd> <path in the MSS> [arg];
# the first line of output is 0 or -errno.
MSS=@MSS@
DISK=@DISK@
cmd=$1 p=$2
case $cmd in
    exists) [ -e "$p" ] && echo 0 || echo -2 ;;
    statx)
        if [ -e "$p" ]; then
            t=f; [ -d "$p" ] && t=d
            echo 0
            stat -c "$t $(stat -c %A "$p" | cut -c2-10) %h %u %g %X %Z %Y %s %o %b" "$p"
        else echo -2; fi ;;
    dlist)  # the union of the MSS directory and its disk-buffer twin
        l=$DISK${p#"$MSS"}
        if [ -d "$p" ] || [ -d "$l" ]; then
            echo 0
            { ls -1A "$p" 2>/dev/null; ls -1A "$l" 2>/dev/null; } | grep -v -E '\.(anew|fail|lock)$' | sort -u
        else echo -2; fi ;;
    rm) if [ -e "$p" ]; then rm -f "$p" && echo 0 || echo -5; else echo -2; fi ;;
    mv) # a file not migrated yet has nothing on tape to rename
        if [ ! -e "$p" ]; then echo 0
        else mkdir -p "$(dirname "$3")" && mv "$p" "$3" && echo 0 || echo -5; fi ;;
    create) echo 0 ;;
    *) echo -95 ;;
esac
