"""Finish a detector run stopped at its last step by the old --max-steps code: the resume
trains no more steps, scores the last epoch, writes its metrics row and summary.json."""

import sys

import torch

from ghostnet.checkpoint import read_checkpoint
from ghostnet.config import TrainConfig
from ghostnet.train import fit

torch.set_num_threads(1)
last = sys.argv[1]
ck = read_checkpoint(last)
print("at", ck["global_step"], "epoch", ck["epoch"], "step_in_epoch", ck["step_in_epoch"])
s = fit(TrainConfig.from_dict(ck["config"]), resume=last)
print(s["status"], s["final"]["mAP50"], s["final"]["mAP"])
