"""Gradients of one step as `aef train` sets it up, saved by rank 0: ``python ddp_grads_worker.py OUT``
alone (one process, the full batch), or under ``torchrun --nproc-per-node 2`` (gloo, half each).

The loss is a mean of per-sample terms, so the gradient DDP averages over processes must equal the
single process's gradient on the whole batch. (The pretraining objective is not of that form:
batch uniformity pairs samples and CLIP contrasts them, so its value depends on how the batch is
split; what this checks is the data split and the gradient averaging that `aef train` relies on.)
"""

import sys

import torch

from aef.pipelines.data import SyntheticDataset, collate
from aef.models import AEF
from aef.pipelines.train import Dist, StepBatches, distributed, sample_periods, wrap_ddp

GLOBAL_BATCH = 4


def save_step_gradients(d: Dist, out: str) -> None:
    torch.manual_seed(0)
    model = AEF("tiny").train()
    module = wrap_ddp(model, d)
    data = SyntheticDataset(8, side=16, frames={"sentinel2": 2, "sentinel1": 1}, seed=3)
    indices = next(iter(StepBatches(len(data), GLOBAL_BATCH, d.rank, d.world, seed=0, start=0, stop=1)))
    batch = collate([data[i] for i in indices])
    emb = module(batch["source_data"], batch["timestamps"], sample_periods(batch), batch["masks"])["embeddings"]
    direction = torch.randn(emb.shape[1:], generator=torch.Generator().manual_seed(1))
    loss = (emb * direction).sum(-1).mean()
    loss.backward()
    if d.rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)


def main(out: str) -> None:
    # The DDP wrapper lives in the function below, as in aef train, so it is gone before the process
    # group is destroyed (aef.pipelines.train.shutdown_distributed says why that order matters).
    with distributed("cpu") as d:
        save_step_gradients(d, out)


if __name__ == "__main__":
    main(sys.argv[1])
