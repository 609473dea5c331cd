"""Look, don't read: the job page's live loss chart and progress bar, and a finished model's card served from its
package (job page links, item page shows it)."""

from __future__ import annotations

import math
import zipfile

import pytest

from gpjobs import messages as texts
from gpjobs.domain import Item, Message, MessageType, new_item_id
from gpjobs.web import charts
from tests.builders.exports import write_classified_tiles
from tests.harness.app import app_config, make_app, start_app
from tests.unit.web.conftest import TASK, Server

INFO = MessageType.INFORMATIVE
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture()
async def portal_server(tmp_path):
    share = tmp_path / "share"
    write_classified_tiles(share / "exports", n=2, name="seg")
    app = make_app(app_config(tmp_path, file_shares={"default": str(share)}))
    srv = Server(await start_app(app), share)
    yield srv
    await srv.client.close()


def epoch_event(epoch: int, of: int = 4) -> dict:
    return {
        "epoch": epoch,
        "max_epochs": of,
        "train_loss": 1.0 / epoch,
        "valid_loss": 1.2 / epoch,
        "metrics": {"accuracy": 0.5 + epoch / 10, "miou": 0.25 * epoch},
        "seconds": 3.25,
        "best": epoch % 2 == 0,
    }


def test_epoch_lines_read_back_into_numbers():
    for epoch in (1, 2):
        point = charts.parse_epoch_line(texts.epoch_line(epoch_event(epoch)))
        assert point is not None and (point.epoch, point.max_epochs, point.best) == (epoch, 4, epoch == 2)
        assert point.values == pytest.approx(
            {"train_loss": 1 / epoch, "valid_loss": 1.2 / epoch, "accuracy": 0.5 + epoch / 10, "miou": 0.25 * epoch},
            abs=1e-4,
        )
    nan = texts.epoch_line({**epoch_event(1), "valid_loss": math.nan})
    assert math.isnan(charts.parse_epoch_line(nan).values["valid_loss"])
    for other in ("Submitted.", "Epoch 1/2 is running", "Epoch x/2, train_loss 1"):
        assert charts.parse_epoch_line(other) is None


def test_a_resumed_epoch_keeps_its_latest_line_and_long_jobs_are_sampled():
    lines = [texts.epoch_line(epoch_event(e, 3)) for e in (1, 2, 2, 3)]
    history = charts.epoch_history(Message(i, INFO, t) for i, t in enumerate(lines))
    assert [p.epoch for p in history] == [1, 2, 3]
    many = [charts.EpochPoint(e, 10_000, {"train_loss": 1 / e}) for e in range(1, 10_001)]
    [loss] = charts.job_charts(many)
    drawn = loss["lines"][0]["points"].split()
    assert len(drawn) == charts.MAX_POINTS and drawn[-1].startswith(f"{charts.WIDTH - charts.PAD_RIGHT}")


def test_the_monitored_metric_gets_its_own_chart():
    history = [
        charts.EpochPoint(e, 3, {"train_loss": 1 / e, "valid_loss": 1 / e, "accuracy": e / 3, "miou": e / 4})
        for e in (1, 2, 3)
    ]
    loss, metric = charts.job_charts(history, "miou")
    assert (loss["title"], metric["title"]) == ("Loss per epoch", "miou per epoch")
    assert [line["monitored"] for line in metric["lines"]] == [True]
    loss, metric = charts.job_charts(history, "valid_loss")
    assert metric["title"] == "accuracy per epoch" and [line["monitored"] for line in loss["lines"]] == [False, True]
    assert charts.job_charts([]) == []


async def test_the_running_job_page_draws_the_chart_and_the_progress(portal_server: Server):
    server = portal_server
    job_id = (await server.submit())["jobId"]
    await server.store.claim_next_job("cpu", "b")
    await server.store.record_progress(
        job_id, progress=55.0, messages=[(INFO, texts.epoch_line(epoch_event(e))) for e in (1, 2)]
    )
    page = await (await server.client.get(f"{TASK}/jobs/{job_id}", params={"f": "html"})).text()
    assert page.count("<svg") == 2 and page.count("<polyline") == 3  # train + valid loss, then accuracy
    assert "Epoch 2 of 4" in page and "width: 55.0%" in page
    assert "<script>" in page and 'data-terminal="false"' in page  # it updates itself


async def test_a_finished_job_links_its_card_served_from_the_package(portal_server: Server, tmp_path):
    server = portal_server
    job_id = (await server.submit())["jobId"]
    await server.store.claim_next_job("cpu", "b")
    package = tmp_path / "m1.dlpk"
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("m1.emd", "{}")
        zf.writestr("model_metrics.html", "<h2>m1</h2><script>alert(1)</script>")
        zf.writestr("ModelCharacteristics/show_results.png", PNG)
    item = Item(
        id=new_item_id(),
        owner="anonymous",
        title="m1",
        name="m1.dlpk",
        path=str(package),
        job_id=job_id,
        size=package.stat().st_size,
        properties={"modelType": "UNET", "metrics": {"accuracy": 0.9}},
    )
    await server.store.publish_job(job_id, result={"id": item.id}, item=item)
    page = await (await server.client.get(f"{TASK}/jobs/{job_id}", params={"f": "html"})).text()
    card = f"/sharing/rest/content/items/{item.id}/card"
    assert f'href="{card}/model_metrics.html"' in page and f'src="{card}/show_results.png"' in page
    assert 'data-terminal="true"' in page and "<script>" not in page  # a finished job's page stays still

    html = await server.client.get(f"{card}/model_metrics.html")
    assert html.status == 200 and html.content_type == "text/html" and "<h2>m1</h2>" in await html.text()
    assert html.headers["Content-Security-Policy"].startswith("sandbox")  # the fragment's script cannot run
    picture = await server.client.get(f"{card}/show_results.png")
    assert picture.content_type == "image/png" and await picture.read() == PNG
    for bad in ("m1.emd", "..%2Fm1.emd", "model.pth", "loss_graph.png"):
        body = await (await server.client.get(f"{card}/{bad}", params={"f": "json"})).json()
        assert body["error"]["code"] == 400, bad

    item_page = await (await server.client.get(f"/sharing/rest/content/items/{item.id}", params={"f": "html"})).text()
    assert f'src="{card}/show_results.png"' in item_page and f'src="{card}/model_metrics.html"' in item_page
    assert "accuracy <b>0.9000</b>" in item_page
    record = await server.json("GET", f"/sharing/rest/content/items/{item.id}", params={"f": "json"})
    assert record["id"] == item.id  # the json record is unchanged


async def test_a_file_share_output_has_its_card_under_the_job(portal_server: Server):
    server = portal_server
    job_id = (await server.submit(output_name='{"uri": "/fileShares/default/models"}'))["jobId"]
    await server.store.claim_next_job("cpu", "b")
    (server.share / "models").mkdir()
    with zipfile.ZipFile(server.share / "models" / "models.dlpk", "w") as zf:
        zf.writestr("ModelCharacteristics/show_results.png", PNG)
    await server.store.publish_job(job_id, result={"uri": "/fileShares/default/models/models.dlpk"})
    page = await (await server.client.get(f"{TASK}/jobs/{job_id}", params={"f": "html"})).text()
    assert f'src="{TASK}/jobs/{job_id}/card/show_results.png"' in page
    picture = await server.client.get(f"{TASK}/jobs/{job_id}/card/show_results.png")
    assert await picture.read() == PNG
    missing = await server.json("GET", f"{TASK}/jobs/{job_id}/card/model_metrics.html", params={"f": "json"})
    assert "has no model_metrics.html" in missing["error"]["message"]
