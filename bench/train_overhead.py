"""Engine overhead: our training engine's epoch time vs a bare hand-written PyTorch loop, same run.

Same model (UNET over RESNET18, built by our family), same in-memory data tensors, batch size, optimizer
(AdamW + one-cycle, discriminative LR) and device. The bare loop does forward/backward/step plus a
validation forward pass; the engine adds what a job needs (metrics, events, NaN checks, best-epoch copy
and an atomic fsynced full-state checkpoint per epoch). Each variant runs in its own process (peak RSS is
per process), alternating bare/engine twice; the first epoch of each process is warm-up.

    python bench/train_overhead.py [--epochs 4] [--chips 64] [--size 64] [--batch 8] [--device cpu]

Target: engine / bare epoch time <= 1.10. Prints both peak memories and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup(args):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.training.data.info import ClassInfo, DataInfo, Normalization
    from gpjobs.training.models.segmentation import UnetFamily
    from gpjobs.training.weights import WeightsPolicy

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n_valid = max(args.batch, args.chips // 8)
    images = torch.randn(args.chips + n_valid, 3, args.size, args.size, generator=g)
    masks = (images[:, 0] > 0.5).long() + (images[:, 1] > 1.0).long()
    train_set = TensorDataset(images[:args.chips], masks[:args.chips])
    valid_set = TensorDataset(images[args.chips:], masks[args.chips:])
    info = DataInfo("Classified_Tiles", "segmentation", [ClassInfo(1, "a"), ClassInfo(2, "b")], 3,
                    (args.size, args.size), [0, 1, 2], Normalization.imagenet(), False, 3)
    mt = lookup_model_type("UNET")
    family = UnetFamily(mt, info, "RESNET18", parse_arguments(mt, {}), WeightsPolicy(), lambda l, t: None)
    torch.manual_seed(0)
    model = family.build()
    family.freeze(model, True)

    class Data:
        train, valid = train_set, valid_set

        def loaders(self, batch_size, *, num_workers=0, pin_memory=False):
            return (DataLoader(train_set, batch_size, shuffle=True, drop_last=True,
                               generator=torch.Generator().manual_seed(1), pin_memory=pin_memory),
                    DataLoader(valid_set, batch_size, pin_memory=pin_memory))

    return torch, family, model, Data()


def run_bare(args) -> dict:
    torch, family, model, data = _setup(args)
    import torch.nn.functional as F

    device = torch.device(args.device)
    model.to(device)
    train_loader, valid_loader = data.loaders(args.batch, pin_memory=device.type == "cuda")
    lr = 1e-3
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": backbone, "lr": lr / 10}, {"params": head, "lr": lr}], betas=(0.9, 0.99),
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr / 10, lr], total_steps=args.epochs * len(train_loader),
                                                pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    times = []
    for _ in range(args.epochs):
        _sync(torch, device)
        start = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        model.eval()
        with torch.no_grad():
            for x, y in valid_loader:
                F.cross_entropy(model(x.to(device)), y.to(device))
        _sync(torch, device)
        times.append(time.perf_counter() - start)
    return {"epoch_times": times, **_memory(torch, device)}


def run_engine(args) -> dict:
    torch, family, model, data = _setup(args)
    from gpjobs.training.engine import FitConfig, fit
    from gpjobs.training.events import ListReporter

    class Clock(ListReporter):  # epoch wall time = between checkpoint events (includes writing the checkpoint)
        marks: list[float] = []

        def emit(self, event_type, **fields):
            super().emit(event_type, **fields)
            if event_type == "checkpoint":
                self.marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = FitConfig(max_epochs=args.epochs, batch_size=args.batch, learning_rate=1e-3, stop_training=False,
                        device=args.device, checkpoint_path=Path(tmp) / "checkpoint.pt")
        clock = Clock()
        start = time.perf_counter()
        fit(family, model, data, cfg, clock)
    marks = [start, *clock.marks]
    return {"epoch_times": [b - a for a, b in zip(marks, marks[1:])], **_memory(torch, torch.device(args.device))}


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _memory(torch, device) -> dict:
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--chips", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=("bare", "engine"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_bare(args) if args.variant == "bare" else run_engine(args)))
        return 0
    runs: dict[str, list[dict]] = {"bare": [], "engine": []}
    base = [a for a in sys.argv[1:]]
    for _ in range(args.rounds):
        for variant in ("bare", "engine"):
            done = subprocess.run([sys.executable, __file__, *base, "--variant", variant], cwd=REPO,
                                  capture_output=True, text=True, check=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    epoch = {v: statistics.median(t for r in rs for t in r["epoch_times"][1:]) for v, rs in runs.items()}
    rss = {v: max(r["peak_rss_mb"] for r in rs) for v, rs in runs.items()}
    print(f"UNET/RESNET18, {args.chips} chips {args.size}px, batch {args.batch}, {args.epochs} epochs "
          f"(first = warm-up), device {args.device}, {args.threads} threads, {args.rounds} rounds")
    print(f"epoch time  bare {epoch['bare']:.3f} s   engine {epoch['engine']:.3f} s   "
          f"ratio {epoch['engine'] / epoch['bare']:.3f} (target <= 1.10)")
    print(f"peak RSS    bare {rss['bare']:.0f} MB   engine {rss['engine']:.0f} MB   "
          f"ratio {rss['engine'] / rss['bare']:.3f}")
    if all("peak_cuda_mb" in r for rs in runs.values() for r in rs):
        cuda = {v: max(r["peak_cuda_mb"] for r in rs) for v, rs in runs.items()}
        print(f"peak CUDA   bare {cuda['bare']:.0f} MB   engine {cuda['engine']:.0f} MB   "
              f"ratio {cuda['engine'] / cuda['bare']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
