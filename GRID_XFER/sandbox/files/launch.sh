#!/usr/bin/env bash
# Start one GRID_XFER worker on a batch node (Slurm, HTCondor, grid site).
#
# Written into the job by `gridxfer launch`; runs there as the job itself:
#   GRIDXFER_CONFIG                 the job's configuration file (it holds no password)
#   GRIDXFER_COUCHDB_PASSWORD_FILE  a file with the database password, readable by the user only
#   GRIDXFER_NIGHT                  only this night's tokens (optional)
#   GRIDXFER_SANDBOX                fetch (default): fetch, verify and unpack the recorded
#                                   sandbox first; none: run the worker without one
#   GRIDXFER_PYTHON                 a Python with GRID_XFER installed (default: python3)
#   GRIDXFER_SCRATCH                where the job's private work directory goes (default: $TMPDIR)
# `--env FILE` first reads such GRIDXFER_*=value lines from FILE (grid jobs, whose
# description cannot set the environment portably). Other arguments go to
# `gridxfer worker` (which always gets --idle-exit).
#
# Exit status: the worker's (0 done; 3 configuration; 4 database; 128+N stopped by
# signal N, its token handed back), 10 sandbox fetch or unpack failed (unsafe
# archive included), 11 sandbox checksum mismatch, 1 no usable GRID_XFER here.
set -u

if [[ ${1:-} == --env ]]; then
    [[ -r ${2:-} ]] || { echo "launch.sh: --env needs a readable file" >&2; exit 1; }
    while IFS= read -r line || [[ -n $line ]]; do
        case $line in
            '' | '#'*) ;;
            GRIDXFER_*=*) export "$line" ;;   # taken literally: no expansion, no eval
            *) echo "launch.sh: $2: not a GRIDXFER_*=value line: ${line%%=*}" >&2; exit 1 ;;
        esac
    done <"$2"
    shift 2
fi

py=${GRIDXFER_PYTHON:-python3}
if ! command -v "$py" >/dev/null 2>&1; then
    echo "launch.sh: $py not found on $(hostname); set GRIDXFER_PYTHON" >&2
    exit 1
fi
if ! "$py" -c 'import GRID_XFER.cli' 2>/dev/null; then
    echo "launch.sh: $py on $(hostname) cannot import GRID_XFER; set GRIDXFER_PYTHON" >&2
    exit 1
fi

job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}
job=${job:-${SLURM_JOB_ID:-${GRIDXFER_JOB_ID:-${DIRACJOBID:-${GLITE_WMS_JOBID:-none}}}}}
echo "launch.sh: host $(hostname) job $job night ${GRIDXFER_NIGHT:-any} sandbox ${GRIDXFER_SANDBOX:-fetch}" >&2

# exec: the worker itself receives the batch system's signals (--signal=B:TERM, scancel).
exec "$py" -m GRID_XFER.cli node run --idle-exit "$@"
