"""One process of a test's multi-process run: `python -m torch.distributed.run ... distributed_worker.py JSON`.

JSON holds gptlab.train's arguments ({"values": {...}, "out": ..., "resume": ..., "stop_after": ...}), and for a
finetune its settings too ({"finetune": {"base": ..., "data": ...}, ...}); rank 0 prints the result as JSON on stdout.
"""

import json
import os
import sys

import gptlab

args = json.loads(sys.argv[1])
if "finetune" in args:
    from gptlab.chat.config import Finetune
    from gptlab.chat.finetune import finetune

    result = finetune(Finetune(**args["finetune"]), args.get("values"), out=args["out"], quiet=True)
else:
    result = gptlab.train(args.get("values"), out=args["out"], resume=args.get("resume", False),
                          stop_after=args.get("stop_after"), quiet=True)
if os.environ.get("RANK", "0") == "0":
    print(json.dumps({"iters": result.iters, "stopped_by": result.stopped_by, "val_loss": result.val_loss}))
