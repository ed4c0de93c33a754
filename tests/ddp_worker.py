"""Run by tests/test_engine_ddp.py under torchrun: `ddp_worker.py MODE PRESET OUT_DIR [key=value ...]`.

train        train, then save this rank's student/teacher/Rebuilder to OUT_DIR/rank<r>.pt
collectives  OUT_DIR/collectives<r>.json: the sharded evaluation (with the one-rank evaluation on rank 0), the
             images each rank read, gradient averaging and the buffer broadcast on hand-made values
fail-data    `mfmseg train` where rank 1's data loader raises at its second batch
fail-step    `mfmseg train` where rank 1's training step raises at iteration 1
"""

import json
import os
import sys
import time

import torch

from mfmseg.config import load_config

RANK = int(os.environ.get("RANK", "0"))


class Counted:
    """A dataset that records which images were read."""

    def __init__(self, dataset, read: list[int]):
        self.dataset, self.read = dataset, read

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        self.read.append(i)
        return self.dataset[i]


def collectives(preset: str, out_dir: str, overrides: list[str]) -> None:
    from mfmseg.data.datasets import build_dataset
    from mfmseg.engine.evaluation.evaluate import evaluate
    from mfmseg.engine.runtime.distributed import (allreduce_gradients, broadcast_state, init_distributed,
                                                   shutdown_distributed)
    from mfmseg.engine.training.trainer import seed_iteration
    from mfmseg.models.zoo import build_model

    cfg = load_config(preset, overrides)
    ctx = init_distributed("cpu", timeout_s=60)
    seed_iteration(cfg.seed, 0, -1)
    model = build_model(cfg.model)
    val = build_dataset(cfg.data.val, "val", num_classes=cfg.model.num_classes)
    read: list[int] = []
    counted = Counted(val, read)
    out = {"sharded": evaluate(model, counted, cfg.eval, progress=False, ctx=ctx), "read": list(read)}
    if ctx.is_main:
        out["one_rank"] = evaluate(model, val, cfg.eval, progress=False)

    # gradients: a on every rank (rank + 1), b on rank 1 only, c on no rank; d does not train
    a, b, c, d = (torch.nn.Parameter(torch.zeros(3)) for _ in range(4))
    d.requires_grad_(False)
    a.grad = torch.full((3,), RANK + 1.0)
    if RANK == 1:
        b.grad = torch.full((3,), 4.0)
    allreduce_gradients([a, b, c, d], ctx.world_size)
    out["grads"] = [None if p.grad is None else p.grad.tolist() for p in (a, b, c, d)]

    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(RANK + 1.0)
    bn.num_batches_tracked.fill_(RANK + 7)
    bn.weight.data.fill_(RANK + 3.0)
    broadcast_state([bn, None], params=False)
    out["bn"] = [bn.running_mean.tolist(), int(bn.num_batches_tracked), bn.weight.tolist()]
    with open(f"{out_dir}/collectives{RANK}.json", "w") as f:
        json.dump(out, f)
    shutdown_distributed()


def fail(mode: str, preset: str, overrides: list[str]) -> int:
    from mfmseg import cli
    from mfmseg.engine.training import trainer
    from mfmseg.uda.step import UDAStep

    if RANK == 1 and mode == "fail-data":
        build = trainer.build_uda_loader

        def failing_loader(*args, **kwargs):
            batches = build(*args, **kwargs)
            yield next(batches)
            raise RuntimeError(f"injected failure: rank 1 could not decode an image at t={time.time():.1f}")

        trainer.build_uda_loader = failing_loader
    if RANK == 1 and mode == "fail-step":
        step = UDAStep.train_step

        def failing_step(self, batch, iteration, **kwargs):
            if iteration == 1:
                raise RuntimeError(f"injected failure: rank 1 failed inside the training step at t={time.time():.1f}")
            return step(self, batch, iteration, **kwargs)

        UDAStep.train_step = failing_step
    return cli.main(["train", preset, *overrides])


if __name__ == "__main__":
    mode, preset, out_dir, *overrides = sys.argv[1:]
    if mode == "train":
        from mfmseg.engine.training.trainer import Trainer

        run = Trainer(load_config(preset, overrides))
        run.run()
        torch.save(run.step.state_dict(), f"{out_dir}/rank{run.ctx.rank}.pt")
        run.close()
    elif mode == "collectives":
        collectives(preset, out_dir, overrides)
    else:
        sys.exit(fail(mode, preset, overrides))
