"""CPU cost of the image classifiers in PyTorch's two memory formats.

``ImageClassification.build_model`` converts every model to channels-last
(``model.to(memory_format=torch.channels_last)``): same weights and shapes,
but the convolution weights are laid out NHWC, which oneDNN's CPU kernels run
faster than the default NCHW. This measures what that buys, per model, on one
torch thread (as every simulated client trains):

- ``train``: one local epoch of SGD (momentum 0.9, batch 32) on ``--images``
  random 3×32×32 images, as a client does;
- ``eval``: a forward pass in batches of 500 over ``--images`` images, as the
  server's clean-accuracy and ASR evaluation does.

Inputs stay NCHW (as the workload feeds them); only the model is converted.
Times are CPU seconds of this process (``time.process_time``), the minimum over
``--repeats`` alternating repetitions, so a busy machine disturbs them less than
wall time. The last column is the largest difference between the two formats'
weights after the same epoch from the same start (rounding only).

    OMP_NUM_THREADS=1 python benchmarks/memory_format.py
    OMP_NUM_THREADS=1 python benchmarks/memory_format.py --models cnn resnet18 --images 128
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from flowerbed.platform.registry import MODELS

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
TRAIN_BATCH = 32
EVAL_BATCH = 500


def build(model_name: str, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS.get(model_name)(IMAGE_SHAPE, NUM_CLASSES)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    began = time.process_time()
    for start in range(0, len(labels), TRAIN_BATCH):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images[start : start + TRAIN_BATCH]), labels[start : start + TRAIN_BATCH]).backward()
        optimizer.step()
    return time.process_time() - began


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor) -> float:
    model.eval()
    began = time.process_time()
    for start in range(0, len(images), EVAL_BATCH):
        model(images[start : start + EVAL_BATCH])
    return time.process_time() - began


def measure(model_name: str, num_images: int, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(num_images, *IMAGE_SHAPE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (num_images,), generator=generator)
    times: dict[str, list[float]] = {key: [] for key in ("train-nchw", "train-nhwc", "eval-nchw", "eval-nhwc")}
    drift = 0.0
    for _ in range(repeats):
        trained = {}
        for channels_last, tag in ((False, "nchw"), (True, "nhwc")):
            model = build(model_name, channels_last)
            times[f"train-{tag}"].append(train_epoch(model, images, labels))
            times[f"eval-{tag}"].append(evaluate(model, images))
            trained[tag] = model.state_dict()
        drift = max(
            drift,
            max((trained["nchw"][k].double() - trained["nhwc"][k].double()).abs().max().item() for k in trained["nchw"]),
        )
    result = {key: min(values) for key, values in times.items()}
    result["max-weight-difference"] = drift
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn"], choices=sorted(MODELS.names()))
    parser.add_argument("--images", type=int, default=512, help="images per epoch and per evaluation")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}, {args.images} images")
    print("| model | train NCHW (s) | train channels-last (s) | speed-up | eval NCHW (s) | eval channels-last (s) | speed-up | max weight difference |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = measure(name, args.images, args.repeats)
        print(
            f"| {name} | {r['train-nchw']:.3f} | {r['train-nhwc']:.3f} | {r['train-nchw'] / r['train-nhwc']:.2f}x "
            f"| {r['eval-nchw']:.3f} | {r['eval-nhwc']:.3f} | {r['eval-nchw'] / r['eval-nhwc']:.2f}x "
            f"| {r['max-weight-difference']:.1e} |"
        )


if __name__ == "__main__":
    main()
