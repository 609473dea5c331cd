"""Object detection model types: FASTERRCNN, RETINANET, SSD, YOLOV3 and MASKRCNN on the shared engine.

`FAMILIES` maps each model_type to its ModelFamily (see common.py for what every detector model provides).
"""

from __future__ import annotations

from gpjobs.training.models.detection.rcnn import FasterRCNNFamily, MaskRCNNFamily
from gpjobs.training.models.detection.retinanet import RetinaNetFamily
from gpjobs.training.models.detection.ssd import SSDFamily
from gpjobs.training.models.detection.yolov3 import YOLOv3Family

FAMILIES = {
    "FASTERRCNN": FasterRCNNFamily,
    "MASKRCNN": MaskRCNNFamily,
    "RETINANET": RetinaNetFamily,
    "SSD": SSDFamily,
    "YOLOV3": YOLOv3Family,
}

__all__ = ["FAMILIES", "FasterRCNNFamily", "MaskRCNNFamily", "RetinaNetFamily", "SSDFamily", "YOLOv3Family"]
