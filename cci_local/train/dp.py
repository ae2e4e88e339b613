"""Differentially private LoRA training with Opacus (docs/method.md#mitigations).

DP-SGD (Abadi et al., arXiv 1607.00133) on the LoRA parameters only: each step
takes a Poisson sample of the examples (each in with probability q = batch /
n), clips every example's gradient to ``max_grad_norm``, adds Gaussian noise of
``sigma * max_grad_norm`` to their sum and divides by the expected batch.  The
noise multiplier sigma is the smallest that keeps the whole run (its steps at
rate q) within (epsilon, delta) by Opacus' RDP accountant.  The unit protected
is one training pair (one post): an author with k posts in the data has about
k times the epsilon (group privacy).

The pieces PrivacyEngine.make_private() assembles are used directly
(GradSampleModule, DPOptimizer, RDPAccountant): the batches come from this
module's seeded Poisson sampler, not from a DataLoader, so a killed run resumes
with the very batches (and noise: torch's random state is checkpointed) of an
uninterrupted one.  The model is on its device before the LoRA layers are added
(opacus#820: a model moved after get_peft_model() trained "normally" into an
unusable adapter).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

# Opacus' RDP orders and larger ones: a short run at a large epsilon is bounded best
# at an order above Opacus' largest (63), which it warns about.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512]


class DPError(ValueError):
    """Differentially private training cannot run as asked."""


@dataclass
class DPPlan:
    epsilon: float  # the budget asked for
    delta: float
    sample_rate: float  # q: each example's chance to be in a step's batch
    steps: int
    noise_multiplier: float  # sigma
    max_grad_norm: float  # C: each example's gradient clipped to this norm

    def as_dict(self) -> dict:
        return asdict(self)


def plan(epsilon: float, delta: float | None, n: int, batch_size: int, steps: int,
         max_grad_norm: float) -> DPPlan:
    """The noise multiplier for ``steps`` steps at rate batch/n within (epsilon, delta);
    delta None: 1/(10 n), well below 1/n (the chance of publishing one whole record)."""
    from opacus.accountants.utils import get_noise_multiplier

    if epsilon <= 0:
        raise DPError(f"--dp-epsilon must be positive, not {epsilon:g}")
    if n < 2:
        raise DPError("differentially private training needs at least 2 examples")
    delta = 1 / (10 * n) if delta is None else delta
    if not 0 < delta < 1:
        raise DPError(f"--dp-delta must be in (0, 1), not {delta:g}")
    q = min(1.0, batch_size / n)
    sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q,
                                 steps=steps, accountant="rdp", alphas=ALPHAS)
    return DPPlan(float(epsilon), float(delta), q, steps, float(sigma), float(max_grad_norm))


def spent(dp: DPPlan, steps: int) -> float:
    """The epsilon that ``steps`` steps of ``dp`` have spent (RDP accountant)."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(dp.noise_multiplier, dp.sample_rate, steps)]
    return float(accountant.get_epsilon(dp.delta, alphas=ALPHAS))


def poisson_batch(n: int, q: float, seed: int, step: int) -> list[int]:
    """The examples in step ``step``'s batch: each in with probability q, seeded by
    (seed, step), so a resumed run draws the same batches."""
    return np.flatnonzero(np.random.default_rng([seed, step, 7]).random(n) < q).tolist()


def make_private(model, optimizer, dp: DPPlan, batch_size: int):
    """(hooks, DP optimizer): per-example gradients on the trainable (LoRA) parameters of
    ``model`` (a PEFT model, on its device), clipped and noised by the optimizer."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    # the first LoRA layers' inputs need no gradient; torch says so once per layer
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    hooks = GradSampleModule(model, loss_reduction="mean", strict=True)
    private = DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier,
                          max_grad_norm=dp.max_grad_norm, expected_batch_size=batch_size,
                          loss_reduction="mean")
    return hooks, private


def empty_step(params) -> None:
    """A step whose Poisson batch is empty still adds the noise: zero per-example
    gradients for the optimizer."""
    import torch

    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def check(config) -> None:
    """What DP training cannot be combined with, refused before anything loads."""
    if config.template_epochs is not None:
        raise DPError("--template-epochs cannot be combined with --dp-epsilon: DP training "
                      "samples every example at the same rate (its guarantee needs it), and "
                      "bounds each one's influence already")
    if config.gradient_checkpointing:
        raise DPError("--dp-epsilon cannot be combined with gradient checkpointing: the "
                      "recomputed forward pass would give Opacus every layer's inputs twice; "
                      "use --no-grad-checkpoint (and a smaller --micro-batch to save memory)")
    if config.load_in_4bit:
        raise DPError("--dp-epsilon is not supported with --4bit")
