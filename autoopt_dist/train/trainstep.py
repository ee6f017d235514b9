"""One optimizer step, whatever wraps the model: micro-batches, precision, gradient sync, skip or step.

PyTorch engines: each micro-batch's loss is divided by the micro-batch count and gradients are
synchronised on the last micro-batch only (`no_sync` / FSDP2's `set_requires_gradient_sync`), so the
optimizer sees the gradient of the mean loss over the global batch once per step (METHODS.md G1, G8).
DeepSpeed: its engine owns backward, the division and the accumulation boundary; our optimizer runs
at the boundary only. bf16: autocast around the forward (PyTorch engines; parameters, gradients and
every optimizer statistic stay fp32), DeepSpeed's bf16 mode under ZeRO (fp32 master partitions).
"""

from __future__ import annotations

import contextlib

import torch


class TrainStep:
    def __init__(self, model, optimizer, strategy: str, grad_accum: int, bf16: bool, device: torch.device,
                 deepspeed_engine=None):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.grad_accum, self.bf16, self.device = grad_accum, bf16, device
        self.deepspeed = deepspeed_engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output in fp32, with this run's precision."""
        if self.deepspeed is not None and self.bf16 and x.is_floating_point():
            x = x.to(torch.bfloat16)
        with self._autocast():
            return self.model(x).float()

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
        """Forward and backward over this rank's share of one global batch; returns the mean loss."""
        total = torch.zeros((), device=self.device)
        micro = list(zip(x.chunk(self.grad_accum), y.chunk(self.grad_accum)))
        for i, (xm, ym) in enumerate(micro):
            last = i == len(micro) - 1
            with self._sync(last):
                loss = loss_fn(self.forward(xm), ym)
            if self.deepspeed is not None:
                self.deepspeed.backward(loss)  # divides by the accumulation count itself
                if not last:
                    self.deepspeed.step()  # not a boundary: DeepSpeed only advances its micro-step counter
            else:
                with self._sync(last):
                    (loss / self.grad_accum).backward()
            total += loss.detach() / self.grad_accum
        return total

    def _autocast(self):
        if self.bf16 and self.deepspeed is None:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self, last: bool):
        """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch."""
        if last or self.deepspeed is not None:
            return contextlib.nullcontext()
        if hasattr(self.model, "no_sync"):  # DDP, FSDP1
            return self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            return _fsdp2_no_sync(self.model)
        return contextlib.nullcontext()

    @torch.no_grad()
    def local_step_is_bad(self, loss: torch.Tensor) -> bool:
        """A non-finite loss, or a non-finite local gradient (under DeepSpeed the gradients sit in its
        partitions until step(); a non-finite gradient there comes from a non-finite loss)."""
        if not torch.isfinite(loss).all():
            return True
        if self.deepspeed is not None:
            return False
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return False
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        return not bool(torch.isfinite(torch.stack(torch._foreach_norm(local))).all())

    def step(self) -> None:
        if self.deepspeed is not None:
            self.deepspeed.step()
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def skip(self) -> None:
        """Drop this step's gradients without touching parameters or optimizer state."""
        if self.deepspeed is not None:
            self.deepspeed.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _fsdp2_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
