"""The peers: plain PyTorch loops a user would write, from scratch (random weights), no schedule, no augmentation.

- segmentation: segmentation-models-pytorch Unet over resnet18, Adam 1e-3, cross-entropy;
- classification: torchvision resnet18, Adam 1e-3, cross-entropy;
- detection: torchvision Faster R-CNN over a random resnet18-FPN (trainable BatchNorm: frozen BatchNorm is
  for pretrained weights), SGD 0.01 momentum 0.9 weight decay 1e-4, torchvision's default anchors.

Each loop trains on every chip of the training export (the peer has no use for a validation split), reading
the exact chip pixels from train.npz, normalised per band by the training chips' mean and std. Run as a
script in its own process, one thread, on the CPU or a CUDA device (`--device cuda`, float32: no autocast);
the reported wall time runs from reading the data to the saved weights (imports excluded, as for our side):

    python bench/qualitylib/peers.py DATA_FOLDER --seed 0 --epochs 2 --batch 8 --out peer.pt [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

LEARNING_RATE = {"segmentation": 1e-3, "classification": 1e-3, "detection": 0.01}


def build(task: str, bands: int, n_classes: int, chip: int) -> nn.Module:
    """The peer network for `task` (n_classes without background), randomly initialised."""
    if task == "segmentation":
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet18", encoder_weights=None, in_channels=bands, classes=n_classes + 1)
    if task == "classification":
        from torchvision.models import resnet18

        model = resnet18(weights=None, num_classes=n_classes)
        if bands != 3:
            model.conv1 = nn.Conv2d(bands, 64, 7, 2, 3, bias=False)
        return model
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5, norm_layer=nn.BatchNorm2d
    )
    # Images reach the model already normalised: identity mean/std, and no resizing (min = max = chip).
    return FasterRCNN(
        backbone,
        num_classes=n_classes + 1,
        min_size=chip,
        max_size=chip,
        image_mean=[0.0] * bands,
        image_std=[1.0] * bands,
    )


def normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) native dtype -> (N, C, H, W) float32 standardised per band."""
    x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)
    return (x - torch.from_numpy(mean)[None, :, None, None]) / torch.from_numpy(std)[None, :, None, None]


def predict(saved: Path, images: np.ndarray, batch: int = 16) -> list:
    """Predictions of a saved peer on raw chips: class-index masks, class indices, or detection dicts."""
    state = torch.load(saved, map_location="cpu", weights_only=False)
    cfg = state["config"]
    model = build(cfg["task"], cfg["bands"], cfg["n_classes"], cfg["chip"])
    model.load_state_dict(state["model"])
    model.eval()
    x = normalise(images, state["mean"], state["std"])
    out: list = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            part = x[start : start + batch]
            if cfg["task"] == "detection":
                out += [{k: v.numpy() for k, v in d.items()} for d in model(list(part))]
            else:
                out += list(model(part).argmax(1).numpy())
    return out


def train(folder: Path, seed: int, epochs: int, batch: int, out: Path, device: str = "cpu") -> dict:
    info = json.loads((folder / "info.json").read_text())
    task, n_classes = info["task"], len(info["classes"])
    values = [v for v, _ in info["classes"]]
    with np.load(folder / "train.npz") as z:
        arrays = {k: z[k] for k in z.files}
    images = arrays["images"]
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    mean, std = flat.mean(0).astype(np.float32), np.maximum(flat.std(0), 1e-6).astype(np.float32)
    x = normalise(images, mean, std)
    lut = np.zeros(max(values) + 1, np.int64)
    lut[values] = np.arange(1, n_classes + 1)
    if task == "segmentation":
        y = torch.from_numpy(lut[arrays["masks"]])
    elif task == "classification":
        y = torch.from_numpy(lut[arrays["labels"]] - 1)
    else:
        y = [
            {
                "boxes": torch.from_numpy(arrays["boxes"][arrays["box_image"] == i]).reshape(-1, 4),
                "labels": torch.from_numpy(lut[arrays["box_labels"][arrays["box_image"] == i]]),
            }
            for i in range(len(images))
        ]

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = build(task, images.shape[-1], n_classes, info["chip"]).to(device)
    lr = LEARNING_RATE[task]
    if task == "detection":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for start in range(0, len(perm) - batch + 1 if len(perm) >= 2 * batch else len(perm), batch):
            idx = perm[start : start + batch]
            images_ = x[idx].to(device)
            if task == "detection":
                targets = [{k: v.to(device) for k, v in y[int(i)].items()} for i in idx]
                loss = sum(model(list(images_), targets).values())
            else:
                loss = loss_fn(model(images_), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    torch.save(
        {
            "model": {k: v.cpu() for k, v in model.state_dict().items()},
            "mean": mean,
            "std": std,
            "config": {
                "task": task,
                "bands": int(images.shape[-1]),
                "n_classes": n_classes,
                "chip": info["chip"],
                "seed": seed,
                "epochs": epochs,
                "batch": batch,
                "lr": lr,
                "device": device,
            },
        },
        out,
    )
    return {
        "steps": len(losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": float(np.mean(losses[-5:])) if losses else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a bench data set folder (info.json, train.npz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu", help="cpu or a CUDA device (cuda, cuda:1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()  # imports are not the job: the clock starts where the data is read
    result = train(args.data, args.seed, args.epochs, args.batch, args.out, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize(args.device)
    print(json.dumps({**result, "wall": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
