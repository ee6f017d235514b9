"""Hypergradient towers (Chandra, Xie, Ragan-Kelley, Meijer, NeurIPS 2022, arXiv 1909.13371; reference
kach/gradient-descent-the-ultimate-optimizer@b3b047e, `gdtuo.py`). METHODS.md section 2.

Level 1 steps the weights w with hyperparameters theta (SGD: lr, momentum; Adam: lr and the raw beta
logits x1, x2). It stores u_theta = dw_{t+1}/dtheta_t (shaped like the local view), so at step t+1

    H_theta = dL(w_{t+1})/dtheta_t = <grad L(w_{t+1}), u_theta>   summed over all parameters

    SGD        u_lr = -g_t
    SGD + mu   b_t = mu b_{t-1} + g_t (b_0 = 0, so b_1 = g_1)      u_lr = -b_t    u_mu = -lr b_{t-1}
    Adam       beta = (tanh x + 1)/2, m_0 = 0, v_0 = eps, d_t = m^/(sqrt(v^) + eps)   u_lr = -d_t
               u_x1 = -lr 2 beta1 (1 - beta1) dd/dbeta1,   dd/dbeta1 = dm^/dbeta1 / (sqrt(v^) + eps)
               dm^/dbeta1 = [(m_{t-1} - g)(1 - beta1^t) + m_t t beta1^(t-1)] / (1 - beta1^t)^2
               u_x2 = -lr 2 beta2 (1 - beta2) dd/dbeta2,   dd/dbeta2 = -m^ dv^/dbeta2 / (2 sqrt(v^) (sqrt(v^) + eps)^2)
               dv^/dbeta2 = [(v_{t-1} - g^2)(1 - beta2^t) + v_t t beta2^(t-1)] / (1 - beta2^t)^2

Level k+1 >= 2 is SGD with step size kappa_k on ALL stored values of level k (METHODS.md 2.6):
theta_t = theta_{t-1} - kappa_{1,t} H_{theta,t}; kappa_{k,t} = kappa_{k,t-1} - kappa_{k+1,t} E_{k,t}. Since
theta_t depends on kappa_{1,t} only through that one step (everything older is detached, as in the
reference), its hypergradient is a product of scalars the step already has:

    E_{1,t+1} = dL_{t+1}/dkappa_{1,t} = -<H_{t+1}, H_t>     (sum over the level-1 values)
    E_{k,t+1} = -E_{k-1,t+1} E_{k-1,t}                      (k >= 2)

so towers of any height add no communication. A step is one packed AR-SUM of the level-1 dot products
(none when nothing is sharded: DDP gradients are already averaged), one host sync to read them, then a
top-down pass on Python floats and a local elementwise update. Hypergradients are products of two
gradients, so they need the unscaled gradient of the mean loss over the global batch (METHODS.md G1; a
loss scale s scales them by s^2) and no gradient clipping (G7).

Decisions (METHODS.md IDs), recorded here because they change numbers:
- GD-D1: closed-form hypergradients, not autograd through the update: under DDP/FSDP autograd gives no or
  rank-local hyper-gradients (METHODS.md 2.4). u_theta is stored factored as (buffer, scalar):
  SGD keeps g_t; SGD+mu keeps b_t (the momentum buffer itself) and b_{t-1}; Adam keeps d, dd/dbeta1,
  dd/dbeta2 beside m, v. The scalars (-1, -lr, -lr 2 beta (1 - beta)) are those of the update that wrote
  the buffers, kept in the param group as `direction_scales`.
- GD-R1: order per step is top-down: the top level steps the level below, ..., level 2 steps the level-1
  values with their hypergradients, then level 1 steps the weights with the NEW values. Hyper-levels
  step at step 1 too, with zero hypergradients (no u yet), exactly like the reference.
- GD-R2 / GD-D2: the reference's conventions are kept, for equivalence: lr is unconstrained (a tower may
  drive it negative: no positivity reparameterisation); momentum is applied only if the initial momentum is
  non-zero (it is then learned; if zero it stays zero); Adam's bias correction uses the CURRENT beta to the
  power t, t counted per param group (one group = the reference's per-optimizer count); v starts at eps.
Also decided here (no METHODS.md ID):
- Learned values are Python floats in `param_groups` (`lr`, `momentum` / `betas`, `hyper_lrs`) after each
  step, so schedulers, loggers and checkpoints see them. That costs one host sync per step (reading the
  reduced dot products); the tower arithmetic then runs in float64 on the host, identically on every rank.
  A scheduler that writes `lr` changes the learned value; written `betas` re-seed the logits.
- Each param group is its own tower (its own lr, ..., hyper_lrs); all groups share the one reduction. With
  one group this is the reference.
- A parameter without a gradient is stepped as if its gradient were zero: the reference's zero_grad fills
  zeros, and every rank then keeps the same state whatever its shard.
- The reference's levels >= 2 also store a momentum that is never used (initial 0): its hypergradient is
  always 0, so it is not stored.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from ..layout import Layout, LocalView
from .base import ShardedOptimizer
from .taps import stat_dtype


def tower_step(
    values: Sequence[float], hypergrads: Sequence[float], last: Sequence[float], hyper_lrs: Sequence[float]
) -> tuple[list[float], list[float], list[float]]:
    """One top-down pass of the levels >= 2 (GD-R1), on reduced scalars only: identical on every rank.

    Args:
        values: the level-1 values theta (e.g. lr, momentum).
        hypergrads: H_{theta,t} = dL_t/dtheta_{t-1}, one per value.
        last: what this function returned as `record` at the previous step (empty at step 1: zeros).
        hyper_lrs: kappa_1 (level 2's step size), ..., kappa_n (the top level's, a constant).

    Returns:
        (new values, new hyper_lrs, record): record = H_t followed by E_{1..n-1,t}, the hypergradients
        of the learned step sizes.
    """
    H = list(hypergrads)
    n = len(hyper_lrs)
    if n == 0:
        return list(values), [], []
    last = list(last) or [0.0] * (len(H) + n - 1)
    H_last, E_last = last[: len(H)], last[len(H) :]
    E, now, before = [], H, H_last
    for k in range(n - 1):  # E_k: hypergradient of kappa_k
        E.append(-sum(a * b for a, b in zip(now, before)))
        now, before = [E[k]], [E_last[k]]
    kappa = list(hyper_lrs)
    for k in reversed(range(n - 1)):  # top-down: kappa_k steps with the kappa_{k+1} just updated
        kappa[k] -= kappa[k + 1] * E[k]
    new_values = [v - kappa[0] * h for v, h in zip(values, H)]
    return new_values, kappa, H + E


def _dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.dot(a.reshape(-1).to(dtype), b.reshape(-1).to(dtype))


class _HypergradientTower(ShardedOptimizer):
    """What HyperSGD and HyperAdam share: one packed reduction, the tower, the bookkeeping.

    A subclass names its level-1 values (`_values`/`_set_values`), the state buffers behind its
    u_theta (`_directions`), and writes the level-1 update (`_update_`), returning the scalars of u.
    """

    def __init__(self, params: Iterable, defaults: dict, layout: Layout | None):
        super().__init__(params, defaults, layout)
        self.last_scalars: dict[str, torch.Tensor] = {}

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        hyper_lrs = group["hyper_lrs"]
        if isinstance(hyper_lrs, (int, float)) or not all(
            isinstance(k, (int, float)) and math.isfinite(k) and k >= 0 for k in hyper_lrs
        ):
            raise ValueError(
                f"hyper_lrs must be a sequence of finite step sizes >= 0, one per level above level 1 "
                f"(e.g. (1e-5,) or (1e-5, 1e-6)); got {hyper_lrs!r}. Use hyper_lrs=() for plain, non-learned steps"
            )
        if not (isinstance(group["lr"], (int, float)) and math.isfinite(group["lr"]) and group["lr"] >= 0):
            raise ValueError(f"lr must be a finite float >= 0, got {group['lr']!r}")
        group["hyper_lrs"] = tuple(float(k) for k in hyper_lrs)
        group["lr"] = float(group["lr"])
        group.setdefault("step", 0)
        group.setdefault("hypergrads", ())  # H and E of the last step: levels >= 2 need them next step
        group.setdefault("direction_scales", ())  # u_theta = scale * state buffer, from the last update
        self._init_group(group)

    def check_views(self, views: list[LocalView]) -> None:
        self._dtype = stat_dtype(views)

    def _buffer(self, view: LocalView, key: str, fill: float = 0.0) -> torch.Tensor:
        """A state tensor laid out like the parameter (a DTensor under FSDP2, the flat shard under FSDP1),
        created on first use; returns this view's elements of it."""
        state = self.state[view.param]
        if key not in state:
            state[key] = torch.full_like(view.param.detach(), fill, memory_format=torch.preserve_format)
        return view.select(state[key])

    def _reduced_hypergradients(self) -> list[list[float]]:
        """<grad, buffer> per group and direction, summed over all parameters and ranks: one AR-SUM.

        Sharded views' dot products are partial sums; replicated views' are added once after the
        reduction (reducer masks). Every rank calls the reducer every step, step 1 included."""
        keys = [self._directions(g) if g["hyper_lrs"] else () for g in self.param_groups]
        total = sum(len(k) for k in keys)
        if total == 0:
            return [[] for _ in keys]
        device = self.views[0].param.device
        index, dots, offset = [], [], 0
        for group_keys, views in zip(keys, self.group_views):
            for view in views:
                grad, state = view.grad(), self.state.get(view.param, {})
                for i, key in enumerate(group_keys):
                    if grad is not None and key in state and view.numel:
                        index.append(offset + i + (0 if view.sharded else total))
                        dots.append(_dot(grad, view.select(state[key]), self._dtype))
            offset += len(group_keys)
        local = torch.zeros(2 * total, dtype=self._dtype, device=device)
        if dots:
            local.index_add_(0, torch.tensor(index, device=device), torch.stack(dots))
        partial = torch.arange(2 * total, device=device) < total
        reduced = self.reducer.sum({"hypergradients": (local, partial)})["hypergradients"]
        both = reduced.tolist()  # the one host sync of a step: float64 scalars from here on
        h = [a + b for a, b in zip(both[:total], both[total:])]
        out, offset = [], 0
        for group_keys in keys:
            out.append(h[offset : offset + len(group_keys)])
            offset += len(group_keys)
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """Hypergradients (one AR-SUM, one host sync), then per group the tower top-down, then the weights
        with the new values, storing u for the next step (GD-R1)."""
        loss = self._closure_loss(closure)
        raw = self._reduced_hypergradients()
        for group, views, dots in zip(self.param_groups, self.group_views, raw):
            self._sync_group(group)
            group["step"] += 1
            if group["hyper_lrs"]:
                scales = group["direction_scales"] or [0.0] * len(dots)  # step 1: no u yet, H = 0
                H = [s * d for s, d in zip(scales, dots)]
                values, kappa, record = tower_step(self._values(group), H, group["hypergrads"], group["hyper_lrs"])
                self._set_values(group, values)
                group["hyper_lrs"], group["hypergrads"] = tuple(kappa), tuple(record)
            group["direction_scales"] = tuple(self._update_(group, views, learning=bool(group["hyper_lrs"])))
        self.last_scalars = self._scalars()
        return loss

    def _scalars(self) -> dict[str, torch.Tensor]:
        out = {}
        for g, group in enumerate(self.param_groups):
            prefix = f"group{g}/" if g else ""
            named = self._named_values(group) + [(f"hyper_lr_{k + 1}", v) for k, v in enumerate(group["hyper_lrs"])]
            out |= {prefix + name: torch.tensor(v, dtype=torch.float64) for name, v in named}
        return out

    def _sync_group(self, group: dict) -> None:
        """Adopt values a user or scheduler wrote into the group since the last step (default: none)."""

    def _grad(self, view: LocalView) -> torch.Tensor:
        grad = view.grad()
        return torch.zeros_like(view.data()) if grad is None else grad


class HyperSGD(_HypergradientTower):
    """SGD (with optional momentum) whose lr and momentum are learned by a tower of SGD levels.

    Args:
        params: the parameters (`model.named_parameters()` preferred); biases and norm affine included.
        lr: initial level-1 step size (learned; may become negative, as in the reference).
        momentum: initial momentum mu. 0 means no momentum buffer at all (and mu stays 0); otherwise
            b_t = mu b_{t-1} + g_t (b_1 = g_1, no dampening) and mu is learned.
        hyper_lrs: step sizes of the levels above level 1: (k1,) learns lr and mu by SGD with step k1;
            (k1, k2) also learns k1 by SGD with step k2; and so on. () is plain SGD (no learning, no
            collective, no host sync). Default (1e-5,), the step of the reference README's tower.
        layout: `Layout.from_model(model)` under FSDP1; optional otherwise.

    After each step `param_groups[i]` holds the learned `lr`, `momentum` and `hyper_lrs` as Python floats
    (one host sync per step, reading the reduced dot products only), and `last_scalars` holds them as
    0-dim float64 tensors: `lr`, `momentum`, `hyper_lr_1`, ... (`group{i}/...` for groups after the first).
    One step issues one all-reduce of 1 (2 with momentum) numbers when parameters are sharded; none under DDP.

    Example:
        >>> opt = HyperSGD(model.named_parameters(), lr=0.01, momentum=0.9, hyper_lrs=(1e-4, 1e-6))
        >>> loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        >>> opt.param_groups[0]["lr"]             # the learned step size, a float
    """

    def __init__(
        self, params: Iterable, lr: float, momentum: float = 0.0, hyper_lrs: Sequence[float] = (1e-5,),
        *, layout: Layout | None = None,
    ):
        super().__init__(params, {"lr": lr, "momentum": momentum, "hyper_lrs": hyper_lrs}, layout)

    def _init_group(self, group: dict) -> None:
        mu = group["momentum"]
        if not (isinstance(mu, (int, float)) and math.isfinite(mu) and 0 <= mu < 1):
            raise ValueError(f"momentum must be a float in [0, 1), got {mu!r}")
        group["momentum"] = float(mu)
        group.setdefault("momentum_active", mu != 0)  # GD-R2: decided once, by the initial value

    def _values(self, group):
        return [group["lr"], group["momentum"]] if group["momentum_active"] else [group["lr"]]

    def _set_values(self, group, values):
        group["lr"] = values[0]
        if group["momentum_active"]:
            group["momentum"] = values[1]

    def _named_values(self, group):
        return [("lr", group["lr"]), ("momentum", group["momentum"])]

    def _directions(self, group):
        return ("momentum_buffer", "previous_momentum_buffer") if group["momentum_active"] else ("previous_grad",)

    def _update_(self, group, views, learning):
        lr, mu = group["lr"], group["momentum"]
        for view in views:
            grad, weight = self._grad(view), view.data()
            if not group["momentum_active"]:
                if learning:
                    self._buffer(view, "previous_grad").copy_(grad)
                weight.add_(grad, alpha=-lr)
                continue
            buf = self._buffer(view, "momentum_buffer")  # b_0 = 0, so b_1 = g_1 as in the reference
            if learning:
                self._buffer(view, "previous_momentum_buffer").copy_(buf)
            buf.mul_(mu).add_(grad)
            weight.add_(buf, alpha=-lr)
        return [-1.0, -lr] if group["momentum_active"] else [-1.0]


class HyperAdam(_HypergradientTower):
    """Adam whose lr, beta1 and beta2 are learned by a tower of SGD levels.

    The betas are learned through raw logits x (beta = (tanh x + 1)/2), which is what the level above
    steps, as in the reference; v starts at eps and bias correction uses the current beta^t.

    Args:
        params: the parameters (`model.named_parameters()` preferred); biases and norm affine included.
        lr: initial level-1 step size (learned, unconstrained).
        betas: initial (beta1, beta2), each in (0, 1) (learned).
        eps: added to sqrt(v^), and v's initial value (not learned).
        hyper_lrs: step sizes of the levels above level 1, as for `HyperSGD`; () is plain Adam.
            Default (1e-5,): the reference README's `Adam(optimizer=SGD(1e-5))`.
        layout: `Layout.from_model(model)` under FSDP1; optional otherwise.

    After each step `param_groups[i]` holds the learned `lr`, `betas` and `hyper_lrs` as Python floats
    (one host sync per step; the logits themselves are in `beta_logits`), and `last_scalars` holds `lr`,
    `beta1`, `beta2`, `hyper_lr_1`, ... as 0-dim float64 tensors. One all-reduce of 3 numbers per step
    when parameters are sharded; none under DDP.

    Example:
        >>> opt = HyperAdam(model.named_parameters(), lr=1e-3, hyper_lrs=(1e-5,))   # the gdtuo README's Adam/SGD
        >>> loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        >>> opt.param_groups[0]["betas"]
    """

    def __init__(
        self, params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        hyper_lrs: Sequence[float] = (1e-5,), *, layout: Layout | None = None,
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "hyper_lrs": hyper_lrs}, layout)

    def _init_group(self, group: dict) -> None:
        betas = group["betas"]
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 < b < 1 for b in betas):
            raise ValueError(
                f"betas must be two floats in (0, 1) (the logits atanh(2 beta - 1) must be finite), got {betas!r}"
            )
        if not (isinstance(group["eps"], (int, float)) and group["eps"] > 0):
            raise ValueError(f"eps must be a float > 0, got {group['eps']!r}")
        group["betas"] = tuple(float(b) for b in betas)
        group.setdefault("beta_logits", tuple(_logit(b) for b in group["betas"]))

    def _sync_group(self, group):
        if tuple(group["betas"]) != tuple(_beta(x) for x in group["beta_logits"]):  # written since the last step
            group["beta_logits"] = tuple(_logit(b) for b in group["betas"])

    def _values(self, group):
        return [group["lr"], *group["beta_logits"]]

    def _set_values(self, group, values):
        group["lr"], group["beta_logits"] = values[0], tuple(values[1:])

    def _named_values(self, group):
        return [("lr", group["lr"]), ("beta1", group["betas"][0]), ("beta2", group["betas"][1])]

    def _directions(self, group):
        return ("direction", "direction_dbeta1", "direction_dbeta2")

    def _update_(self, group, views, learning):
        lr, eps, t = group["lr"], group["eps"], group["step"]
        b1, b2 = (_beta(x) for x in group["beta_logits"])
        group["betas"] = (b1, b2)
        c1, c2 = 1 - b1**t, 1 - b2**t
        for view in views:
            g, weight = self._grad(view), view.data()
            m, v = self._buffer(view, "exp_avg"), self._buffer(view, "exp_avg_sq", fill=eps)
            if learning:
                dm, dv = m - g, torch.addcmul(v, g, g, value=-1)  # m_{t-1} - g, v_{t-1} - g^2
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            s = (v / c2).sqrt_()  # sqrt(v^)
            denom = s + eps
            d = self._buffer(view, "direction") if learning else torch.empty_like(m)
            torch.div(m, c1, out=d).div_(denom)
            weight.add_(d, alpha=-lr)
            if not learning:
                continue
            # dd/dbeta1 = dm^/dbeta1 / (sqrt(v^) + eps)
            d1 = torch.mul(dm, c1, out=self._buffer(view, "direction_dbeta1"))
            d1.add_(m, alpha=t * b1 ** (t - 1)).div_(c1 * c1).div_(denom)
            # dd/dbeta2 = -m^ dv^/dbeta2 / (2 sqrt(v^) (sqrt(v^) + eps)^2) = -d dv^/dbeta2 / (2 sqrt(v^) denom);
            # the clamp only acts where v has underflowed to 0 (a parameter whose gradient was always 0),
            # where d is 0 too: 0 instead of the reference's 0/0.
            d2 = torch.mul(dv, c2, out=self._buffer(view, "direction_dbeta2"))
            d2.add_(v, alpha=t * b2 ** (t - 1)).div_(c2 * c2).mul_(d)
            d2.div_(s.mul_(denom).clamp_min_(torch.finfo(s.dtype).tiny)).mul_(-0.5)
        return [-1.0, -lr * 2 * b1 * (1 - b1), -lr * 2 * b2 * (1 - b2)]


def _beta(x: float) -> float:
    return (math.tanh(x) + 1) / 2


def _logit(beta: float) -> float:
    return math.atanh(2 * beta - 1)
