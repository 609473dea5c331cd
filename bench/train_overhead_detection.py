"""Engine overhead for a detector: our engine's epoch time vs a bare torchvision loop, same run.

Same model (RETINANET over RESNET18, built by our detection family: torchvision's RetinaNet on our FPN),
same in-memory chips with 1-3 boxes each, batch size, optimizer (AdamW + one-cycle, discriminative LR) and
device. The bare loop calls torchvision directly (`sum(model(images, targets).values())`, backward, step)
and runs the eval-mode detections over the validation chips; the engine adds what a job needs (validation
loss, Esri AP + COCO mAP, events, NaN checks, best-epoch copy, an fsynced full-state checkpoint per epoch).
Each variant runs in its own process, alternating bare/engine; the first epoch of each process is warm-up.

    python bench/train_overhead_detection.py [--epochs 3] [--chips 32] [--size 64] [--batch 4] [--device cpu]

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
sys.path.insert(0, str(REPO))


def _setup(args):
    import torch
    from torch.utils.data import DataLoader

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.training.data.info import ClassInfo, DataInfo, Normalization
    from gpjobs.training.models.detection import FAMILIES
    from gpjobs.training.weights import WeightsPolicy

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n_valid = max(args.batch, args.chips // 8)
    samples = []
    for i in range(args.chips + n_valid):  # bright squares on noise: class = which band is bright
        image = torch.randn(3, args.size, args.size, generator=g) * 0.2
        boxes, labels = [], []
        for j in range(1 + i % 3):
            side = int(args.size * (0.2 + 0.1 * ((i + j) % 3)))
            x0, y0 = [int(v) for v in torch.randint(0, args.size - side, (2,), generator=g)]
            label = 1 + (i + j) % 2
            image[label - 1, y0:y0 + side, x0:x0 + side] += 2.0
            boxes.append([x0, y0, x0 + side, y0 + side])
            labels.append(label)
        samples.append((image, {"boxes": torch.tensor(boxes, dtype=torch.float32),
                                "labels": torch.tensor(labels, dtype=torch.int64)}))
    train_set, valid_set = samples[:args.chips], samples[args.chips:]
    info = DataInfo("PASCAL_VOC_rectangles", "detection", [ClassInfo(1, "a"), ClassInfo(2, "b")], 3,
                    (args.size, args.size), [0, 1, 2], Normalization.imagenet(), False, 3)
    mt = lookup_model_type(args.model_type)
    family = FAMILIES[mt.name](mt, info, args.backbone, parse_arguments(mt, {}), WeightsPolicy(),
                               lambda level, text: None)
    torch.manual_seed(0)
    model = family.build()
    family.freeze(model, True)

    def collate(batch):
        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    class Data:
        train, valid = train_set, valid_set

        def loaders(self, batch_size, *, num_workers=0, pin_memory=False):
            return (DataLoader(train_set, batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                               generator=torch.Generator().manual_seed(1)),
                    DataLoader(valid_set, batch_size, collate_fn=collate))

    return torch, family, model, Data()


def run_bare(args) -> dict:
    torch, family, model, data = _setup(args)
    device = torch.device(args.device)
    model.to(device)
    net = model.net  # the torchvision detector itself
    train_loader, valid_loader = data.loaders(args.batch)
    lr = 1e-3
    backbone = list(family.backbone_parameters(model))
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
        net.train()
        for x, targets in train_loader:
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            loss = sum(net(list(x.to(device)), targets).values())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        net.eval()
        with torch.no_grad():
            for x, _ in valid_loader:
                net(list(x.to(device)))
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
    parser.add_argument("--model-type", default="RETINANET", choices=("RETINANET", "FASTERRCNN"))
    parser.add_argument("--backbone", default="RESNET18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chips", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=("bare", "engine"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_bare(args) if args.variant == "bare" else run_engine(args)))
        return 0
    runs: dict[str, list[dict]] = {"bare": [], "engine": []}
    for _ in range(args.rounds):
        for variant in ("bare", "engine"):
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--variant", variant], cwd=REPO,
                                  capture_output=True, text=True, check=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    epoch = {v: statistics.median(t for r in rs for t in r["epoch_times"][1:]) for v, rs in runs.items()}
    rss = {v: max(r["peak_rss_mb"] for r in rs) for v, rs in runs.items()}
    print(f"{args.model_type}/{args.backbone}, {args.chips} chips {args.size}px, batch {args.batch}, {args.epochs} "
          f"epochs (first = warm-up), device {args.device}, {args.threads} threads, {args.rounds} rounds")
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
