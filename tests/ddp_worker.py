"""Run by tests/test_engine_ddp.py under torchrun: train, then save this rank's student/teacher/Rebuilder."""

import sys

import torch

from mfmseg.config import load_config
from mfmseg.engine.trainer import Trainer

if __name__ == "__main__":
    preset, out_dir, *overrides = sys.argv[1:]
    trainer = Trainer(load_config(preset, overrides))
    trainer.run()
    torch.save(trainer.step.state_dict(), f"{out_dir}/rank{trainer.ctx.rank}.pt")
    trainer.close()
