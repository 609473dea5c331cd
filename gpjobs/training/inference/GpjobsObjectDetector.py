"""Detect Objects Using Deep Learning with a gpjobs package (SSD, YOLOV3, RETINANET, FASTERRCNN, MMDETECTION,
DETREG, and MASKRCNN, whose instances come out as mask outlines): polygons with Class, Confidence (0-100), ClassValue.

A Python raster function: initialize, getParameterInfo, getConfiguration, getFields, getGeometryType, then
vectorize per block. Imports only the standard library, numpy and torch. The package's TorchScript network
holds the dense layers; the steps after them (box decoding, proposals, RoIAlign, NMS, mask pasting) are done
here exactly as the trained model's own detect() does them (gpjobs' models/detection/deploy.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import zlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _core():
    """gpjobs_prf_core.py beside this file, imported under a name unique to this package folder."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpjobs_prf_core.py")
    name = f"gpjobs_prf_core_{zlib.crc32(path.encode()):08x}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


core = _core()
TiledPRF: Any = core.TiledPRF  # a name mypy accepts as a base class (the module is loaded at run time)
POLYGON = 4  # ArcGIS geometry type


# --- torchvision's detection arithmetic, in plain torch ------------------------------------------------------


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor, weights, clip: float) -> torch.Tensor:
    """BoxCoder.decode_single: [N, 4k] deltas on [N, 4] xyxy boxes -> [N, k, 4] boxes."""
    anchors = anchors.to(deltas.dtype)
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=clip)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    half_h = torch.tensor(0.5, dtype=pred_ctr_y.dtype) * pred_h
    half_w = torch.tensor(0.5, dtype=pred_ctr_x.dtype) * pred_w
    return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2)


def clip_boxes(boxes: torch.Tensor, size) -> torch.Tensor:
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=boxes.dim()).reshape(boxes.shape)


def small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Indices of boxes at least min_size wide and high."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def roi_align(feature: torch.Tensor, rois: torch.Tensor, size: int, scale: float, ratio: int) -> torch.Tensor:
    """torchvision.ops.roi_align (aligned=False) of [R, 4] boxes on one image's [C, H, W] map -> [R, C, size, size]."""
    channels, height, width = feature.shape
    if rois.shape[0] == 0:
        return feature.new_zeros((0, channels, size, size))
    start = rois * scale
    roi_w = (start[:, 2] - start[:, 0]).clamp(min=1.0)
    roi_h = (start[:, 3] - start[:, 1]).clamp(min=1.0)
    bin_w, bin_h = roi_w / size, roi_h / size
    grid = ratio if ratio > 0 else 2
    steps = (torch.arange(size * grid, dtype=feature.dtype) // grid) + (
        (torch.arange(size * grid, dtype=feature.dtype) % grid) + 0.5
    ) / grid
    ys = start[:, 1, None] + steps[None] * bin_h[:, None]  # [R, size * grid]
    xs = start[:, 0, None] + steps[None] * bin_w[:, None]

    def axis(v: torch.Tensor, limit: int):
        outside = (v < -1.0) | (v > limit)
        v = v.clamp(min=0)
        low = v.floor().long()
        at_edge = low >= limit - 1
        low = torch.where(at_edge, torch.full_like(low, limit - 1), low)
        high = torch.where(at_edge, low, low + 1)
        v = torch.where(at_edge, low.to(v.dtype), v)
        frac = v - low.to(v.dtype)
        return low, high, frac, outside

    y0, y1, ly, y_out = axis(ys, height)
    x0, x1, lx, x_out = axis(xs, width)
    hy, hx = 1.0 - ly, 1.0 - lx
    flat = feature.reshape(channels, -1)

    def gather(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        index = (yi[:, :, None] * width + xi[:, None, :]).reshape(-1)
        return flat[:, index].reshape(channels, rois.shape[0], yi.shape[1], xi.shape[1])

    value = (
        (hy[:, :, None] * hx[:, None, :]) * gather(y0, x0)
        + (hy[:, :, None] * lx[:, None, :]) * gather(y0, x1)
        + (ly[:, :, None] * hx[:, None, :]) * gather(y1, x0)
        + (ly[:, :, None] * lx[:, None, :]) * gather(y1, x1)
    )
    value = value * (~(y_out[:, :, None] | x_out[:, None, :])).to(value.dtype)
    n = rois.shape[0]
    pooled = value.reshape(channels, n, size, grid, size, grid).sum(dim=(3, 5)) / (grid * grid)
    return pooled.permute(1, 0, 2, 3).contiguous()


def multiscale_roi_align(maps: list, boxes: torch.Tensor, levels_spec: dict, pool: dict) -> torch.Tensor:
    """MultiScaleRoIAlign for one image: each box pooled on the FPN level its size maps to."""
    scales = levels_spec["pool_scales"]
    maps = [maps[i] for i in levels_spec["pooled_levels"]]
    size, ratio = pool["size"], pool["sampling_ratio"]
    if len(maps) == 1:
        return roi_align(maps[0], boxes, size, scales[0], ratio)
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    target = torch.floor(4 + torch.log2(s / 224) + torch.tensor(1e-6, dtype=s.dtype))
    levels = torch.clamp(target, min=k_min, max=k_max).to(torch.int64) - k_min
    out = maps[0].new_zeros((boxes.shape[0], maps[0].shape[0], size, size))
    for level, (feature, scale) in enumerate(zip(maps, scales)):
        index = torch.where(levels == level)[0]
        out[index] = roi_align(feature, boxes[index], size, scale, ratio)
    return out


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's paste_masks_in_image (padding 1): [N, M, M] probabilities into [N, H, W]."""
    m = masks.shape[-1]
    scale = float(m + 2) / m
    padded = F.pad(masks[:, None], (1, 1, 1, 1))
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c, y_c = (boxes[:, 2] + boxes[:, 0]) * 0.5, (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], 1).to(torch.int64)
    out = masks.new_zeros((masks.shape[0], height, width))
    for i, (mask, box) in enumerate(zip(padded, expanded.tolist())):
        w, h = max(int(box[2] - box[0] + 1), 1), max(int(box[3] - box[1] + 1), 1)
        resized = F.interpolate(mask[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        x0, x1 = max(box[0], 0), min(box[2] + 1, width)
        y0, y1 = max(box[1], 0), min(box[3] + 1, height)
        if x1 > x0 and y1 > y0:
            out[i, y0:y1, x0:x1] = resized[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]]
    return out


# --- decoders: network outputs -> per tile {boxes, scores, labels (0-based), masks} ---------------------------


def decode_dense(outputs, spec: dict) -> list:
    boxes, scores, labels = outputs
    found = []
    for b in range(boxes.shape[0]):
        keep = scores[b] >= spec["score_thresh"]
        bx, sc, lb = boxes[b][keep], scores[b][keep], labels[b][keep]
        kept = core.batched_nms(bx, sc, lb, spec["nms_thresh"])[: spec["max_detections"]]
        vote = spec.get("vote_thresh")  # YOLOv3 packages since box voting (yolo_net.VOTE_OVERLAP); None before
        voted = bx[kept] if vote is None else core.vote_boxes(bx, sc, lb, kept, vote)
        found.append({"boxes": voted, "scores": sc[kept], "labels": lb[kept]})
    return found


def decode_retinanet(outputs, spec: dict, tile: tuple) -> list:
    logits, deltas, anchors = outputs
    found = []
    for b in range(logits.shape[0]):
        boxes_all, scores_all, labels_all = [], [], []
        start = 0
        for n in spec["level_sizes"]:
            level_logits, level_deltas = logits[b, start : start + n], deltas[b, start : start + n]
            level_anchors = anchors[start : start + n]
            start += n
            k = level_logits.shape[-1]
            scores = torch.sigmoid(level_logits).flatten()
            keep = scores > spec["score_thresh"]
            scores = scores[keep]
            index = torch.where(keep)[0]
            scores, top = scores.topk(min(spec["topk_candidates"], index.shape[0]))
            index = index[top]
            anchor_index = torch.div(index, k, rounding_mode="floor")
            boxes = decode_boxes(
                level_deltas[anchor_index], level_anchors[anchor_index], spec["weights"], spec["clip"]
            )[:, 0]
            boxes_all.append(clip_boxes(boxes, spec["resized"]))
            scores_all.append(scores)
            labels_all.append(index % k)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        kept = core.batched_nms(boxes, scores, labels, spec["nms_thresh"])[: spec["detections_per_img"]]
        found.append(
            {"boxes": _to_tile(boxes[kept], spec["resized"], tile), "scores": scores[kept], "labels": labels[kept] - 1}
        )  # index 0 never fires (num_classes + 1 logits)
    return found


def _to_tile(boxes: torch.Tensor, resized, tile) -> torch.Tensor:
    """transform.postprocess: boxes from the resized image back to the tile's pixels."""
    ratio_h = torch.tensor(tile[0], dtype=torch.float32) / torch.tensor(resized[0], dtype=torch.float32)
    ratio_w = torch.tensor(tile[1], dtype=torch.float32) / torch.tensor(resized[1], dtype=torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)
    return torch.stack((x0 * ratio_w, y0 * ratio_h, x1 * ratio_w, y1 * ratio_h), dim=1)


def decode_rcnn(network, outputs, spec: dict, tile: tuple) -> list:
    objectness, deltas, anchors, *maps = outputs
    rpn, box = spec["rpn"], spec["box"]
    resized = spec["resized"]
    found = []
    for b in range(objectness.shape[0]):
        proposals = decode_boxes(deltas[b], anchors, rpn["weights"], rpn["clip"])[:, 0]
        picked, start = [], 0
        for n in spec["level_sizes"]:
            picked.append(objectness[b, start : start + n].topk(min(rpn["pre_nms_top_n"], n))[1] + start)
            start += n
        top = torch.cat(picked)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(spec["level_sizes"])])[top]
        boxes, scores = clip_boxes(proposals[top], resized), torch.sigmoid(objectness[b, top])
        keep = small_boxes(boxes, rpn["min_size"])
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = torch.where(scores >= rpn["score_thresh"])[0]
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = core.batched_nms(boxes, scores, levels, rpn["nms_thresh"])[: rpn["post_nms_top_n"]]
        proposals = boxes[keep]
        image_maps = [m[b] for m in maps]
        if "cascade" in spec:
            pred, probs = cascade_stages(network, image_maps, proposals, spec)
        else:
            with torch.no_grad():
                logits, regression = network.box_stage(
                    multiscale_roi_align(image_maps, proposals, spec, spec["box_pool"])
                )
            pred = clip_boxes(decode_boxes(regression, proposals, box["weights"], box["clip"]), resized)
            probs = F.softmax(logits, -1)
        k = probs.shape[1]
        labels = torch.arange(k).view(1, -1).expand_as(probs)
        pred, probs, labels = pred[:, 1:].reshape(-1, 4), probs[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(probs > box["score_thresh"])[0]
        pred, probs, labels = pred[keep], probs[keep], labels[keep]
        keep = small_boxes(pred, 1e-2)
        pred, probs, labels = pred[keep], probs[keep], labels[keep]
        keep = core.batched_nms(pred, probs, labels, box["nms_thresh"])[: box["detections_per_img"]]
        pred, probs, labels = pred[keep], probs[keep], labels[keep]
        item = {"boxes": _to_tile(pred, resized, tile), "scores": probs, "labels": labels - 1}
        if "mask_pool" in spec:
            with torch.no_grad():
                mask_logits = network.mask_stage(multiscale_roi_align(image_maps, pred, spec, spec["mask_pool"]))
            probs_m = mask_logits.sigmoid()[torch.arange(pred.shape[0]), labels]
            item["masks"] = paste_masks(probs_m, item["boxes"], tile[0], tile[1]) > 0.5
        found.append(item)
    return found


def cascade_stages(network, image_maps: list, proposals: torch.Tensor, spec: dict) -> tuple:
    """Cascade R-CNN's box stages: each pools the boxes the previous stage refined and regresses class-agnostic
    deltas with its own coder weights. Returns the last stage's boxes (one per class, [N, K, 4]) and the class
    probabilities averaged over the stages [N, K]."""
    probabilities = []
    for stage, weights in enumerate(spec["cascade"]):
        with torch.no_grad():
            logits, deltas = getattr(network, f"box_stage{stage}")(
                multiscale_roi_align(image_maps, proposals, spec, spec["box_pool"])
            )
        probabilities.append(F.softmax(logits, -1))
        proposals = clip_boxes(decode_boxes(deltas, proposals, weights, spec["box"]["clip"])[:, 0], spec["resized"])
    probs = torch.stack(probabilities).mean(0)
    return proposals[:, None].expand(-1, probs.shape[1], -1), probs


class GpjobsObjectDetector(TiledPRF):
    """Network outputs -> detections per tile -> features in block pixel coordinates."""

    def initialize(self, **kwargs) -> None:
        super().initialize(**kwargs)
        if "model" not in kwargs:
            return
        if self.spec.get("output") not in ("boxes", "instances"):
            raise core.InferenceError(
                f"{os.path.basename(__file__)} runs object detection packages; this one's "
                f"network gives {self.spec.get('output')!r}: use the .emd's "
                f"InferenceFunction ({self.emd.get('InferenceFunction')})"
            )
        self.values = [int(v) for v in self.spec["index_values"]]
        self.names = {int(c["Value"]): str(c["Name"]) for c in self.classes}

    def extra_parameters(self) -> list:
        return [
            core.parameter(
                "threshold", 0.5, "Confidence Score Threshold [0.0, 1.0]", "Detections scoring lower are dropped"
            ),
            core.parameter("nms_overlap", 0.1, "NMS Overlap", "Maximum allowed overlap within each chip"),
            core.parameter(
                "exclude_pad_detections",
                "True",
                "Filter Outer Padding Detections",
                "Drop detections centred in a tile's padding (the neighbouring tile owns them)",
                "string",
                ["True", "False"],
            ),
        ]

    def configure(self, scalars: dict) -> None:
        self.threshold = float(scalars.get("threshold", 0.5))
        self.nms_overlap = float(scalars.get("nms_overlap", 0.1))
        self.exclude_pad = core.truthy(scalars.get("exclude_pad_detections", "True"))

    def getFields(self) -> str:
        return json.dumps(
            {
                "fields": [
                    {"name": "OID", "type": "esriFieldTypeOID", "alias": "OID"},
                    {"name": "Class", "type": "esriFieldTypeString", "alias": "Class"},
                    {"name": "Confidence", "type": "esriFieldTypeDouble", "alias": "Confidence"},
                    {"name": "ClassValue", "type": "esriFieldTypeInteger", "alias": "Class Value"},
                    {"name": "Shape", "type": "esriFieldTypeGeometry", "alias": "Shape"},
                ]
            }
        )

    def getGeometryType(self) -> int:
        return POLYGON

    def detect(self, tiles: np.ndarray) -> list:
        """Per tile: {boxes xyxy px, scores, labels 0-based, (masks)} as the model's detect() gives them."""
        x = self.normalizer(tiles, self.device)
        found = []
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size]
            with torch.no_grad():
                outputs = tuple(o.cpu() for o in self.network(chunk))
            decoder = self.spec.get("decoder")
            if decoder == "dense":
                found += decode_dense(outputs, self.spec)
            elif decoder == "retinanet":
                found += decode_retinanet(outputs, self.spec, tuple(chunk.shape[-2:]))
            else:
                found += decode_rcnn(self.network, outputs, self.spec, tuple(chunk.shape[-2:]))
        return found

    def vectorize(self, **pixelBlocks) -> dict:
        pixels = np.asarray(pixelBlocks["raster_pixels"])
        self.normalizer.check(pixels)
        pixels, _ = core.mask_invalid(pixels, pixelBlocks.get("raster_mask"))
        features: list[dict] = []
        inner = self.tile - 2 * self.padding
        for index, det in enumerate(self.detect(self.tiles_of(pixels))):
            row, col = divmod(index, self.cols)
            keep = det["scores"] >= self.threshold
            det = {k: v[keep] for k, v in det.items()}
            kept = core.batched_nms(det["boxes"], det["scores"], det["labels"], self.nms_overlap)
            det = {k: v[kept] for k, v in det.items()}
            boxes = det["boxes"].numpy().astype(np.float64)
            if self.exclude_pad and self.padding:
                cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
                inside = (
                    (cx >= self.padding)
                    & (cx < self.padding + inner)
                    & (cy >= self.padding)
                    & (cy < self.padding + inner)
                )
            else:
                inside = np.ones(len(boxes), dtype=bool)
            offset = np.array([col * inner - self.padding, row * inner - self.padding] * 2, dtype=np.float64)
            for i in np.nonzero(inside)[0].tolist():
                label = int(det["labels"][i])
                value = self.values[label] if 0 <= label < len(self.values) else label + 1
                if "masks" in det:
                    rings = [
                        [[x + offset[0], y + offset[1]] for x, y in ring]
                        for ring in core.mask_outline(det["masks"][i].numpy())
                    ]
                    if not rings:
                        continue
                else:
                    rings = core.box_rings(boxes[i : i + 1] + offset)[0]
                features.append(
                    {
                        "attributes": {
                            "OID": len(features) + 1,
                            "Class": self.names.get(value, str(value)),
                            "Confidence": round(100.0 * float(det["scores"][i]), 4),
                            "ClassValue": value,
                        },
                        "geometry": {"rings": rings},
                    }
                )
        return {"output_vectors": json.dumps({"features": features})}
