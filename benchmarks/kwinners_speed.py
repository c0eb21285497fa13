"""The k-winners layer's forward + backward time next to `torch.topk`'s, its floor.

On the paper's Sparse CNN-2 layer shapes (REFERENCE.md: conv 1 is 32x12x12 after pooling with
k = 400, conv 2 is 64x4x4 with k = 300, the hidden layer 700 units with k = 100), in eval mode
(k_inference = 1.5 k, as attacks see it) and in training mode (k, boosting and duty cycles), batch
64, in one process, median of many runs. The gradient is taken with `torch.autograd.grad` on an
input that is not a leaf, as inside a network. The ratio printed is layer / topk; the target is at
most 1.5 for the conv layers. (A gather/scatter version of the layer, tried, was no faster here:
the cost beyond topk is memory traffic after topk has filled the caches, not the mask itself.)

    python benchmarks/kwinners_speed.py [--repeats 300] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from robustbench_sparse.zoo.sparse import KWinners, KWinners2d


def median_ms(fns: list[Callable[[], object]], repeats: int, block: int = 25) -> list[float]:
    """Median milliseconds per call of each function. The functions take turns in blocks of
    `block` calls (drift in the machine's load hits them alike; within a block each runs warm, as
    a layer does inside a network's loop)."""
    for fn in fns:
        for _ in range(block):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, repeats // block)):
        for fn, spent in zip(fns, times, strict=True):
            for _ in range(block):
                started = time.perf_counter()
                fn()
                spent.append(time.perf_counter() - started)
    return [statistics.median(t) * 1e3 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    layers = [
        ("conv1 32x12x12", KWinners2d(32, 12, 12, k=400, boost_strength=1.5), (32, 12, 12)),
        ("conv2 64x4x4", KWinners2d(64, 4, 4, k=300, boost_strength=1.5), (64, 4, 4)),
        ("hidden 700", KWinners(700, k=100, boost_strength=1.5), (700,)),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'layer':16} {'mode':6} {'k':>4} {'layer f+b ms':>13} {'topk ms':>8} {'ratio':>6} {'relu f+b ms':>12}")
    worst = 0.0
    for name, layer, shape in layers:
        for mode in ("eval", "train"):
            layer.train(mode == "train")
            k = layer.current_k()
            base = torch.randn(args.batch, *shape, requires_grad=True)
            x = base * 1.0  # not a leaf: no gradient accumulation into .grad, as inside a network
            grad = torch.randn_like(x)
            flat = x.detach().reshape(args.batch, -1)  # global k-winners: the top k of each sample
            layer_ms, topk_ms, relu_ms = median_ms([
                lambda: torch.autograd.grad(layer(x), x, grad, retain_graph=True),  # noqa: B023 (called here)
                lambda: flat.topk(k, dim=1, sorted=False),  # noqa: B023
                lambda: torch.autograd.grad(torch.relu(x), x, grad, retain_graph=True),  # noqa: B023
            ], args.repeats)
            ratio = layer_ms / topk_ms
            if name.startswith("conv"):
                worst = max(worst, ratio)
            print(f"{name:16} {mode:6} {k:4d} {layer_ms:13.3f} {topk_ms:8.3f} {ratio:6.2f} {relu_ms:12.3f}")
    print(f"worst_conv_ratio={worst:.2f}")


if __name__ == "__main__":
    main()
