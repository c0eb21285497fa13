"""L-inf attacks, one module per family, each registered once under its name.

An attack is an `Attack` definition (`base.py`): its name, label, parameters, backends and how
each backend builds it; the base owns the seeded run and the budget check, so no number is ever
reported for an attack that left its eps-ball. `craft` (`crafting.py`) runs any registered attack.

- `fgsm.py`: FGSM; `iterative.py`: I-FGSM, MI-FGSM and PGD (cross-entropy or margin loss, restarts),
  run in our early-stopping loop (`loop.py`) with backend=torchattacks;
- `square.py`: the gradient-free Square attack; `apgd.py`: APGD and the standard AutoAttack;
- `finite_difference.py`: FD-PGD, PGD on the margin loss with finite-difference gradients
  (forward passes only), the adaptive attack that broke k-WTA;
- `bpda.py`: k-winners layers backpropagating through ReLU's backward or the identity;
- `gradients.py`: the share of inputs whose input gradient is zero or not finite.

Adding an attack is one module that subclasses `Attack` (or `loop.IterativeAttack`) and calls
`register` once; it then appears in `ATTACKS`, in the evaluation kinds and in `rbs evaluations`.
"""

from robustbench_sparse.perturb.attacks.base import (
    BACKENDS,
    BOUND_TOLERANCE,
    OWN,
    Attack,
    BudgetViolation,
    LibraryAttack,
    check_budget,
    restart_seed,
)
from robustbench_sparse.perturb.attacks.bpda import (
    BPDA_MODES,
    bpda_backward,
    bpda_layers,
    handles_bpda,
    looks_like_kwinners,
)
from robustbench_sparse.perturb.attacks.crafting import craft, craft_batches, early_stops, runs_our_loop
from robustbench_sparse.perturb.attacks.gradients import gradient_health, live_gradients
from robustbench_sparse.perturb.attacks.loop import IterativeAttack, crafting_threads, step_size
from robustbench_sparse.perturb.attacks.registry import (
    ATTACKS,
    FOOLBOX_ATTACKS,
    LABELS,
    attack_of,
    register,
    unregister,
)

# The families, in the order `ATTACKS` lists them: importing a family module registers its attacks.
from robustbench_sparse.perturb.attacks.fgsm import FGSM  # isort: skip
from robustbench_sparse.perturb.attacks.iterative import IFGSM, MIFGSM, PGD, PGD_LOSSES, margin_loss  # isort: skip
from robustbench_sparse.perturb.attacks.square import Square  # isort: skip
from robustbench_sparse.perturb.attacks.apgd import APGD, APGD_LOSSES, AutoAttack  # isort: skip
from robustbench_sparse.perturb.attacks.finite_difference import FDPGD  # isort: skip

__all__ = [
    "APGD", "APGD_LOSSES", "FDPGD", "ATTACKS", "BACKENDS", "BOUND_TOLERANCE", "BPDA_MODES", "FGSM", "FOOLBOX_ATTACKS",
    "IFGSM", "LABELS", "MIFGSM", "PGD", "PGD_LOSSES", "Attack", "AutoAttack", "BudgetViolation",
    "IterativeAttack", "LibraryAttack", "OWN", "Square", "attack_of", "bpda_backward", "bpda_layers", "check_budget",
    "craft", "craft_batches", "crafting_threads", "early_stops", "gradient_health", "handles_bpda",
    "live_gradients", "looks_like_kwinners", "margin_loss", "register", "restart_seed", "runs_our_loop",
    "step_size", "unregister",
]
