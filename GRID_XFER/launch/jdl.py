"""Grid sites (gLite WMS, DIRAC): a parametric JDL, N jobs from one description.

As GRID_LRT's launcher does, the job runs a launch script from the input
sandbox; unlike it, the database password is never an argument: it travels as
a file in the input sandbox, named in ``job.env`` (JDL dialects differ on how
to set environment variables, so the settings travel in that file too).
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
from pathlib import Path

from GRID_XFER.launch.spec import JobDir, LaunchSpec
from GRID_XFER.launch.submit import run_submit

JOB_FILE = "gridxfer.jdl"


def jdl_str(value: str) -> str:
    """A ClassAd string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_jdl(spec: LaunchSpec, job: JobDir) -> str:
    """A gLite/DIRAC parametric JDL: ``spec.workers`` jobs from one description."""
    inputs = [job.launch.name, job.config.name, job.env_file.name]
    if job.password_file is not None:
        inputs.append(job.password_file.name)
    args = ["launch.sh", "--env", job.env_file.name, *spec.worker_args()]
    outputs = ("worker__PARAM_.out", "worker__PARAM_.err")
    attrs: list[tuple[str, str]] = [
        ("JobName", jdl_str(spec.job_name)),
        ("JobType", jdl_str("Parametric")),
        ("Parameters", str(spec.workers)),
        ("ParameterStart", "0"),
        ("ParameterStep", "1"),
        ("Executable", jdl_str("/bin/bash")),
        ("Arguments", jdl_str(" ".join(shlex.quote(a) for a in args))),
        ("StdOutput", jdl_str(outputs[0])),
        ("StdError", jdl_str(outputs[1])),
        ("InputSandbox", "{" + ", ".join(jdl_str(i) for i in inputs) + "}"),
        ("OutputSandbox", "{" + ", ".join(jdl_str(o) for o in outputs) + "}"),
        ("CPUTime", str(spec.time_limit)),
    ]
    if spec.night:
        attrs.append(("GridXferNight", jdl_str(spec.night)))
    if spec.partition:
        attrs.append(("Site", jdl_str(spec.partition)))
    head = [
        f"# Written by `gridxfer launch --backend jdl` at {time.strftime('%Y-%m-%dT%H:%M:%S')}.",
        f"# Submit: dirac-wms-job-submit {JOB_FILE}   (or glite-wms-job-submit -a)",
        "# No password in here: it travels as a file in the InputSandbox, named in job.env.",
    ]
    width = max(len(k) for k, _ in attrs)
    body = [f"{k.ljust(width)} = {v};" for k, v in attrs]
    return "\n".join(head + body + [""])


def submit_jdl(job_file: Path) -> str | None:
    """DIRAC (``dirac-wms-job-submit``) or gLite (``glite-wms-job-submit -a``) when installed.

    Run in the job directory: the JDL's sandbox names are relative to it.
    """
    if shutil.which("dirac-wms-job-submit"):
        out = run_submit(["dirac-wms-job-submit", job_file.name], "DIRAC", cwd=job_file.parent)
        ids = re.findall(r"\b\d+\b", out)
        return ",".join(ids) if ids else out.strip()[:200]
    if shutil.which("glite-wms-job-submit"):
        out = run_submit(
            ["glite-wms-job-submit", "-a", job_file.name], "gLite", cwd=job_file.parent
        )
        m = re.search(r"https://\S+", out)
        return m[0] if m else out.strip()[:200]
    return None


class JdlBackend:
    name = "jdl"
    tool: str | None = "dirac-wms-job-submit"

    def render(self, spec: LaunchSpec, job: JobDir) -> Path:
        return job.add_job_file(JOB_FILE, render_jdl(spec, job))

    def submit(self, spec: LaunchSpec, job: JobDir) -> str | None:
        return submit_jdl(job.job_file or self.render(spec, job))
