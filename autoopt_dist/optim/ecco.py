"""ECCO-DNN (Fiscko, Agarwal, Ruan, Kar, Pileggi, Sinopoli 2023, arXiv 2310.13901; reference
Aayushya-Agarwal/ecco_dnn@bf27a93, `ecco_dnn.py`). METHODS.md section 3.

Forward Euler on the circuit model Z(theta) dtheta/dt = -grad f, with a step that bounds the local
truncation error by eta. Per tensor i, with g its gradient, gp / up the previous gradient and direction,
and alpha the previous step size:

    gdot_i  = (g_i - gp_i) / alpha                     finite-difference time derivative of g
    zinv_i  = sqrt(max(1, g_i * gdot_i))               elementwise, Z^-1 >= 1
    u_i     = zinv_i * g_i
    dt_i    = min(2 eta / max_j |up_i - u_i|_j, 0.5)   LTE <= eta; inf-norm over the whole tensor
    theta_i -= dt_i * u_i ;   gp_i <- g_i ;   up_i <- u_i

Step 0 is plain gradient descent, theta -= alpha0 * g, never limited. Activation limiting (METHODS.md
3.3), for a layer feeding a ReLU, on the inputs x the layer saw since the last step:

    a = layer(x; W, b) ;   da = layer(x; -dt_W u_W, -dt_b u_b)
    delta = min(1 / |min(da / a)|, 1)                  min over every sample of the global batch and unit
    W -= max(delta dt_W, 1e-6) u_W ;   b -= max(delta dt_b, 1e-6) u_b

Collectives per step (none at step 0; T tensors, L limited layers; "FSDP" = any sharded layout):

    mode      limiting   one process   DDP   FSDP
    batched   no         0             0     1      MAX of the T inf-norms (+ max Z^-1), packed
    batched   yes        0             1     3      + SUM assembling full W, b, u_W, u_b of the limited
                                                      layers from disjoint shard fragments + MIN of da/a
    faithful  no         0             0     T      one MAX per tensor, in chain order
    faithful  yes        0             L     T + 2L  + one SUM and one MIN per limited layer

The MIN is a data-dependent MAX of -min(da/a) over the data-parallel group (`reducer.max(...,
data_dependent=True)`): da/a depends on each rank's own samples, so it is reduced under DDP too.

Decisions (METHODS.md 3), recorded because they change numbers or memory:
- EC-D1: no `prev_theta` (stored, never read, by the reference). `gp`, `up` are per-parameter state
  shaped like the rank-local tensor and updated in place; each original tensor's last applied step
  size is `state[param]["step_size"]` (one entry per original held in `param`: 1, except FSDP1 flat
  parameters), so checkpoints save and reshard like the parameters.
- EC-D2: both chains, `mode=`. "faithful" reproduces the reference's sequential chain exactly (EC-R1:
  tensor i's gdot divides by the step just taken by tensor i-1; the first tensor by the last tensor's
  step of the previous iteration; in a limited pair the bias uses the weight's unlimited dt, then the
  chain carries the bias's floored step); under sharding it needs one MAX per tensor, in order: exact,
  latency-bound. "batched" (default) divides each tensor's gradient difference by its OWN previously
  applied step (the finite difference the maths describes), so one packed MAX serves every tensor: a
  documented deviation from the reference. Measured on digits (docs/methods/ecco.md): with the mean
  loss both give the same accuracy (bit-identical weights wherever Z^-1 = 1 everywhere, as at eta >= 0.3,
  where the 0.5 cap always binds); only with the loss scaled x100, where Z^-1 > 1, do they part (eta 0.3,
  8 seeds: faithful 0.54 +- 0.12, batched 0.45 +- 0.12).
- EC-R2: constants as the reference: dt cap 0.5, limited-step floor 1e-6, threshold 1 inside Z^-1;
  2 eta / 0 = inf is capped to 0.5. Evaluated as the reference does, reciprocal(m) * 2 eta and
  (g - gp) * reciprocal(alpha), so faithful mode matches it to the last bit but for association.
- EC-R3: no `ipdb`, no `theta.data = ...` rebinding (engines' parameters must be updated in place),
  no state in `param_groups`.
- EC-R4 (deviation): entries with a == 0 are left out of min(da/a). The reference turns them into
  -inf (delta = 0: the whole layer takes the 1e-6 floor because one unit sits on the ReLU kink) or,
  for da = 0 too, NaN, which reaches the weights. When nothing constrains (no entry left), delta = 1.
  Identical to the reference whenever no pre-activation is exactly 0. The reference's other quirk is
  kept: delta < 1 also when the smallest ratio is positive and > 1.
- EC-R5: the step runs under no_grad and builds no modules, so it draws nothing from the global RNG
  (the reference builds two nn.Linear per limited layer per step). BatchNorm-type limiting uses the
  module's own eps (the reference always uses 1e-5; the same for PyTorch's default BN).
- Inputs of limited layers are recorded by forward hooks, only while grad is enabled (the forward a
  backward follows; evaluation under no_grad is ignored), and accumulate over forward passes until
  `step()` clears them: with gradient accumulation the minimum runs over every micro-batch, i.e. the
  global batch, as on N data-parallel ranks. Each recorded batch is evaluated separately, so BN-type
  limiting normalises each micro-batch with its own statistics, as the model's BatchNorm did.
- A limited layer without bias (reference: unsupported) limits its weight alone; a limited pair is
  stepped at its weight's position in the faithful chain (the reference's order, where the bias is the
  next tensor). Under FSDP the rank needs the full W, b, u_W, u_b of each limited layer: each rank
  writes its fragment into a zero full-size buffer and one packed SUM adds them, exact because the
  fragments are disjoint (x + 0 = x).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import Layout, LocalView, local_tensor
from .base import ShardedOptimizer
from .taps import stat_dtype

MODES = ("batched", "faithful")
DT_CAP = 0.5  # largest LTE step (EC-R2)
STEP_FLOOR = 1e-6  # smallest limited step, "to prevent the value to round to 0" (reference)


def ecco_direction(g: torch.Tensor, gp: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z^-1 = sqrt(max(1, g * (g - gp) / alpha)) and the direction u = Z^-1 * g, elementwise.

    `alpha` is the previous step size (0-dim). Written as the reference computes it, (g - gp) * (1 / alpha).
    """
    gdot = (g - gp) * alpha.reciprocal()
    zinv = (g * gdot).clamp_min(1).sqrt()
    return zinv, zinv * g


def lte_step(du_max: torch.Tensor, two_eta: torch.Tensor | float) -> torch.Tensor:
    """dt = min(2 eta / max|up - u|, 0.5) from reduced inf-norms; a zero norm gives inf, capped (EC-R2)."""
    return torch.clamp_max(du_max.reciprocal() * two_eta, DT_CAP)


def limit_ratio_min(
    kind: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    d_weight: torch.Tensor, d_bias: torch.Tensor | None, eps: float,
) -> torch.Tensor:
    """min(da / a) over the samples of one recorded input and every unit; +inf if nothing constrains.

    a = layer(x; W, b) and da = layer(x; dW, db): a Linear, or a train-mode BatchNorm whose affine
    parameters are (W, b), resp. (dW, db), on the batch statistics of x (the reference's fresh BN).
    Entries with a == 0 are left out (EC-R4).
    """
    if kind == "linear":
        a, da = F.linear(x, weight, bias), F.linear(x, d_weight, d_bias)
    else:
        a = F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
        da = F.batch_norm(x, None, None, d_weight, d_bias, True, 0.0, eps)
    ratio = torch.where(a != 0, da / a, torch.full_like(a, math.inf))
    if ratio.numel() == 0:  # an empty micro-batch: the identity of MIN
        return torch.full((), math.inf, dtype=a.dtype, device=a.device)
    return ratio.min()


def limit_factor(ratio_min: torch.Tensor) -> torch.Tensor:
    """delta = min(1 / |min(da / a)|, 1), elementwise over layers; 1 where nothing constrained (EC-R4)."""
    delta = torch.clamp_max(ratio_min.abs().reciprocal(), 1)
    return torch.where(torch.isposinf(ratio_min), torch.ones_like(delta), delta)


@dataclass(eq=False)
class _LimitedLayer:
    """A layer whose pre-activations must not change sign: its weight (and bias) view indices."""

    kind: str  # "linear" or "batchnorm"
    module: nn.Module
    weight: int
    bias: int | None
    eps: float
    inputs: list[torch.Tensor]  # recorded by the module's forward hook since the last step

    @property
    def tensors(self) -> tuple[int, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)


def _record_input(inputs: list[torch.Tensor], module: nn.Module, args: tuple, output) -> None:
    # Only the forward a backward follows: evaluation under no_grad must not enter the minimum.
    if torch.is_grad_enabled():
        inputs.append(args[0].detach())


def _local_part(view: LocalView, t: torch.Tensor) -> torch.Tensor:
    """The elements of `view` inside `t`, a tensor shaped like the parameter's local data."""
    return t if view.shaped else t.view(-1).narrow(0, view.local_start, view.numel)


def _fsdp1_flat_owner_views(views: list[LocalView], module: nn.Module, name: str) -> int | None:
    """Index of the view of `module.<name>` inside an FSDP1 flat parameter (use_orig_params=False),
    whose modules no longer hold their parameters. The flat parameter's handle records each original's
    owning module in the order of its views (`_param_infos`, the record layout/views.py reads `_fqns`
    from); this lookup belongs in the layout and should move there."""
    flats = {id(v.param): v.param for v in views if hasattr(v.param, "_param_infos")}
    for flat in flats.values():
        indices = [i for i, v in enumerate(views) if v.param is flat]
        assert len(indices) == len(flat._param_infos), "FSDP1 flat views out of step with the handle"
        for index, info in zip(indices, flat._param_infos):
            if info.module is module and info.param_name == name:
                return index
    return None


class ECCO(ShardedOptimizer):
    """ECCO-DNN: forward Euler with a local-truncation-error step, optional activation limiting.

    Args:
        params: the tensors (`model.named_parameters()` preferred), or param-group dicts with their own
            `eta` / `alpha0`.
        eta: bound on the local truncation error per step, the method's one hyperparameter (> 0).
        alpha0: step size of the first step, plain gradient descent (> 0).
        mode: "batched" (default: each tensor's finite difference uses its own previous step, one
            packed MAX per step) or "faithful" (the reference's chain across tensors, one MAX per tensor).
        limit: layers whose pre-activations feed a ReLU and must not change sign (METHODS.md 3.3):
            `nn.Linear` (with or without bias) or affine BatchNorm modules of the model, the same
            objects inside DDP / FSDP wrappers. Their inputs are recorded by forward hooks.
        layout: `Layout.from_model(model)` under FSDP1; optional otherwise.

    Attributes:
        last_scalars: replicated 0-dim device tensors of the last step, for a logger: `dt_min`, `dt_max`
            (LTE steps over tensors, before limiting), `cap_fraction` (fraction of tensors whose dt hit
            the 0.5 cap), `zinv_max`, and `delta_min` (smallest limiting factor) with `limit`.
        local_counts: this rank's `zinv_above_one` and `elements` (0-dim device tensors) of the last
            step, over the elements it holds: one process holds them all; under DDP every rank holds
            every element; under FSDP sum them over ranks.

    Raises:
        ValueError: eta or alpha0 not positive, an unknown mode, or a `limit` entry that is not a
            Linear / affine BatchNorm whose parameters this optimizer steps (in one param group).

    Example:
        >>> model = MLP(64, 32, 3, 10, agd_compatible=False)   # biases, plain ReLU
        >>> opt = ECCO(model.named_parameters(), limit=list(model.layers[:-1]))
        >>> nn.functional.cross_entropy(model(x), y).backward(); opt.step()   # inputs recorded by hooks
        >>> opt.last_scalars["cap_fraction"]                   # a device tensor; read it when you log
    """

    def __init__(
        self,
        params: Iterable,
        eta: float = 0.3,
        alpha0: float = 0.01,
        *,
        mode: str = "batched",
        limit: Iterable[nn.Module] | None = None,
        layout: Layout | None = None,
    ):
        if not eta > 0:
            raise ValueError(f"ECCO eta must be > 0, got {eta}")
        if not alpha0 > 0:
            raise ValueError(f"ECCO alpha0 must be > 0, got {alpha0}")
        if mode not in MODES:
            raise ValueError(f"ECCO mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._limit_modules = list(limit or [])
        # Inputs recorded by each limited module's hook, kept across view rebuilds (add_param_group).
        self._inputs: dict[int, list[torch.Tensor]] = {id(m): [] for m in self._limit_modules}
        super().__init__(params, {"eta": eta, "alpha0": alpha0}, layout)
        self.last_scalars: dict[str, torch.Tensor] = {}
        self.local_counts: dict[str, torch.Tensor] = {}
        self._hooks = [
            layer.module.register_forward_hook(functools.partial(_record_input, layer.inputs))
            for layer in self._limited
        ]

    # ---- structure, fixed at construction ---------------------------------------------------------

    def check_views(self, views: list[LocalView]) -> None:
        if self.state and any("gp" in s for s in self.state.values()):
            raise NotImplementedError("ECCO: add_param_group after the first step is not supported")
        names = [v.info.name for v in views]
        assert len(set(names)) == len(names), "ECCO expects one view per original tensor"
        self._dtype = stat_dtype(views)
        self._group_of = [g for g, gv in enumerate(self.group_views) for _ in gv]
        # Where each view's step size lives: state[param]["step_size"][slot].
        per_param: dict[int, int] = {}
        self._slot = []
        for view in views:
            self._slot.append(per_param.get(id(view.param), 0))
            per_param[id(view.param)] = self._slot[-1] + 1
        self._slots_of = per_param
        self._limit_names = getattr(self, "_limit_names", {})
        self._limited = [self._limited_layer(m, views) for m in self._limit_modules]
        if len({id(layer.module) for layer in self._limited}) != len(self._limited):
            raise ValueError("ECCO limit: a module is listed twice")
        # The faithful chain's units, per group: a plain tensor, or a limited layer at its weight's position.
        by_weight = {layer.weight: layer for layer in self._limited}
        biases = {layer.bias for layer in self._limited if layer.bias is not None}
        self._units: list[list[int | _LimitedLayer]] = [[] for _ in self.group_views]
        for i in range(len(views)):
            if i in by_weight:
                self._units[self._group_of[i]].append(by_weight[i])
            elif i not in biases:
                self._units[self._group_of[i]].append(i)

    def _limited_layer(self, module: nn.Module, views: list[LocalView]) -> _LimitedLayer:
        if isinstance(module, nn.Linear):
            kind, eps = "linear", 0.0
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            kind, eps = "batchnorm", module.eps
        else:
            raise ValueError(
                f"ECCO limit: got a {type(module).__name__}; activation limiting handles nn.Linear and affine "
                "BatchNorm layers feeding a ReLU. Remove it from limit="
            )
        index = {}
        for name in ("weight", "bias"):
            param = module._parameters.get(name)
            found = next((i for i, v in enumerate(views) if param is not None and v.param is param), None)
            if found is None:
                found = _fsdp1_flat_owner_views(views, module, name)
            key = (id(module), name)
            if found is None and key in self._limit_names:
                # Rebound views (DeepSpeed swaps the tensors for flat partitions after construction): the
                # original parameter's name, recorded when it was first found, still identifies it.
                found = next((i for i, v in enumerate(views) if v.info.name == self._limit_names[key]), None)
            if found is not None:
                self._limit_names[key] = views[found].info.name
            if found is None and name == "bias" and getattr(module, "bias", None) is None:
                index[name] = None  # a Linear without bias: its weight is limited alone
                continue
            if found is None:
                raise ValueError(
                    f"ECCO limit: the {name} of a limited {type(module).__name__} is not among the parameters "
                    "this optimizer steps. Pass the model's own modules (e.g. limit=list(model.layers[:-1])) and "
                    "build the optimizer after wrapping the model, over all of its parameters"
                )
            index[name] = found
        if index["bias"] is not None and self._group_of[index["weight"]] != self._group_of[index["bias"]]:
            raise ValueError(
                f"ECCO limit: {views[index['weight']].info.name} and {views[index['bias']].info.name} are in "
                "different param groups; a limited layer's weight and bias must share one"
            )
        return _LimitedLayer(kind, module, index["weight"], index["bias"], eps, self._inputs[id(module)])

    def remove_hooks(self) -> None:
        """Detach the input-recording hooks from the limited layers."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # ---- state ------------------------------------------------------------------------------------

    def _state(self, i: int) -> dict:
        view = self.views[i]
        state = self.state[view.param]
        if "gp" not in state:
            local = local_tensor(view.param.data)
            state["gp"], state["up"] = torch.zeros_like(local), torch.zeros_like(local)
            alpha0 = self.param_groups[self._group_of[i]]["alpha0"]
            slots = self._slots_of[id(view.param)]
            state["step_size"] = torch.full((slots,), alpha0, dtype=self._dtype, device=local.device)
            state["step"] = 0
        return state

    def _step_size(self, i: int) -> torch.Tensor:
        return self.state[self.views[i].param]["step_size"][self._slot[i]]

    def _set_step_size(self, i: int, value: torch.Tensor) -> None:
        self.state[self.views[i].param]["step_size"][self._slot[i]] = value

    # ---- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._closure_loss(closure)
        self.local_counts = {"zinv_above_one": self._zero(), "elements": self._zero()}
        if "gp" not in self.state[self.views[0].param]:
            self._first_step()
        elif self.mode == "batched":
            self._batched_step()
        else:
            self._faithful_step()
        for param in {id(v.param): v.param for v in self.views}.values():
            self.state[param]["step"] += 1
        for inputs in self._inputs.values():
            inputs.clear()
        return loss

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=self._dtype, device=self.views[0].param.device)

    def _first_step(self) -> None:
        """theta -= alpha0 * g; gp = up = g (the reference's step 0: Z^-1 = 1, never limited)."""
        for i, view in enumerate(self.views):
            state, grad = self._state(i), view.grad()
            if grad is None or view.numel == 0:
                continue
            _local_part(view, state["gp"]).copy_(grad)
            _local_part(view, state["up"]).copy_(grad)
            view.data().sub_(self.param_groups[self._group_of[i]]["alpha0"] * grad)
        alpha0 = torch.tensor([self.param_groups[self._group_of[i]]["alpha0"] for i in range(len(self.views))])
        self.last_scalars = {
            "dt_min": alpha0.min().to(self._zero()), "dt_max": alpha0.max().to(self._zero()),
            "cap_fraction": self._zero(), "zinv_max": self._zero() + 1,
        }
        if self._limited:
            self.last_scalars["delta_min"] = self._zero() + 1

    def _direction(self, i: int, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor i's u, stored in place of up (gp <- g). Returns this rank's max|up - u| and max Z^-1
        (0 and 1 for an empty shard or no gradient: identities of MAX here)."""
        view, state = self.views[i], self.state[self.views[i].param]
        grad = view.grad()
        if grad is None or view.numel == 0:
            return self._zero(), self._zero() + 1
        gp, up = _local_part(view, state["gp"]), _local_part(view, state["up"])
        g = grad.to(self._dtype)
        zinv, u = ecco_direction(g, gp.to(self._dtype), alpha)
        du_max = (up.to(self._dtype) - u).abs().max()
        self.local_counts["zinv_above_one"] += (zinv > 1).sum()
        self.local_counts["elements"] += view.numel
        gp.copy_(grad)
        up.copy_(u)
        return du_max, zinv.max()

    def _apply(self, i: int, step: torch.Tensor) -> None:
        """theta_i -= step * u_i (u_i now in `up`), and record the step as tensor i's last."""
        view = self.views[i]
        if view.grad() is not None and view.numel:
            up = _local_part(view, self.state[view.param]["up"])
            view.data().sub_(step.to(up.dtype) * up)
        self._set_step_size(i, step)

    def _two_eta(self) -> torch.Tensor:
        """2 eta of every tensor's group, (T,), on the device. Copied there only when a group's eta
        changed: a blocking host-to-device copy every step would be a host sync."""
        two_eta = tuple(2 * self.param_groups[g]["eta"] for g in self._group_of)
        if getattr(self, "_two_eta_cache", (None,))[0] != two_eta:
            self._two_eta_cache = (two_eta, torch.tensor(two_eta, dtype=self._dtype).to(self._zero().device))
        return self._two_eta_cache[1]

    def _batched_step(self) -> None:
        """Every tensor divides by its own last step: one packed MAX for all T inf-norms."""
        T = len(self.views)
        for i in range(T):
            self._state(i)
        local = [self._direction(i, self._step_size(i)) for i in range(T)]
        du_max = torch.stack([d for d, _ in local] + [torch.stack([z for _, z in local]).max()])
        du_max = self.reducer.max({"du_max": du_max})["du_max"]
        dt = lte_step(du_max[:T], self._two_eta())
        step = dt.clone()
        if self._limited:
            dt_of = {i: dt[i] for i in range(T)}
            delta = self._limit_factors(self._limited, dt_of)
            for layer, d in zip(self._limited, delta):
                for i in layer.tensors:
                    step[i] = torch.clamp_min(d * dt[i], STEP_FLOOR)
        for i in range(T):
            self._apply(i, step[i])
        self._set_scalars(dt, du_max[T], delta if self._limited else None)

    def _faithful_step(self) -> None:
        """The reference's chain: each tensor divides by the step the previous one just took."""
        dts: dict[int, torch.Tensor] = {}
        zinv_max, deltas = self._zero() + 1, []

        def lte(i: int, alpha: torch.Tensor) -> torch.Tensor:
            nonlocal zinv_max
            du_max, z = self._direction(i, alpha)
            reduced = self.reducer.max({"du_max": torch.stack([du_max, z])})["du_max"]
            zinv_max = torch.maximum(zinv_max, reduced[1])
            dts[i] = lte_step(reduced[0], 2 * self.param_groups[self._group_of[i]]["eta"])
            return dts[i]

        for units in self._units:
            if not units:
                continue
            last = units[-1] if isinstance(units[-1], int) else units[-1].tensors[-1]
            alpha = self._step_size(last).clone()  # the chain's step carried from the last tensor
            for unit in units:
                for i in (unit,) if isinstance(unit, int) else unit.tensors:
                    self._state(i)
                if isinstance(unit, int):
                    alpha = lte(unit, alpha)
                    self._apply(unit, alpha)
                    continue
                dt_w = lte(unit.weight, alpha)
                if unit.bias is not None:
                    lte(unit.bias, dt_w)  # the bias divides by the weight's unlimited dt (EC-R1)
                delta = self._limit_factors([unit], dts)[0]
                deltas.append(delta)
                for i in unit.tensors:
                    alpha = torch.clamp_min(delta * dts[i], STEP_FLOOR)
                    self._apply(i, alpha)
        order = sorted(dts)
        self._set_scalars(torch.stack([dts[i] for i in order]), zinv_max, torch.stack(deltas) if deltas else None)

    def _limit_factors(self, layers: list[_LimitedLayer], dt: dict[int, torch.Tensor]) -> torch.Tensor:
        """delta of each layer from its recorded inputs and LTE steps: (SUM under FSDP) + one MIN.

        The rank needs the full W, b, u_W, u_b: sharded views write their fragment into a zero buffer of
        the full size and one packed SUM adds the disjoint fragments, which is exact."""
        full: dict[str, torch.Tensor] = {}
        partial: dict[str, tuple[torch.Tensor, bool]] = {}
        for layer in layers:
            for i in layer.tensors:
                view = self.views[i]
                up = _local_part(view, self.state[view.param]["up"])
                for key, local in (("data", view.data()), ("u", up)):
                    if not view.sharded:
                        full[f"{i}/{key}"] = local.to(self._dtype)
                        continue
                    buf = torch.zeros(view.info.numel, dtype=self._dtype, device=local.device)
                    buf[view.orig_start : view.orig_start + view.numel] = local.reshape(-1)
                    partial[f"{i}/{key}"] = (buf, True)
        if partial:
            full.update(self.reducer.sum(partial))
        neg_min = []
        for layer in layers:
            if not layer.inputs:
                raise ValueError(
                    f"ECCO: limited layer {self.views[layer.weight].info.name} recorded no input since the last "
                    "step; run the model's forward pass with grad enabled before optimizer.step()"
                )

            def tensor(i: int | None, key: str, scale: torch.Tensor | None = None) -> torch.Tensor | None:
                if i is None:
                    return None
                t = full[f"{i}/{key}"].reshape(self.views[i].info.shape)
                return t if scale is None else -scale * t

            w, b = tensor(layer.weight, "data"), tensor(layer.bias, "data")
            dw = tensor(layer.weight, "u", dt[layer.weight])
            db = tensor(layer.bias, "u", dt[layer.bias] if layer.bias is not None else None)
            ratios = [limit_ratio_min(layer.kind, x.to(self._dtype), w, b, dw, db, layer.eps) for x in layer.inputs]
            neg_min.append(-torch.stack(ratios).min())
        ratio_min = -self.reducer.max({"neg_ratio_min": torch.stack(neg_min)}, data_dependent=True)["neg_ratio_min"]
        return limit_factor(ratio_min)

    def _set_scalars(self, dt: torch.Tensor, zinv_max: torch.Tensor, delta: torch.Tensor | None) -> None:
        self.last_scalars = {
            "dt_min": dt.min(), "dt_max": dt.max(), "cap_fraction": (dt == DT_CAP).to(dt.dtype).mean(),
            "zinv_max": zinv_max,
        }
        if delta is not None:
            self.last_scalars["delta_min"] = delta.min()
