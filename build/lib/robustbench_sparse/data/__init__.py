"""Data in: the registered datasets and `load_dataset`.

Each dataset family's module registers itself on import; the order here is the order every list
of datasets shows (the CLI's choices, "valid: ..." in errors).
"""

# isort: off
from robustbench_sparse.data import mnist, fashion_mnist, cifar10  # noqa: F401  (they register)
# isort: on
from robustbench_sparse.data.datasets import (
    DATASETS,
    Dataset,
    DatasetArrays,
    DatasetDefinition,
    DatasetInfo,
    DatasetNotFound,
    dataset_definition,
    dataset_info,
    default_data_root,
    load_dataset,
    register_dataset,
    unregister_dataset,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetArrays",
    "DatasetDefinition",
    "DatasetInfo",
    "DatasetNotFound",
    "dataset_definition",
    "dataset_info",
    "default_data_root",
    "load_dataset",
    "register_dataset",
    "unregister_dataset",
]
