"""slimTrain's final layer: sampled limited-memory Tikhonov, regularised by sampled GCV (Newman, Chung,
Chung, Ruthotto, SISC 44(4) 2022, arXiv 2109.14002; reference elizabethnewman/slimTrain@98cfd10,
`slimtik_functions/slimtik_solve.py`). METHODS.md section 4.

The model is F(x) = W [phi(x); 1], linear in W = [weight | bias] (t outputs x f = in_features + 1).
Iteration k on a global batch of n samples, features Z_k (n x f, last column 1), targets C_k (n x t),
X = W^T (f x t), memory depth r:

    beta^2    = 1/n                     A = beta Z_k,   c = beta C_k,   R = A X_{k-1} - c
    M^T M     = beta^2 sum_{j=k-r..k} Z_j^T Z_j   raw Grams of the last r+1 batches, CURRENT beta
    B(lam)    = M^T M + (Lambda_{k-1} + lam) I
    s(lam)    = B(lam)^{-1} (A^T R + lam X_{k-1})
    sGCV(lam) = ||A s(lam) - R||^2 / (n - t trace(B(lam)^{-1} A^T A))^2
    lam_k     = first argmin of sGCV over 60 candidates, then raised so Lambda_{k-1} + lam_k >= lower
    Lambda_k  = Lambda_{k-1} + lam_k,      X_k = X_{k-1} - s(lam_k)

Candidates: 30 negative -logspace(eps, Lambda_{k-1}) then 30 positive logspace(eps, upper), from a
float32 logspace, eps = float32 eps whatever the solve's dtype. Everything comes from sums over
samples (METHODS.md 4.4): ||A s - R||^2 = s^T (A^T A) s - 2 s^T (A^T R) + R^T R and
trace(A B^-1 A^T) = trace(B^-1 A^T A). So a step is

    local statistics: Z^T Z, Z^T (Z X - C), ||Z X - C||^2, sample count   (raw, fp64)
    -> ONE AR-SUM over the data-parallel group -> scale by beta^2 = 1/n_global
    -> the same eigensolve, sGCV, clamp and update on every rank -> W bitwise identical everywhere.

Decisions (METHODS.md ids), recorded here because they change numbers:
- SL-D1: the GCV denominator uses n = the global batch size (the reference's `n_calTk`), not the row
  count of A (n t); with t outputs the trace term is t trace(B^-1 A^T A), as in the reference.
- SL-D2: upper = 1e1, the paper runs' default (the reference class defaults to 1e3).
- SL-D3: solved in float64 on every rank from the reduced statistics (no broadcast from rank 0): the
  all-reduce leaves identical sums on every rank and the solve is deterministic, so W is bitwise
  identical; the candidate grid keeps the float32 eps so lam matches the reference's. The reference
  class solves in float32.
- SL-R1 (kept): the window holds Grams of stale features from older theta_j, as the reference does.
- SL-R2 (kept, documented): while the window has fewer rows than f, the last negative candidate
  (Lambda_{k-1} + lam ~ 0) has an sGCV made of rounding noise that can win; the clamp then sets
  Lambda = lower. Nothing is changed: it is the reference's behaviour.
- G5: the head's state (W, Gram window, Lambda) stays float64 even when `.to(dtype)` is called on the
  module (only its device follows), and statistics accumulate in float64 whatever the feature dtype.

W, the window and Lambda are replicated buffers of an `nn.Module` that stays outside DDP/FSDP
(METHODS.md 4.4, "silently wrong if" 3): wrap only the feature extractor. The solve happens in the
forward pass (variable projection, 4.3): W_k first, then the output with W_k; W is a buffer, so autograd
does not differentiate through the solve and the extractor receives the VarPro reduced gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..layout import Reducer

EPS_F32 = torch.finfo(torch.float32).eps  # 1.1920929e-07: the reference's grid floor in any dtype
CANDIDATES_PER_SIDE = 30
_STATE = ("W", "gram_window", "Lambda", "num_solves")


def lambda_candidates(Lambda_prev: float, upper: float, device: torch.device | None = None) -> torch.Tensor:
    """The 60 trial increments: -logspace(eps, Lambda_{k-1}) then logspace(eps, upper), values from a
    float32 logspace as in the reference, returned in float64 (60,). The first minimum wins, so the
    order (negatives from -eps down to ~-Lambda_{k-1}, then positives upward) is part of the method."""
    lo = math.log10(EPS_F32)
    neg = torch.logspace(lo, math.log10(Lambda_prev), CANDIDATES_PER_SIDE, dtype=torch.float32, device=device)
    pos = torch.logspace(lo, math.log10(upper), CANDIDATES_PER_SIDE, dtype=torch.float32, device=device)
    return torch.cat([-neg, pos]).double()


def slimtik_local_stats(Z: torch.Tensor, C: torch.Tensor, X: torch.Tensor) -> dict[str, torch.Tensor]:
    """This rank's raw (unscaled) sums over its samples, in float64.

    Args:
        Z: (n_local, f) features with the constant-1 column; may have 0 rows (contributes zeros).
        C: (n_local, t) targets. X: (f, t) current W^T.

    Returns:
        gram Z^T Z (f, f), ztr Z^T (Z X - C) (f, t), rtr ||Z X - C||^2 (1,), count n_local (1,).
    """
    Z, C, X = Z.double(), C.double(), X.double()
    R = Z @ X - C
    return {
        "gram": Z.T @ Z,
        "ztr": Z.T @ R,
        "rtr": R.square().sum().reshape(1),
        "count": torch.full((1,), float(Z.shape[0]), dtype=torch.float64, device=Z.device),
    }


class SlimTikStep(NamedTuple):
    X: torch.Tensor  # (f, t) new W^T
    lam: torch.Tensor  # () chosen increment lambda_k, after the clamp
    Lambda: torch.Tensor  # () Lambda_k
    sgcv: torch.Tensor  # (60,) sGCV of every candidate


def slimtik_solve(
    window_gram: torch.Tensor,
    gram: torch.Tensor,
    ztr: torch.Tensor,
    rtr: torch.Tensor,
    n: float,
    X: torch.Tensor,
    Lambda_prev: float,
    lower: float,
    upper: float,
) -> SlimTikStep:
    """One slimTrain W update from reduced raw statistics; arithmetic only, so identical on every rank.

    Args:
        window_gram: (f, f) sum of the raw Grams of the last r+1 batches, this one included.
        gram, ztr, rtr: this batch's reduced raw sums (see `slimtik_local_stats`).
        n: global batch size. X: (f, t) W_{k-1}^T in float64. Lambda_prev: Lambda_{k-1}.
        lower: floor of Lambda_k. upper: largest positive candidate.
    """
    t = X.shape[1]
    beta2 = 1.0 / n
    H, g, rr = beta2 * gram, beta2 * ztr, beta2 * rtr.reshape(())  # A^T A, A^T R, R^T R
    sigma, V = torch.linalg.eigh(beta2 * window_gram)  # M^T M = V diag(sigma) V^T
    lam = lambda_candidates(Lambda_prev, upper, X.device)
    D = 1.0 / (sigma + Lambda_prev + lam[:, None])  # (60, f): B(lam)^-1 in the eigenbasis
    Hh, gh, xh = V.T @ H @ V, V.T @ g, V.T @ X
    # s = V D p with p = gh + lam xh, so ||A s||^2 = d^T (Hh o p p^T) d, p p^T = G0 + lam G1 + lam^2 G2
    # summed over the t outputs: O(f^2 t) once, then O(f^2) per candidate, never a (60, f, t) tensor.
    G1 = gh @ xh.T
    quad = sum(lam**m * ((D @ (Hh * Gm)) * D).sum(1) for m, Gm in enumerate((gh @ gh.T, G1 + G1.T, xh @ xh.T)))
    cross = D @ (gh * gh).sum(1) + lam * (D @ (gh * xh).sum(1))  # s^T A^T R
    residual = quad - 2 * cross + rr  # ||A s - R||^2 = ||A w(lam) - c||^2
    sgcv = residual / (n - t * (D @ Hh.diagonal())) ** 2
    best = lam[torch.argmin(sgcv)]  # torch.argmin returns the first minimum
    # The reference's clamp, in its arithmetic: lam = lower - Lambda_prev, Lambda = Lambda_prev + lam.
    best = torch.where(Lambda_prev + best < lower, torch.full_like(best, lower - Lambda_prev), best)
    Lambda = Lambda_prev + best
    step = V @ ((V.T @ (g + best * X)) / (sigma + Lambda)[:, None])
    return SlimTikStep(X - step, best, Lambda, sgcv)


class SlimTikHead(nn.Module):
    """A final affine layer fitted by slimTrain's sampled Tikhonov solve: no learning rate for W.

    Put it on top of any feature extractor; step the extractor with any optimizer. In training mode a
    call with `targets` first solves W on this step's (global) batch, then applies the new W, so the loss
    gradient reaching the extractor is the variable-projection gradient (W is a buffer: no gradient
    flows into the solve). The fit is least squares: use MSE loss, with one-hot targets (optionally
    scaled) for classification.

    Args:
        in_features: feature size f - 1 (the constant-1 bias column is added here).
        out_features: outputs t.
        memory_depth: r; the Gram window holds the last r+1 batches (5 in the paper's runs).
        lower: floor of Lambda after each step (1e-7, the reference's).
        upper: largest positive candidate increment (1e1, SL-D2).
        sum_lambda: Lambda_0 (alpha2 in the paper's runs; 1e-10 by default).
        data_group: process group the batch statistics are summed over: "world" (default: the default
            group when torch.distributed is initialised with more than one process, looked up at each
            solve), None (no reduction: each process solves on its own batch), or a ProcessGroup (the
            data-parallel group, e.g. under HSDP or with tensor parallelism).

    Buffers (in `state_dict()`, replicated, float64): `W` (t, f) = [weight | bias], `gram_window`
    (r+1, f, f) raw Grams, `Lambda` (), `num_solves` (). The initial W is drawn like `nn.Linear`'s.

    Attributes:
        last_scalars: {"Lambda", "lambda", "sgcv"} as 0-dim device tensors from the last solve (the
            smallest sGCV), for a logger; identical on every rank.

    Raises:
        ValueError / TypeError: bad sizes, bounds or data group (see the message for the fix).

    Example:
        >>> head = SlimTikHead(64, 10)
        >>> opt = torch.optim.Adam(extractor.parameters(), lr=1e-3)   # DDP/FSDP wrap the extractor only
        >>> onehot = F.one_hot(y, 10).float()
        >>> loss = F.mse_loss(head(extractor(x), targets=onehot), onehot)  # solves W, then predicts
        >>> opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        memory_depth: int = 5,
        *,
        lower: float = 1e-7,
        upper: float = 1e1,
        sum_lambda: float = 1e-10,
        data_group: str | dist.ProcessGroup | None = "world",
    ):
        super().__init__()
        for name, value, least in (("in_features", in_features, 1), ("out_features", out_features, 1),
                                   ("memory_depth", memory_depth, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"SlimTikHead: {name} must be an integer >= {least}, got {value!r}")
        for name, value in (("lower", lower), ("upper", upper), ("sum_lambda", sum_lambda)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"SlimTikHead: {name} must be a finite number > 0, got {value!r} (paper runs: lower=1e-7, "
                    "upper=1e1, sum_lambda=1e-10); the candidate grid is logarithmic, so 0 has no place in it"
                )
        self.in_features, self.out_features, self.memory_depth = in_features, out_features, memory_depth
        self.lower, self.upper = float(lower), float(upper)
        self.data_group = data_group
        f = in_features + 1
        init = nn.Linear(in_features, out_features)  # the same draw as a Linear head, bias included
        W = torch.cat([init.weight.detach(), init.bias.detach()[:, None]], dim=1)
        self.register_buffer("W", W.double())
        self.register_buffer("gram_window", torch.zeros(memory_depth + 1, f, f, dtype=torch.float64))
        self.register_buffer("Lambda", torch.tensor(float(sum_lambda), dtype=torch.float64))
        self.register_buffer("num_solves", torch.tensor(0, dtype=torch.int64))
        self.last_scalars: dict[str, torch.Tensor] = {}

    @property
    def data_group(self):
        return self._data_group

    @data_group.setter
    def data_group(self, group) -> None:
        if not (group is None or group == "world" or isinstance(group, dist.ProcessGroup)):
            raise ValueError(f"SlimTikHead: data_group must be 'world', None or a ProcessGroup, got {group!r}")
        self._data_group = group
        self._reducer = None

    @property
    def reducer(self) -> Reducer:
        """Sums batch statistics over the data-parallel group: one all-reduce per solve, none alone."""
        if self._data_group == "world":
            world = dist.group.WORLD if dist.is_initialized() and dist.get_world_size() > 1 else None
            if self._reducer is None or self._reducer.data_group is not world:
                self._reducer = Reducer(None, world)
        elif self._reducer is None:
            self._reducer = Reducer(None, self._data_group)
        return self._reducer

    @property
    def weight(self) -> torch.Tensor:
        return self.W[:, :-1]

    @property
    def bias(self) -> torch.Tensor:
        return self.W[:, -1]

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """features (N, in_features) -> (N, out_features) with the current W, in the features' dtype.

        In training mode with `targets` (N, out_features), W is solved on this batch first (one AR-SUM
        over the data group). In eval mode `targets` are ignored, so one call serves both loops."""
        if targets is not None and self.training:
            self.solve_(features, targets)
        W = self.W.to(features.dtype)
        return F.linear(features, W[:, :-1], W[:, -1])

    @torch.no_grad()
    def solve_(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Update W, Lambda and the Gram window from this rank's share of the batch, summed over the
        data group by one all-reduce. Every rank of the group must call it once per step, even with 0
        local samples (G4)."""
        stats = self.local_stats(features, targets)
        self.solve_from_stats_(self.reducer.sum({k: (v, True) for k, v in stats.items()}, data_dependent=True))

    @torch.no_grad()
    def local_stats(self, features: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw float64 sums over these samples at the current W (`slimtik_local_stats`). Sums of them over
        micro-batches and ranks are the global batch's: e.g. add the micro-batches of an accumulated
        step, reduce with `self.reducer.sum(..., data_dependent=True)`, then `solve_from_stats_`."""
        Z, C = self._design(features, targets)
        return slimtik_local_stats(Z, C, self.W.T)

    @torch.no_grad()
    def solve_from_stats_(self, stats: dict[str, torch.Tensor]) -> None:
        """The update from statistics already summed over every sample of the global batch (see
        `local_stats`); identical inputs give bitwise identical W on every rank."""
        # The one host sync of a step: the grid needs Lambda_{k-1} as a number, the count to be checked.
        Lambda_prev, n, k = torch.stack([self.Lambda, stats["count"].reshape(()), self.num_solves.double()]).tolist()
        if n <= 0:
            raise ValueError("SlimTikHead.solve_: the global batch is empty (0 samples over every rank)")
        self.gram_window[int(k) % (self.memory_depth + 1)] = stats["gram"]
        out = slimtik_solve(self.gram_window.sum(0), stats["gram"], stats["ztr"], stats["rtr"], n,
                            self.W.T, Lambda_prev, self.lower, self.upper)
        self.W.copy_(out.X.T)
        self.Lambda.copy_(out.Lambda)
        self.num_solves += 1
        self.last_scalars = {"Lambda": out.Lambda, "lambda": out.lam, "sgcv": out.sgcv.min()}

    def _design(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Z = [features, 1] and C in float64, after checking shapes."""
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"SlimTikHead: features must be (N, {self.in_features}), got {list(features.shape)}; flatten "
                "the extractor's output or set in_features"
            )
        if not targets.is_floating_point():
            raise TypeError(
                f"SlimTikHead: targets must be floating point (N, {self.out_features}), got {targets.dtype}; for "
                f"classes pass F.one_hot(y, {self.out_features}).to(features.dtype) and train with MSE loss"
            )
        if targets.dim() == 1 and self.out_features == 1:
            targets = targets[:, None]
        if targets.shape != (features.shape[0], self.out_features):
            raise ValueError(
                f"SlimTikHead: targets must be (N, {self.out_features}) with N = {features.shape[0]} as in "
                f"features, got {list(targets.shape)}"
            )
        ones = torch.ones(features.shape[0], 1, dtype=torch.float64, device=features.device)
        return torch.cat([features.double(), ones], dim=1), targets.double()

    def _apply(self, fn, recurse: bool = True):
        # Keep the solve's state float64 (G5, SL-D3): `.to(torch.float32)` / `.half()` move it, never round it.
        before = {name: self._buffers[name] for name in _STATE}
        super()._apply(fn, recurse)
        for name, old in before.items():
            if self._buffers[name].dtype != old.dtype:
                self._buffers[name] = old.to(self._buffers[name].device)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"memory_depth={self.memory_depth}, lower={self.lower}, upper={self.upper}")
