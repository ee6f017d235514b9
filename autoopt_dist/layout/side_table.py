"""The side table: each original parameter's name, shape and role, read from full tensors.

Engines hide a parameter's structure (FSDP1 hands out 1-D views, ZeRO flat partitions, FSDP2 row blocks),
so every method reads structure from here, never from the tensor it steps (LESSONS.md R4, METHODS.md G3).
A `ParamInfo` is built from a full shape: on the bare module before wrapping, from FSDP1's own record of
the shapes it flattened, or from a DTensor's global shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

# Prefixes that wrappers insert into parameter names; stripped so every engine reports the bare module's
# fully qualified names (FQNs) and checkpoints and logs agree across engines.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def clean_name(name: str) -> str:
    """The bare module's FQN of a parameter name seen through DDP, FSDP1, checkpointing or compile."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class Role(str, Enum):
    """What a parameter is, structurally. Methods that need matrices (AGD) refuse `VECTOR`."""

    MATRIX = "matrix"  # (d_out, d_in): one tap
    CONV = "conv"  # (d_out, d_in, *kernel): kx*ky taps, each a (d_out, d_in) matrix
    VECTOR = "vector"  # biases, norm affine, scalars


@dataclass(frozen=True)
class ParamInfo:
    """Structure of one original parameter, identical on every rank.

    Attributes:
        name: FQN in the bare module.
        shape: full shape before any sharding.
        role: matrix, conv or vector.
    """

    name: str
    shape: tuple[int, ...]
    role: Role

    @classmethod
    def from_shape(cls, name: str, shape: torch.Size | tuple[int, ...]) -> "ParamInfo":
        shape = tuple(int(d) for d in shape)
        if len(shape) == 2:
            role = Role.MATRIX
        elif len(shape) >= 3:
            role = Role.CONV
        else:
            role = Role.VECTOR
        return cls(clean_name(name), shape, role)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def taps(self) -> int:
        """Kernel positions: each is an independent (d_out, d_in) matrix. 1 for a dense weight."""
        return math.prod(self.shape[2:]) if self.role is Role.CONV else 1

    @property
    def fan_out(self) -> int:
        return self.shape[0]

    @property
    def fan_in(self) -> int:
        return self.shape[1] if len(self.shape) >= 2 else 1


class SideTable(dict):
    """FQN -> ParamInfo for every parameter of a bare (unwrapped) module."""

    @classmethod
    def from_module(cls, module: nn.Module) -> "SideTable":
        table = cls()
        for name, param in module.named_parameters():
            if getattr(param, "_fsdp_flattened", False) or hasattr(param, "ds_id"):
                raise ValueError(
                    f"SideTable.from_module: parameter {name!r} is already sharded by an engine; "
                    "build the side table on the bare module, before wrapping it"
                )
            table[clean_name(name)] = ParamInfo.from_shape(name, param.shape)
        return table
