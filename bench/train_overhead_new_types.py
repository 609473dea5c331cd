"""Engine overhead for IMAGECAPTIONER, SIAMMASK and MAXDEEPLAB: our engine's epoch time vs a bare loop, same run.

Same model (built by our family), same in-memory data, batch size, optimizer (AdamW + one-cycle,
discriminative LR) and device. The bare loop trains with the network's own loss (captioner: teacher forcing
+ caption loss; SiamMask: the pair loss; MaX-DeepLab: the Hungarian panoptic loss) and runs the validation
pass a job needs anyway: the validation loss and the inference (beam search / tracking through each
validation sequence / panoptic post-processing). The engine adds what a job needs on top (BLEU, mask IoU
and F-measure, PQ, events, NaN checks, best-epoch copy and an fsynced full-state checkpoint per epoch).
Each variant runs in its own process, alternating bare/engine; the first epoch of each process is warm-up.

    python bench/train_overhead_new_types.py --model-type IMAGECAPTIONER [--epochs 4] [--chips 64] [--size 64]
    python bench/train_overhead_new_types.py --model-type SIAMMASK      (chips = training pairs)
    python bench/train_overhead_new_types.py --model-type MAXDEEPLAB

Target: engine / bare epoch time <= 1.10. Prints both peak memories and their ratio.
"""

from __future__ import annotations

import argparse
import sys

import overhead_harness as harness

REPO = harness.REPO
sys.path.insert(0, str(REPO))

BACKBONES = {"IMAGECAPTIONER": "RESNET18", "SIAMMASK": "RESNET18", "MAXDEEPLAB": ""}


def _captioner(torch, args, n_valid):
    from gpjobs.export.captions import Vocabulary
    from gpjobs.training.data.captions import collate_captions

    vocab = Vocabulary(["xxpad", "xxunk", "xxbos", "xxeos", *(f"w{i}" for i in range(20))])
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(args.chips + n_valid):
        words = [4 + int(v) for v in torch.randint(20, (8 + i % 4,), generator=g)]
        ids = torch.tensor([vocab.bos, *words, vocab.eos])
        samples.append((torch.randn(3, args.size, args.size, generator=g), ids, [[vocab.itos[w] for w in words]]))
    return samples[: args.chips], samples[args.chips :], collate_captions, {"vocab": vocab}


class _Track:
    """An in-memory validation track with the interface of training.data.tracking.Track."""

    def __init__(self, frames, masks, box, pairs) -> None:
        self._frames, self._masks, self._box, self._pairs = frames, masks, box, pairs

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, t):
        return self._frames[t]

    def mask(self, t):
        return self._masks[t]

    def first_box(self):
        return self._box

    def pairs(self, exemplar, instance):
        return iter(self._pairs)


def _tracker(torch, args, n_valid):
    g = torch.Generator().manual_seed(0)
    e, s = args.size // 2, args.size

    def pair():
        x = torch.randn(3, s, s, generator=g)
        x0, y0 = (int(v) for v in torch.randint(s // 4, s // 2, (2,), generator=g))
        mask = torch.zeros(s, s)
        mask[y0 : y0 + e // 2, x0 : x0 + e // 2] = 1.0
        x[:, mask > 0] += 2.0
        return (torch.randn(3, e, e, generator=g), x, torch.tensor([x0, y0, x0 + e // 2, y0 + e // 2]).float(), mask)

    train_set = [pair() for _ in range(args.chips)]
    tracks = []
    for _ in range(max(1, n_valid // 4)):
        frames = [torch.randn(3, s, s, generator=g) for _ in range(5)]
        masks = [torch.zeros(s, s, dtype=torch.bool) for _ in range(5)]
        for m in masks:
            m[8 : 8 + e // 2, 8 : 8 + e // 2] = True
        tracks.append(
            _Track(frames, masks, torch.tensor([8.0, 8.0, 8.0 + e // 2, 8.0 + e // 2]), [pair() for _ in range(4)])
        )
    return train_set, tracks, None, {"exemplar": e, "instance": s}


def _panoptic(torch, args, n_valid):
    from gpjobs.training.data.datasets import collate_detection

    g = torch.Generator().manual_seed(0)
    samples = []
    s = args.size
    for _ in range(args.chips + n_valid):
        image = torch.randn(3, s, s, generator=g) * 0.2
        semantic = torch.zeros(s, s, dtype=torch.long)
        masks = []
        for j in range(2):
            x0, y0 = (int(v) for v in torch.randint(0, s // 2, (2,), generator=g))
            semantic[y0 : y0 + s // 3, x0 : x0 + s // 3] = 1 + j
            image[j, y0 : y0 + s // 3, x0 : x0 + s // 3] += 2.0
            if j == 1:
                m = torch.zeros(s, s, dtype=torch.uint8)
                m[y0 : y0 + s // 3, x0 : x0 + s // 3] = 1
                masks.append(m)
        samples.append((image, {"semantic": semantic, "masks": torch.stack(masks), "labels": torch.tensor([2])}))
    return samples[: args.chips], samples[args.chips :], collate_detection, {"things": [2]}


def setup(args):
    import torch
    from torch.utils.data import DataLoader

    from gpjobs.catalog import lookup_model_type, parse_arguments
    from gpjobs.export.info import ClassInfo, DataInfo, Normalization
    from gpjobs.training.models import family_for
    from gpjobs.training.weights import WeightsPolicy

    torch.set_num_threads(args.threads)
    n_valid = max(args.batch, args.chips // 8)
    build = {"IMAGECAPTIONER": _captioner, "SIAMMASK": _tracker, "MAXDEEPLAB": _panoptic}[args.model_type]
    train_set, valid_set, collate, extra = build(torch, args, n_valid)
    fmt = {"IMAGECAPTIONER": "ImageCaptioning", "SIAMMASK": "ObjectTracking", "MAXDEEPLAB": "Panoptic_Segmentation"}[
        args.model_type
    ]
    info = DataInfo(
        fmt,
        "",
        [ClassInfo(1, "a"), ClassInfo(2, "b")],
        3,
        (args.size, args.size),
        [0, 1, 2],
        Normalization.imagenet(),
        False,
        3,
    )
    mt = lookup_model_type(args.model_type)
    raw = {
        "IMAGECAPTIONER": {"max_len": 12},
        "SIAMMASK": {"exemplar_size": extra.get("exemplar"), "instance_size": extra.get("instance")},
        "MAXDEEPLAB": {"n_masks": 6},
    }[args.model_type]
    family = family_for(mt.name)(
        mt, info, BACKBONES[mt.name], parse_arguments(mt, raw), WeightsPolicy(), lambda level, text: None
    )
    family.vocab = extra.get("vocab")
    family.thing_values = extra.get("things", [])
    torch.manual_seed(0)
    model = family.build()
    family.freeze(model, True)

    class Data:
        train, valid = train_set, valid_set

        def loaders(self, batch_size, *, num_workers=0, pin_memory=False):
            train = DataLoader(
                train_set,
                batch_size,
                shuffle=True,
                drop_last=True,
                collate_fn=collate,
                generator=torch.Generator().manual_seed(1),
            )
            valid = (
                DataLoader(valid_set, batch_size, collate_fn=collate)
                if collate is not None
                else DataLoader(valid_set, batch_size, collate_fn=lambda b: b)
            )
            return train, valid

    return torch, family, model, Data()


def run_bare(args) -> dict:
    torch, family, model, data = setup(args)
    from gpjobs.training.models.captioning_net import caption_loss
    from gpjobs.training.models.panoptic import panoptic_loss

    device = torch.device(args.device)
    model.to(device)
    train_loader, valid_loader = data.loaders(args.batch)
    opt, sched = harness.bare_optimizer(torch, family, model, lr=1e-3, total_steps=args.epochs * len(train_loader))
    kind = args.model_type

    def loss_of(batch):
        if kind == "IMAGECAPTIONER":
            images, ids = batch[0].to(device), batch[1].to(device)
            return caption_loss(*model.teacher_forced(images, ids), ids[:, 1:])
        if kind == "SIAMMASK":
            return model.loss(*(t.to(device) for t in batch))[0]
        images, targets = batch
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        return panoptic_loss(model.outputs(images.to(device)), targets, model.is_thing)[0]

    clock = harness.EpochClock()
    for _ in range(args.epochs):
        harness.sync(torch, device)
        clock.start()
        model.train()
        for batch in train_loader:
            loss = loss_of(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        model.eval()
        with torch.no_grad():
            for batch in valid_loader:
                if kind == "SIAMMASK":  # the validation loss over pairs, then tracking through each sequence
                    for track in batch:
                        pairs = list(track.pairs(0, 0))
                        loss_of([torch.stack(p) for p in zip(*pairs)])
                        family.track(model, [track.frame(t) for t in range(len(track))], track.first_box())
                    continue
                if kind == "MAXDEEPLAB":  # one network pass for the loss and the panoptic output
                    images, targets = batch
                    out = model.outputs(images.to(device))
                    panoptic_loss(out, [{k: v.to(device) for k, v in t.items()} for t in targets], model.is_thing)
                    model.postprocess(out, images.shape[-2:])
                    continue
                loss_of(batch)
                model(batch[0].to(device))
        harness.sync(torch, device)
        clock.stop()
    return {**clock.result(), **harness.memory(torch, device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="IMAGECAPTIONER", choices=tuple(BACKBONES))
    harness.add_common_arguments(parser, epochs=4, chips=64, size=64, batch=8)
    args = parser.parse_args()
    backbone = BACKBONES[args.model_type] or "own network"
    does = {
        "IMAGECAPTIONER": "validation loss + beam-search captions per epoch (no BLEU)",
        "SIAMMASK": "validation pair loss + tracking through each validation sequence per epoch (no IoU / F)",
        "MAXDEEPLAB": "validation loss + panoptic post-processing per epoch, one forward (no PQ)",
    }[args.model_type]
    return harness.main(__file__, args, f"{args.model_type}/{backbone}", setup, run_bare, bare_does=does)


if __name__ == "__main__":
    sys.exit(main())
