"""Engine overhead: our training engine's epoch time vs a bare hand-written PyTorch loop, same run.

Same model (UNET over RESNET18 by default, built by our family; `--model-type MMSEGMENTATION --model upernet`
for an MMSegmentation head), same in-memory data tensors, batch size, optimizer (AdamW + one-cycle,
discriminative LR) and device. The bare loop does forward/backward/step (cross-entropy, plus 0.4 x the
auxiliary head's when the network has one) plus a validation forward pass; the engine adds what a job needs
(metrics, events, NaN checks, best-epoch copy and an atomic fsynced full-state checkpoint per epoch). Each
variant runs in its own process (peak RSS is per process), alternating bare/engine twice; the first epoch of
each process is warm-up.

    python bench/train_overhead.py [--model-type UNET] [--model upernet] [--epochs 4] [--chips 64] [--size 64]
        [--batch 8] [--device cpu]

Target: engine / bare epoch time <= 1.10. Prints both peak memories and their ratio.
"""

from __future__ import annotations

import argparse
import sys

import overhead_harness as harness

REPO = harness.REPO
sys.path.insert(0, str(REPO))


def setup(args):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.export.info import ClassInfo, DataInfo, Normalization
    from gpjobs.training.models import family_for
    from gpjobs.training.weights import WeightsPolicy

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n_valid = max(args.batch, args.chips // 8)
    images = torch.randn(args.chips + n_valid, 3, args.size, args.size, generator=g)
    masks = (images[:, 0] > 0.5).long() + (images[:, 1] > 1.0).long()
    train_set = TensorDataset(images[: args.chips], masks[: args.chips])
    valid_set = TensorDataset(images[args.chips :], masks[args.chips :])
    info = DataInfo(
        "Classified_Tiles",
        "segmentation",
        [ClassInfo(1, "a"), ClassInfo(2, "b")],
        3,
        (args.size, args.size),
        [0, 1, 2],
        Normalization.imagenet(),
        False,
        3,
    )
    mt = lookup_model_type(args.model_type)
    arguments = {"model": args.model} if args.model else {}
    family = family_for(mt.name)(
        mt, info, "RESNET18", parse_arguments(mt, arguments), WeightsPolicy(), lambda level, text: None
    )
    torch.manual_seed(0)
    model = family.build()
    family.freeze(model, True)

    class Data:
        train, valid = train_set, valid_set

        def loaders(self, batch_size, *, num_workers=0, pin_memory=False):
            return (
                DataLoader(
                    train_set,
                    batch_size,
                    shuffle=True,
                    drop_last=True,
                    generator=torch.Generator().manual_seed(1),
                    pin_memory=pin_memory,
                ),
                DataLoader(valid_set, batch_size, pin_memory=pin_memory),
            )

    return torch, family, model, Data()


def run_bare(args) -> dict:
    torch, family, model, data = setup(args)
    import torch.nn.functional as F

    device = torch.device(args.device)
    model.to(device)
    train_loader, valid_loader = data.loaders(args.batch, pin_memory=device.type == "cuda")
    opt, sched = harness.bare_optimizer(torch, family, model, lr=1e-3, total_steps=args.epochs * len(train_loader))
    clock = harness.EpochClock()
    for _ in range(args.epochs):
        harness.sync(torch, device)
        clock.start()
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, aux = model.forward_train(x)
            loss = F.cross_entropy(logits, y)
            if aux is not None:
                loss = loss + 0.4 * F.cross_entropy(aux, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        model.eval()
        with torch.no_grad():
            for x, y in valid_loader:
                F.cross_entropy(model(x.to(device)), y.to(device))
        harness.sync(torch, device)
        clock.stop()
    return {**clock.result(), **harness.memory(torch, device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="UNET", choices=("UNET", "MMSEGMENTATION"))
    parser.add_argument("--model", help="MMSEGMENTATION model name (upernet, ocrnet, ...)")
    harness.add_common_arguments(parser, epochs=4, chips=64, size=64, batch=8)
    args = parser.parse_args()
    label = f"{args.model_type}{'(' + args.model + ')' if args.model else ''}/RESNET18"
    return harness.main(__file__, args, label, setup, run_bare)


if __name__ == "__main__":
    sys.exit(main())
