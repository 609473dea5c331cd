"""Engine overhead for a detector: our engine's epoch time vs a bare PyTorch loop, same run.

Same model (RETINANET over RESNET18 by default, built by our detection family: torchvision's RetinaNet on our
FPN), same in-memory chips with 1-3 boxes each, batch size, optimizer (AdamW + one-cycle, discriminative LR)
and device. The bare loop calls the network directly (torchvision's `sum(model(images, targets).values())`;
for our own networks — DETREG's Deformable DETR, MMDETECTION's atss / vfnet — their `losses(images,
targets)`, which is the set loss or the dense loss itself), backward, clips the gradient norm as the job does
(the detectors' default 10, DETREG's 0.1: it changes the weights, so a loop without it trains another model),
steps, and over the validation chips computes what every job reports per epoch: the validation loss (BatchNorm
in eval) and the detections (one forward for both where the network offers `losses_and_detections`, else a
loss-mode and an eval forward). The engine adds the rest of what a job needs (Esri AP + COCO mAP from those
detections, events, NaN checks, best-epoch copy, an fsynced full-state checkpoint per epoch).
Each variant runs in its own process, alternating bare/engine; the first epoch of each process is warm-up.

    python bench/train_overhead_detection.py [--model-type RETINANET] [--model fcos] [--arguments JSON]
        [--epochs 3] [--chips 32] [--size 64] [--batch 4] [--device cpu]

--model is MMDETECTION's model name (fcos, atss, vfnet, cascade_rcnn, ...), --arguments the job arguments
(e.g. DETREG's transformer size).

Target: engine / bare epoch time <= 1.10. Prints both peak memories and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys

import overhead_harness as harness

REPO = harness.REPO
sys.path.insert(0, str(REPO))


def setup(args):
    import torch
    from torch.utils.data import DataLoader

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.export.info import ClassInfo, DataInfo, Normalization
    from gpjobs.training.models import family_for
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
            image[label - 1, y0 : y0 + side, x0 : x0 + side] += 2.0
            boxes.append([x0, y0, x0 + side, y0 + side])
            labels.append(label)
        samples.append(
            (
                image,
                {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)},
            )
        )
    train_set, valid_set = samples[: args.chips], samples[args.chips :]
    info = DataInfo(
        "PASCAL_VOC_rectangles",
        "detection",
        [ClassInfo(1, "a"), ClassInfo(2, "b")],
        3,
        (args.size, args.size),
        [0, 1, 2],
        Normalization.imagenet(),
        False,
        3,
    )
    mt = lookup_model_type(args.model_type)
    arguments = {**json.loads(args.arguments or "{}"), **({"model": args.model} if args.model else {})}
    family = family_for(mt.name)(
        mt, info, args.backbone, parse_arguments(mt, arguments), WeightsPolicy(), lambda level, text: None
    )
    torch.manual_seed(0)
    model = family.build()
    family.freeze(model, True)

    def collate(batch):
        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    class Data:
        train, valid = train_set, valid_set

        def loaders(self, batch_size, *, num_workers=0, pin_memory=False):
            return (
                DataLoader(
                    train_set,
                    batch_size,
                    shuffle=True,
                    drop_last=True,
                    collate_fn=collate,
                    generator=torch.Generator().manual_seed(1),
                ),
                DataLoader(valid_set, batch_size, collate_fn=collate),
            )

    return torch, family, model, Data()


def run_bare(args) -> dict:
    torch, family, model, data = setup(args)
    from gpjobs.training.engine import FitConfig
    from gpjobs.training.engine.schedule import clip_norm
    from gpjobs.training.models.detection.common import set_loss_mode

    clip = clip_norm(family, FitConfig(max_epochs=args.epochs, batch_size=args.batch))
    device = torch.device(args.device)
    model.to(device)
    net = getattr(model, "net", None)  # the torchvision detector itself, when it is one
    train_loader, valid_loader = data.loaders(args.batch)
    opt, sched = harness.bare_optimizer(torch, family, model, lr=1e-3, total_steps=args.epochs * len(train_loader))
    clock = harness.EpochClock()
    for _ in range(args.epochs):
        harness.sync(torch, device)
        clock.start()
        model.train()
        for x, targets in train_loader:
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            if net is not None:
                loss = sum(net(list(x.to(device)), targets).values())
            else:  # our own network: its loss is its own method
                loss = model.losses(x.to(device), targets)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        with torch.no_grad():
            valid_loss = 0.0
            for x, targets in valid_loader:
                x, targets = x.to(device), [{k: v.to(device) for k, v in t.items()} for t in targets]
                set_loss_mode(model)
                if hasattr(model, "losses_and_detections"):
                    loss, _ = model.losses_and_detections(x, targets)
                else:
                    loss = model.losses(x, targets)
                    model.eval()
                    model.detect(x)
                valid_loss += float(loss) * len(x)
        model.eval()
        harness.sync(torch, device)
        clock.stop()
    return {**clock.result(), **harness.memory(torch, device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-type", default="RETINANET", choices=("RETINANET", "FASTERRCNN", "DETREG", "MMDETECTION")
    )
    parser.add_argument("--model", help="MMDETECTION model name (fcos, atss, vfnet, cascade_rcnn, ...)")
    parser.add_argument("--arguments", help="job arguments as JSON, e.g. DETREG's transformer size")
    parser.add_argument("--backbone", default="RESNET18")
    harness.add_common_arguments(parser, epochs=3, chips=32, size=64, batch=4)
    args = parser.parse_args()
    label = f"{args.model_type}{'(' + args.model + ')' if args.model else ''}/{args.backbone}"
    does = "validation loss + detections per epoch (as every job reports), gradient clipping as the job's"
    return harness.main(__file__, args, label, setup, run_bare, bare_does=does)


if __name__ == "__main__":
    sys.exit(main())
