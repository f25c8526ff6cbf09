"""Run by tests/test_train_distributed_trainers.py under torchrun (2 gloo processes): joins one process group and
runs several trainers in it, one after the other (one torchrun start-up for all). argv[1]: a JSON list of
{"name", "data", "out", "overrides"}. The trainers leave a group they did not create (distributed.finish)."""
import json
import sys
from pathlib import Path

import torch.distributed as dist

from uad_label.training import TrainRequest, get_trainer


def main(spec: str) -> int:
    dist.init_process_group("gloo")
    for run in json.loads(Path(spec).read_text(encoding="utf-8")):
        get_trainer(run["name"])(TrainRequest([Path(d) for d in run["data"]], "cpu", Path(run["out"]), "cpu",
                                              run["overrides"]))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
