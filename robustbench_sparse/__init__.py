"""robustbench-sparse: do sparse networks really resist noise and adversarial attacks?

The public API, imported on first use (so `rbs --help` and `import robustbench_sparse` stay light):
`evaluate`, `transfer`, `benchmark`, `baseline`, `check`, `evaluate_model` and `RunRequest`.
"""

from __future__ import annotations

import importlib
from typing import Any

from robustbench_sparse.runtime import pin_cpu_environment

pin_cpu_environment()  # before torch reads its settings: see runtime.CPU_REGIME

__version__ = "0.1.0"
__all__ = ["RunRequest", "baseline", "benchmark", "check", "evaluate", "evaluate_model", "transfer"]

_WHERE = {
    "RunRequest": "robustbench_sparse.results.request",
    "evaluate": "robustbench_sparse.results.harness",
    "transfer": "robustbench_sparse.results.transfer",
    "benchmark": "robustbench_sparse.pipeline",
    "baseline": "robustbench_sparse.pipeline",
    "check": "robustbench_sparse.pipeline",
    "evaluate_model": "robustbench_sparse.own_model",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'robustbench_sparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
