"""The processes of a test's multi-process runs: `python -m torch.distributed.run ... distributed_worker.py JSON`.

JSON is a list of jobs, run one after the other in the same processes (one launch of torchrun for several
scenarios). A job holds gptlab.train's arguments ({"name": ..., "values": {...}, "out": ..., "resume": ...,
"stop_after": ...}), and for a finetune its settings too ({"finetune": {"base": ..., "data": ...}, ...}). Rank 0
prints each job's result as one JSON line on stdout. A job {"copy": [FROM, TO]} copies a run folder (rank 0
alone, between runs: a test looks at a checkpoint that a later job's run prunes). At the end every process
writes the names of its threads still running into threads{RANK}.json in its working folder (Linux's /proc),
for the test that no gloo thread outlives a run.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import gptlab


def run(job: dict) -> dict:
    if "finetune" in job:
        from gptlab.chat.config import Finetune
        from gptlab.chat.finetune import finetune

        result = finetune(Finetune(**job["finetune"]), job.get("values"), out=job["out"], quiet=True)
    else:
        result = gptlab.train(job.get("values"), out=job["out"], resume=job.get("resume", False),
                              stop_after=job.get("stop_after"), quiet=True)
    return {"name": job.get("name"), "iters": result.iters, "stopped_by": result.stopped_by,
            "val_loss": result.val_loss}


main = os.environ.get("RANK", "0") == "0"
for job in json.loads(sys.argv[1]):
    if "copy" in job:
        if main:
            shutil.copytree(*job["copy"])
        continue
    result = run(job)
    if main:
        print(json.dumps(result), flush=True)
if Path("/proc/self/task").is_dir():
    names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    Path(f"threads{os.environ['RANK']}.json").write_text(json.dumps(names))
