"""Each detector *learns* on a tiny easy export on CPU: the Esri-style AP (IoU 0.1, the family's own score
threshold, as arcgis.learn reports it) reaches a meaningful value from random backbone weights.

Settings found by measurement (see the DETECTION-2 report): GroupNorm in the FPN and RetinaNet head, anchors at
least 4 strides wide and gradient-norm clipping are what made the R-CNNs and RetinaNet learn at this budget.
Measured on the shared 2-core machine under load: FASTERRCNN 76 s, RETINANET 69 s, SSD 35 s, MASKRCNN 148 s; they
are `slow`. YOLOV3 learns since its head normalises with GroupNorm, Darknet-53's residual branches start at
zero and it trains with YOLOv5's targets and loss (yolo_net.py): best AP 0.77 at 3e-3 (0.39 at 1e-3) in
150-280 s under load, where the YOLOv3 paper's loss stayed at AP 0.0 (issue #17).
"""

from __future__ import annotations

import pytest

from tests.builders.exports import write_pascal_voc, write_rcnn_masks
from tests.training.helpers import train_and_package

SMALL_RCNN = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 64,
    "box_detections_per_img": 20,
}

CASES = {
    # model_type: (builder, chip px, chips, backbone, epochs, learning rate, arguments)
    "FASTERRCNN": (write_pascal_voc, 32, 32, "RESNET18", 6, 1e-3, SMALL_RCNN),
    # the mask loss makes the validation loss noisy at this budget: keep the epoch with the best AP instead
    "MASKRCNN": (write_rcnn_masks, 32, 32, "RESNET18", 6, 1e-3, {**SMALL_RCNN, "monitor": "average_precision"}),
    # 64 px: RetinaNet's finest level is stride 8, too coarse for the 8-14 px squares of 32 px chips
    "RETINANET": (write_pascal_voc, 64, 32, "RESNET18", 10, 2e-3, {}),
    "SSD": (write_pascal_voc, 64, 48, "RESNET18", 15, 3e-3, {}),
    "YOLOV3": (write_pascal_voc, 32, 32, None, 6, 3e-3, {}),  # Darknet-53, its only backbone
}


@pytest.mark.slow
@pytest.mark.timeout(900)
# Minutes of CPU each, and a few dozen steps from random weights sit near the AP 0.3 bar: on a loaded machine
# RETINANET and MASKRCNN each missed it once. `make test-heavy` runs them; `make test` does not.
@pytest.mark.heavy
@pytest.mark.parametrize("model_type", sorted(CASES))
def test_detector_reaches_a_meaningful_esri_ap(tmp_path, model_type):
    builder, size, n, backbone, epochs, lr, arguments = CASES[model_type]
    run = train_and_package(
        tmp_path,
        builder(tmp_path, n=n, size=size),
        model_type,
        backbone_model=backbone,
        max_epochs=epochs,
        batch_size=4,
        learning_rate=lr,
        freeze_model=False,
        stop_training=False,
        arguments=arguments,
    )
    epochs = run.epochs
    trace = [
        (e["epoch"], round(e["train_loss"], 3), round(e["valid_loss"], 3), round(e["metrics"]["average_precision"], 3))
        for e in epochs
    ]
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"], trace
    best = run.metrics
    # the package keeps the best epoch (of the monitored value); its AP is the one the user sees in the .emd
    assert best["average_precision"] >= 0.3, trace
    assert max(e["metrics"]["average_precision"] for e in epochs) >= 0.3, trace
