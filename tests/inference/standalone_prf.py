"""Run an unzipped package's raster function on one pixel block with nothing but the standard library, numpy
and torch: gpjobs, torchvision, rasterio, tifffile and Pillow are refused at import. Run as a script by
tests/inference/test_standalone.py, with the test venv's Python or an older torch's (.venv-torch20).

    python standalone_prf.py JOBS.json
JOBS.json lists [PACKAGE_FOLDER, BLOCKS.npz, ARGUMENTS, OUT.npz] (one interpreter, one torch import, for all).
BLOCKS.npz holds the pixel blocks by name (raster_pixels, raster2_pixels, or rasters_pixels stacked);
OUT.npz gets `pixels` (updatePixels) and/or `features` (vectorize's JSON; a panoptic function gives both),
and `torch` (the version used). A tracker package (no raster function) takes BLOCKS.npz `frames` (T, H, W, C)
and ARGUMENTS `first_box` [x, y, w, h]; OUT.npz gets per later frame `boxes` [x, y, w, h], `scores` and
`mask_pixels`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path

REFUSED = {"gpjobs", "torchvision", "rasterio", "tifffile", "PIL", "imagecodecs", "tests"}


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError(f"{name} is not available where ArcGIS runs a package")
        return None


def run(folder: str, blocks_path: str, arguments: dict, out: str) -> None:
    import numpy as np
    import torch

    folder_path = Path(folder)
    emd_path = next(folder_path.glob("*.emd"))
    emd = json.loads(emd_path.read_text())
    prf_path = folder_path / emd["InferenceFunction"]
    spec = importlib.util.spec_from_file_location(prf_path.stem, prf_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prf = getattr(module, prf_path.stem)()
    prf.initialize(model=str(emd_path), device=-1)
    blocks = dict(np.load(blocks_path))
    if "frames" in blocks:
        track(prf, blocks["frames"], arguments["first_box"], out)
        return
    params = prf.getParameterInfo()
    scalars = {p["name"]: str(p["value"]) for p in params if p.get("value") is not None}
    scalars.update({k: str(v) for k, v in arguments.items()})
    prf.getConfiguration(**scalars)
    if "rasters_pixels" in blocks:
        chips = list(blocks["rasters_pixels"])
        result = prf.vectorize(rasters_pixels=chips, rasters_mask=[np.ones_like(c, np.uint8) for c in chips])
        np.savez(out, features=json.dumps(json.loads(result["output_vectors"])), torch=torch.__version__)
        return
    for name in list(blocks):
        blocks[name.replace("_pixels", "_mask")] = np.ones_like(blocks[name], np.uint8)
    results = {}
    if hasattr(prf, "updatePixels"):
        info = prf.updateRasterInfo(output_info={"bandCount": 1, "pixelType": "f4", "cellSize": (1.0, 1.0)})
        props = {"pixelType": info["output_info"]["pixelType"]}
        results["pixels"] = prf.updatePixels(None, None, props, **dict(blocks))["output_pixels"]
    if hasattr(prf, "vectorize"):
        results["features"] = prf.vectorize(**dict(blocks))["output_vectors"]
    np.savez(out, torch=torch.__version__, **results)


def track(tracker, frames, first_box: list, out: str) -> None:
    """init on the first frame, update on every later one (arcgis.learn's SiamMask calls)."""
    import numpy as np
    import torch

    tracker.init(frames[0], [first_box])
    boxes, scores, pixels = [], [], []
    for frame in frames[1:]:
        (found,) = tracker.update(frame)
        boxes.append(found.bbox)
        scores.append(found.score)
        pixels.append(int(found.mask.sum()))
    np.savez(
        out, boxes=np.asarray(boxes), scores=np.asarray(scores), mask_pixels=np.asarray(pixels), torch=torch.__version__
    )


def main(jobs: str) -> None:
    sys.meta_path.insert(0, Refuse())
    import torch

    torch.set_num_threads(1)
    for job in json.loads(Path(jobs).read_text()):
        run(*job)


if __name__ == "__main__":
    main(sys.argv[1])
