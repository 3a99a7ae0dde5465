"""Plain PyTorch with TensorBoard's SummaryWriter: tracelet tracks what the loop writes.

No Lightning here. Every ``add_scalar``/``add_scalars``/``add_hparams`` call also reaches the
tracking backends with its ``global_step``; TensorBoard's own event files are unchanged.

    python examples/plain_pytorch_tensorboard.py
    tracelet run --backend mlflow -- torchrun --nproc_per_node=2 examples/plain_pytorch_tensorboard.py

Under ``torchrun`` (gloo, CPU) only rank 0 writes TensorBoard scalars, and tracelet records one
run. Under ``tracelet run`` the script's own ``start_logging`` continues the run ``tracelet run``
started (its names fill in what the command line does not give); a script without it is
tracked all the same. TensorBoard's files go to ``example-output/tensorboard`` (or
TB_EXAMPLE_LOGDIR); TB_EXAMPLE_STEPS sets the length.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

import tracelet


def main() -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    tracelet.start_logging(exp_name="plain-pytorch", project="tracelet-examples")  # a no-op on rank > 0

    torch.manual_seed(rank)
    model = torch.nn.Linear(8, 1)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    target = torch.linspace(-1, 1, 8).unsqueeze(1)
    writer = (
        SummaryWriter(os.environ.get("TB_EXAMPLE_LOGDIR", "example-output/tensorboard"))
        if rank == 0
        else None
    )

    steps = int(os.environ.get("TB_EXAMPLE_STEPS", "200"))
    for step in range(steps):
        x = torch.randn(32, 8)
        loss = torch.nn.functional.mse_loss(model(x), x @ target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if writer is not None and step % 10 == 0:
            writer.add_scalar("train/loss", loss.item(), global_step=step)
            writer.add_scalars("lr", {"group0": optimizer.param_groups[0]["lr"]}, step)
    if writer is not None:
        writer.add_hparams({"lr": 0.05, "batch_size": 32}, {"hparam/final_loss": loss.item()})
        writer.close()
    if distributed:
        dist.barrier()  # both ranks tear gloo down together (a rank leaving early was seen to abort)
        dist.destroy_process_group()
    if rank == 0:
        report = tracelet.stop_logging()
        print(f"run in MLflow: {report.backends['mlflow'].location.run_id}")


if __name__ == "__main__":
    main()
