"""robustbench-sparse: do sparse networks really resist noise and adversarial attacks?"""

from robustbench_sparse.own_model import evaluate_model
from robustbench_sparse.pipeline import baseline, benchmark, check
from robustbench_sparse.results.harness import evaluate
from robustbench_sparse.results.transfer import transfer

__all__ = ["baseline", "benchmark", "check", "evaluate", "evaluate_model", "transfer"]
__version__ = "0.1.0"
