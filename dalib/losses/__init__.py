"""Pure, differentiable domain-adaptation losses.

``from dalib.losses import mmd, coral, sinkhorn`` and use them in any training loop.
"""

from dalib.losses.adversarial import domain_adversarial, entropy, grad_reverse
from dalib.losses.coral import coral
from dalib.losses.mmd import mmd
from dalib.losses.sinkhorn import SinkhornResult, ot_plan, sinkhorn, sinkhorn_solve

__all__ = [
    "SinkhornResult",
    "coral",
    "domain_adversarial",
    "entropy",
    "grad_reverse",
    "mmd",
    "ot_plan",
    "sinkhorn",
    "sinkhorn_solve",
]
