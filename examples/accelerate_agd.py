"""Your own training loop with Accelerate and AGD: what changes is one `prepare` call.

    ACCELERATE_USE_CPU=1 accelerate launch --config_file launch/accelerate/ddp.yaml examples/accelerate_agd.py
    accelerate launch --config_file launch/accelerate/fsdp2.yaml examples/accelerate_agd.py
    accelerate launch --config_file launch/accelerate/zero2.yaml examples/accelerate_agd.py

Optional arguments: EPOCHS (default 10) and REPORT.json, where rank 0 writes what ran (the engine, whether
every rank holds the same model) and the held-out accuracy.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator

import autoopt_dist.accelerate
from autoopt_dist.models import MLP
from autoopt_dist.optim import AGD, agd_init_
from autoopt_dist.train.config import DataConfig
from autoopt_dist.train.data import GlobalBatches, load_dataset
from autoopt_dist.train.engine import full_state

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
report_path = sys.argv[2] if len(sys.argv) > 2 else None

accelerator = Accelerator()
data = load_dataset(DataConfig(name="digits", batch_size=128))
torch.manual_seed(0)  # the same full tensors on every rank, sharded afterwards
model = agd_init_(MLP(data.in_features, 128, 3, data.num_classes))
world = accelerator.num_processes if dist.is_initialized() else 1
model, optimizer = autoopt_dist.accelerate.prepare(
    accelerator, model, lambda params, layout: AGD(params, layout=layout), micro_batch_size=128 // max(world, 1)
)
rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
batches = GlobalBatches(len(data.train.x), 128, seed=0, rank=rank, world_size=world)
onehot_scale = data.num_classes**0.5
for epoch in range(epochs):
    for step in range(batches.steps_per_epoch):
        idx = batches.local_indices(epoch, step)
        out = model(data.train.x[idx])
        target = torch.nn.functional.one_hot(data.train.y[idx], data.num_classes) * onehot_scale
        accelerator.backward((out - target).square().mean())  # AGD's reference square loss
        optimizer.step()
        optimizer.zero_grad()

with torch.no_grad():
    x, y = data.test.x.tensor_split(world)[rank], data.test.y.tensor_split(world)[rank]
    correct = torch.tensor([(model(x).argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(correct)
state = full_state(model)
checksum = [round(float(t.double().sum()), 10) for t in state.values()]
everyone = [None] * world
if dist.is_initialized():
    dist.all_gather_object(everyone, checksum)
else:
    everyone = [checksum]
if rank == 0:
    report = {
        "distributed_type": str(accelerator.distributed_type),
        "model_class": type(model).__name__,
        "param_class": type(next(model.parameters())).__name__,
        "world_size": world,
        "synchronised": all(c == checksum for c in everyone),
        "accuracy": float(correct[0] / correct[1]),
    }
    print(json.dumps(report))
    if report_path:
        open(report_path, "w").write(json.dumps(report))
# On CPU, gloo (and DeepSpeed's shared-memory comm) can abort a process at teardown ("terminate called
# without an active exception") when a peer destroys the group while it is still in a collective, or when
# interpreter exit races their worker threads. So: every rank past its last collective (the barrier), then
# Accelerate's end_training (trackers, destroy_process_group), then leave without interpreter teardown.
distributed = dist.is_initialized()
if distributed:
    dist.barrier()
accelerator.end_training()
if distributed:
    sys.stdout.flush()
    os._exit(0)
