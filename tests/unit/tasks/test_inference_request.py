"""The inference tasks' parameters, as clients send them, into one typed request; every bad input is an error
that names its parameter, found at submit (no job is queued for it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpjobs.paths import StoreRoots
from gpjobs.tasks import classify_objects, classify_pixels, detect_change, detect_objects
from gpjobs.tasks.inference import InferenceRequest
from gpjobs.tasks.params import ParameterError
from gpjobs.tasks.registry import TASKS
from gpjobs.web.gp_params import parse_submit
from tests.builders.rasters import CELL, ORIGIN, write_emd_package, write_polygons, write_raster

SCENE = '{"uri": "/rasterStores/imagery/scene.tif"}'
UNET = '{"uri": "/fileShares/default/models/unet.dlpk"}'


@pytest.fixture()
def roots(tmp_path: Path) -> StoreRoots:
    share, imagery = tmp_path / "share", tmp_path / "imagery"
    write_raster(imagery / "scene.tif", width=64, height=48)
    write_raster(imagery / "scene4.tif", bands=4)
    write_raster(imagery / "scene16.tif", dtype="uint16")
    write_raster(imagery / "tiles" / "a.tif", seed=1)
    write_raster(imagery / "tiles" / "b.tif", seed=2)
    write_emd_package(share / "models" / "unet.dlpk")
    write_emd_package(share / "models" / "ssd.dlpk", function="GpjobsObjectDetector.py", model_type="SSD")
    write_emd_package(share / "models" / "tracker.dlpk", function="GpjobsObjectTracker.py", model_type="SIAMMASK")
    write_emd_package(share / "models" / "four.dlpk", bands=(0, 1, 2, 3))
    write_emd_package(share / "models" / "change.dlpk", function="GpjobsChangeDetector.py", model_type="CHANGEDETECTOR")
    (share / "models" / "notes.txt").write_text("not a model")
    (share / "models" / "broken.dlpk").write_bytes(b"PK not really")
    write_polygons(share / "objects.geojson", [(ORIGIN[0] + 2, ORIGIN[1] - 10, ORIGIN[0] + 10, ORIGIN[1] - 2)])
    write_polygons(share / "nogeometry.geojson", [(0, 0, 1, 1)], geometry=False)
    (share / "out").mkdir()
    return StoreRoots(file_shares={"default": share}, raster_stores={"imagery": imagery})


def submit(task: str, roots: StoreRoots, **fields: str) -> InferenceRequest:
    request = parse_submit({"f": "json", **fields}, roots, max_arguments_bytes=8192, task=TASKS[task]).request
    assert isinstance(request, InferenceRequest)
    return request


def problems(task: str, roots: StoreRoots, **fields: str) -> list[str]:
    with pytest.raises(ParameterError) as err:
        submit(task, roots, **fields)
    return err.value.details


def pixels(roots: StoreRoots, **fields: str) -> InferenceRequest:
    base = {"inputRaster": SCENE, "model": UNET, "outputClassifiedRaster": '{"name": "classes"}'}
    return submit(classify_pixels.TASK_NAME, roots, **{**base, **fields})


def pixel_problems(roots: StoreRoots, **fields: str) -> list[str]:
    base = {"inputRaster": SCENE, "model": UNET, "outputClassifiedRaster": '{"name": "classes"}'}
    return problems(classify_pixels.TASK_NAME, roots, **{**base, **fields})


def test_classify_pixels_as_the_arcgis_client_sends_it(roots: StoreRoots, tmp_path: Path) -> None:
    request = pixels(
        roots,
        outputClassifiedRaster=json.dumps(
            {"serviceProperties": {"name": "classes", "serviceUrl": None}, "itemProperties": {"itemId": "a" * 32}}
        ),
        modelArguments='{"padding": "8", "batch_size": 2}',
        processAllRasterItems="false",
        context='{"processorType": "CPU", "extent": {"xmin": 500001, "ymin": 3999980, "xmax": 500020, '
        '"ymax": 3999999, "spatialReference": {"wkid": 32617}}, "cellSize": 1}',
    )
    assert request.task == "ClassifyPixelsUsingDeepLearning" and request.model_type == "UNET"
    assert request.model.path == str(tmp_path / "share" / "models" / "unet.dlpk")
    assert request.inference_function == "GpjobsPixelClassifier.py"
    assert request.rasters[0].files == (str(tmp_path / "imagery" / "scene.tif"),)
    assert request.arguments == {"padding": "8", "batch_size": "2"}  # strings, as ArcGIS hands them to the PRF
    assert request.output.kind == "item" and request.output.replace_item_id == "a" * 32
    assert request.context.processor_type == "CPU" and request.cell_size == 1.0
    assert (request.extent.xmin, request.extent.wkid) == (500001.0, 32617)
    assert InferenceRequest.from_json_dict(json.loads(json.dumps(request.to_json_dict()))) == request
    assert request.to_json_dict()["context"]["processor_type"] == "CPU"  # where the claim looks for it


def test_outputs_name_an_item_or_a_file_on_a_share(roots: StoreRoots) -> None:
    assert pixels(roots, outputClassifiedRaster="classes").output.name == "classes"
    to_file = pixels(roots, outputClassifiedRaster='{"uri": "/fileShares/default/out/classes.tif"}').output
    assert (to_file.kind, to_file.name, to_file.alias) == ("uri", "classes", "/fileShares/default/out")
    assert pixels(roots, outputClassifiedRaster="/fileShares/default/out/c2").output.name == "c2"
    assert pixel_problems(roots, outputClassifiedRaster='{"uri": "/fileShares/default/missing/x.tif"}') == [
        "outputClassifiedRaster: the folder of '/fileShares/default/missing/x.tif' does not exist"
    ]


def test_a_folder_of_rasters_only_processed_separately(roots: StoreRoots) -> None:
    folder = '{"uri": "/rasterStores/imagery/tiles"}'
    [text] = pixel_problems(roots, inputRaster=folder)
    assert text.startswith("inputRaster: '/rasterStores/imagery/tiles' is a folder") and "PROCESS_ITEMS" in text
    request = pixels(roots, inputRaster=folder, processingMode="PROCESS_ITEMS_SEPARATELY")
    assert request.process_separately and [Path(f).name for f in request.rasters[0].files] == ["a.tif", "b.tif"]
    assert pixels(roots, inputRaster=folder, processAllRasterItems="true").process_separately


def test_bad_models_are_named_before_any_job_is_queued(roots: StoreRoots) -> None:
    assert pixel_problems(roots, model='{"uri": "/fileShares/default/models/notes.txt"}') == [
        "model: '/fileShares/default/models/notes.txt' is not a deep learning package (.dlpk)"
    ]
    [broken] = pixel_problems(roots, model='{"uri": "/fileShares/default/models/broken.dlpk"}')
    assert broken.startswith("model: '/fileShares/default/models/broken.dlpk': broken.dlpk is not a readable .dlpk")
    [wrong] = pixel_problems(roots, model='{"uri": "/fileShares/default/models/ssd.dlpk"}')
    assert wrong.startswith(
        "model: '/fileShares/default/models/ssd.dlpk' is a SSD package (raster function "
        "GpjobsObjectDetector.py), which runs with DetectObjectsUsingDeepLearning"
    )
    [tracker] = pixel_problems(roots, model='{"uri": "/fileShares/default/models/tracker.dlpk"}')
    assert "GpjobsObjectTracker.py is not one a raster analysis task runs" in tracker
    assert pixel_problems(roots, model="https://elsewhere/model.dlpk") == [
        "model: url 'https://elsewhere/model.dlpk' is not a .../content/items/<id> item url"
    ]
    assert pixel_problems(roots, model="") == [
        'model: required; use {"itemId": "<Deep Learning Package item id>"} or '
        '{"uri": "/fileShares/<store>/<model>.dlpk"}'
    ]


def test_rasters_that_do_not_fit_the_model(roots: StoreRoots) -> None:
    [bands] = pixel_problems(roots, model='{"uri": "/fileShares/default/models/four.dlpk"}')
    assert bands.startswith("inputRaster: scene.tif has 3 band(s) but the model reads bands [1, 2, 3, 4]")
    [dtype] = pixel_problems(roots, inputRaster='{"uri": "/rasterStores/imagery/scene16.tif"}')
    assert dtype.startswith("inputRaster: scene16.tif is uint16 but the model was trained on uint8 chips")
    assert pixels(roots, inputRaster='{"uri": "/rasterStores/imagery/scene4.tif"}').rasters  # extra bands: fine
    [url] = pixel_problems(roots, inputRaster='{"url": "https://server/ImageServer"}')
    assert url.startswith('inputRaster: expected {"uri": "/rasterStores/<store>/<path>"}')


def test_extent_outside_the_raster_and_bad_cell_sizes(roots: StoreRoots) -> None:
    far = {"xmin": 0, "ymin": 0, "xmax": 10, "ymax": 10}
    [outside] = pixel_problems(roots, context=json.dumps({"extent": far}))
    assert outside.startswith(
        "context: extent (0, 0, 10, 10) lies outside the raster, whose extent is "
        f"({ORIGIN[0]:g}, {ORIGIN[1] - 48 * CELL:g}, {ORIGIN[0] + 64 * CELL:g}, {ORIGIN[1]:g})"
    )
    assert outside.endswith("(inputRaster scene.tif)")
    # an extent in geographic coordinates (wkid 4326) is projected onto the raster first
    lon_lat = {"xmin": -81.01, "ymin": 36.13, "xmax": -80.99, "ymax": 36.15, "spatialReference": {"wkid": 4326}}
    assert pixels(roots, context=json.dumps({"extent": lon_lat})).extent.wkid == 4326
    lon_lat.update(xmin=-70.01, xmax=-69.99)
    assert "lies outside the raster" in pixel_problems(roots, context=json.dumps({"extent": lon_lat}))[0]
    assert pixel_problems(roots, context='{"cellSize": -1}') == [
        "context: cellSize '-1' must be a positive number in the raster's map units"
    ]
    assert pixel_problems(roots, context='{"extent": {"xmin": 5, "ymin": 0, "xmax": 1, "ymax": 1}}') == [
        "context: extent is empty (xmin must be below xmax and ymin below ymax)"
    ]
    assert pixel_problems(roots, context='{"processorType": "TPU"}') == [
        "context: processorType 'TPU' is not allowed; use CPU or GPU"
    ]


def test_detect_objects_nms_options(roots: StoreRoots) -> None:
    base = {
        "inputRaster": SCENE,
        "model": '{"uri": "/fileShares/default/models/ssd.dlpk"}',
        "outputObjects": '{"name": "objects"}',
    }
    assert submit(detect_objects.TASK_NAME, roots, **base, runNMS="false", confidenceScoreField="").nms is None
    nms = submit(detect_objects.TASK_NAME, roots, **base, runNMS="true", maxOverlapRatio="0.3").nms
    assert (nms.confidence_field, nms.class_field, nms.max_overlap_ratio) == ("Confidence", None, 0.3)
    assert problems(detect_objects.TASK_NAME, roots, **base, runNMS="true", maxOverlapRatio="2") == [
        "maxOverlapRatio: 2 is out of range; use a number from 0 to 1"
    ]


def test_classify_objects_needs_polygons(roots: StoreRoots) -> None:
    write_emd_package(
        roots.file_shares["default"] / "models" / "cls.dlpk",
        function="GpjobsObjectClassifier.py",
        model_type="FEATURE_CLASSIFIER",
    )
    base = {
        "inputRaster": SCENE,
        "model": '{"uri": "/fileShares/default/models/cls.dlpk"}',
        "outputFeatureClass": '{"name": "classified"}',
    }
    request = submit(
        classify_objects.TASK_NAME,
        roots,
        **base,
        classLabelField="Damage",
        inputFeatures='{"uri": "/fileShares/default/objects.geojson"}',
    )
    assert request.features.alias == "/fileShares/default/objects.geojson" and request.class_label_field == "Damage"
    assert submit(classify_objects.TASK_NAME, roots, **base).features is None  # every chip of the raster
    assert problems(
        classify_objects.TASK_NAME, roots, **base, inputFeatures='{"uri": "/fileShares/default/nogeometry.geojson"}'
    ) == [
        "inputFeatures: feature 0 of '/fileShares/default/nogeometry.geojson' has no geometry; Classify Objects "
        "needs a polygon around each object"
    ]


def test_detect_change_takes_two_rasters_and_the_arcgis_client_names(roots: StoreRoots) -> None:
    request = submit(
        detect_change.TASK_NAME,
        roots,
        fromRaster=SCENE,
        toRaster=SCENE,
        modelDefinition='{"uri": "/fileShares/default/models/change.dlpk"}',
        outputClassifiedRasterName='{"serviceProperties": {"name": "change"}}',
    )
    assert len(request.rasters) == 2 and request.output.name == "change" and request.model_type == "CHANGEDETECTOR"
    found = problems(detect_change.TASK_NAME, roots, fromRaster=SCENE, model=UNET, outputClassifiedRaster="c")
    assert found[0].startswith("toRaster: required;")
