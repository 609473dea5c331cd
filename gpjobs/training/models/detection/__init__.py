"""Object detection model types: FASTERRCNN, RETINANET, SSD, YOLOV3, MASKRCNN (families land module by module)."""

from __future__ import annotations
