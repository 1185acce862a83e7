"""Data: offline datasets as in-memory tensors, and the deterministic per-rank batch order."""
from largebatch.data.datasets import DATASETS, DatasetSpec, TensorData, dataset_size, load_dataset
from largebatch.data.loader import epoch_permutation, rank_batches, steps_per_epoch

__all__ = [
    "DATASETS", "DatasetSpec", "TensorData", "dataset_size", "load_dataset", "epoch_permutation", "rank_batches",
    "steps_per_epoch",
]
