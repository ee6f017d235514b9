"""Engines: wrap a bare model for a strategy, and read its full parameters back.

Everything that differs between engines at setup lives here; the training loop and the optimizers
stay engine-agnostic. ZeRO-1/2/3 (DeepSpeed) come with issue #4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..layout import Layout, clean_name
from .errors import ConfigError

TORCH_STRATEGIES = ("single", "ddp", "fsdp1", "fsdp1_flat", "fsdp2")
ZERO_STRATEGIES = ("zero1", "zero2", "zero3")
STRATEGIES = TORCH_STRATEGIES + ZERO_STRATEGIES
PROCESS_GROUP_STARTED = False  # set once this process joined a group; read by cli._exit_after_process_group


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits, read from whichever launcher started it (torchrun, accelerate launch,
    deepspeed and srun all set these, or SLURM's equivalents)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls) -> "DistEnv":
        env = os.environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            return cls(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        return cls(0, 1, 0)


def strategy_from_launcher() -> str | None:
    """The engine an `accelerate launch` config asked for, from the variables it exports (None if none)."""
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if config_file and os.path.isfile(config_file):
            import json

            stage = json.load(open(config_file)).get("zero_optimization", {}).get("stage", stage)
        if str(stage) not in ("1", "2", "3"):
            raise ConfigError(f"accelerate DeepSpeed config: ZeRO stage {stage!r}; autoopt_dist runs stages 1, 2, 3")
        return f"zero{stage}"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        if env.get("FSDP_VERSION", "1") == "2":
            return "fsdp2"
        return "fsdp1" if env.get("FSDP_USE_ORIG_PARAMS", "true").lower() == "true" else "fsdp1_flat"
    return None


def resolve_strategy(requested: str, env: DistEnv) -> str:
    """`auto` follows the launcher (an Accelerate config's engine, else DDP for several processes);
    an explicit strategy that contradicts the launcher's config is an error, not a silent choice."""
    launcher = strategy_from_launcher()
    if requested == "auto":
        return launcher or ("ddp" if env.world_size > 1 else "single")
    if launcher is not None and launcher != requested:
        raise ConfigError(
            f"train.strategy: {requested}, but the accelerate config asks for {launcher}; "
            f"set train.strategy=auto or {launcher}, or launch with a matching config"
        )
    return requested


def init_distributed(strategy: str) -> DistEnv:
    """Join the process group the launcher prepared; gloo on CPU, NCCL on GPU."""
    env = DistEnv.from_environ()
    if strategy != "single" and not dist.is_initialized():
        if env.world_size == 1 and "MASTER_ADDR" not in os.environ:
            # A plain `python -m autoopt_dist ...` with a sharded strategy: a group of one process.
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
        global PROCESS_GROUP_STARTED
        PROCESS_GROUP_STARTED = True
    elif strategy == "single" and env.world_size > 1:
        raise ValueError(
            f"strategy: single, but the launcher started {env.world_size} processes (WORLD_SIZE); they would train "
            "unsynchronised copies. Set strategy to ddp, fsdp1 or fsdp2, or launch one process"
        )
    return env


def shutdown() -> None:
    """Leave the process group cleanly. The barrier matters: gloo aborts a process ("terminate called
    without an active exception") when a peer tears down its connections while it is still in them."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def wrap_model(
    model: nn.Module, strategy: str, device: torch.device, shard_modules: tuple[type[nn.Module], ...] = ()
) -> nn.Module:
    """Wrap a bare, initialised model (identical on every rank) for `strategy`.

    Args:
        shard_modules: module types that become their own FSDP unit (e.g. residual blocks); the root
            takes the rest. Parameters then straddle unit and rank boundaries, as in real runs.
    """
    if strategy not in TORCH_STRATEGIES:
        raise ValueError(
            f"wrap_model: strategy {strategy!r} is not a PyTorch engine ({', '.join(TORCH_STRATEGIES)}); "
            "ZeRO stages wrap model and optimizer together: use deepspeed_initialize"
        )
    model = model.to(device)
    if strategy == "single":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if strategy in ("fsdp1", "fsdp1_flat"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        policy = ModuleWrapPolicy(set(shard_modules)) if shard_modules else None
        # device_id is required on CPU too: without it FSDP1 looks for a CUDA device.
        return FSDP(model, use_orig_params=strategy == "fsdp1", auto_wrap_policy=policy, device_id=device)
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if shard_modules and isinstance(module, shard_modules):
            fully_shard(module)
    fully_shard(model)
    return model


def deepspeed_config(strategy: str, micro_batch: int, grad_accum: int = 1, bf16: bool = False,
                     sub_group_size: int | None = None) -> dict:
    """The DeepSpeed config of a ZeRO strategy. Clipping is off: it changes the statistics (G7)."""
    zero = {"stage": int(strategy[-1])}
    if sub_group_size is not None:
        zero["sub_group_size"] = sub_group_size
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "zero_optimization": zero,
        "gradient_clipping": 0.0,
        "bf16": {"enabled": bf16},
        # DeepSpeed refuses optimizers it has not tested unless told; our equivalence tests are that test
        # (LESSONS.md R6), and bind_deepspeed below makes the optimizer exact under every stage.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def deepspeed_initialize(model: nn.Module, optimizer: torch.optim.Optimizer, config: dict):
    """`deepspeed.initialize` with our optimizer as the client optimizer, then bound to ZeRO's layout."""
    try:
        import deepspeed
    except ImportError:
        raise ImportError("ZeRO strategies need DeepSpeed: pip install 'autoopt_dist[zero]'") from None
    from ..layout.zero import bind_deepspeed
    from ..optim.base import ShardedOptimizer

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    if isinstance(optimizer, ShardedOptimizer):
        bind_deepspeed(engine, optimizer)
    return engine


def layout_of(model: nn.Module) -> Layout:
    """The layout the optimizers need, for any wrapped model."""
    return Layout.from_model(model)


def optimizer_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(clean FQN, tensor) pairs of what the optimizer should step, for any wrapped model."""
    return [(clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters keyed by clean FQN, on every rank; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if hasattr(model, "zero_optimization_stage"):  # a DeepSpeed engine
        return _deepspeed_full_state(model)
    if not dist.is_initialized():
        return {clean_name(n): p.detach().clone() for n, p in model.named_parameters()}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    names = {clean_name(n) for n, _ in model.named_parameters()} | _flat_original_names(model)
    return {clean_name(k): v.detach().clone() for k, v in state.items() if clean_name(k) in names}


def _flat_original_names(model: nn.Module) -> set[str]:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    names = set()
    for view_list in Layout.from_model(model)._engine_views.values():
        names |= {v.info.name for v in view_list}
    return names if FSDP.fsdp_modules(model) else set()


def _deepspeed_full_state(engine) -> dict[str, torch.Tensor]:
    """The fp32 master values (not the bf16 model copy), gathered: one collective per parameter."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {clean_name(n): safe_get_full_fp32_param(p).detach().clone() for n, p in engine.module.named_parameters()}
