"""IMAGECAPTIONER: ResNet + attention LSTM on a tiny ImageCaptioning export (captions name colour and corner)."""

from __future__ import annotations

import math

import pytest
import torch

from gpjobs.catalog import ArgumentError, lookup_model_type, parse_arguments
from gpjobs.training.events import ListReporter
from gpjobs.training.protocol import ExitCode
from tests.builders.exports import write_image_captioning
from tests.training.helpers import dlpk_members, emd_of, epochs_of, make_spec, result_of, train
from tests.training.inprocess import predict_lines

torch.set_num_threads(1)

SMALL = {"vocab_min_freq": 1, "decoder_params": {"embed_size": 32, "hidden_size": 48, "attention_size": 32}}
COMMON = dict(
    backbone_model="RESNET18",
    max_epochs=3,
    stop_training=False,
    freeze_model=False,
    learning_rate=0.005,
    batch_size=4,
    arguments=SMALL,
)
# the learning run: 5 epochs. At 3 the token accuracy sat on the test's 0.2 bar (exactly 0.2, a failure, in 3 of
# seeds 0-4, since augment is off from random weights); at 5 it is 0.30 or more over seeds 0-9, and the loss
# falls by 19 % or more (tests/learning_margins.py "captioner")
LEARN = {**COMMON, "max_epochs": 5}


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("captions")
    folder = write_image_captioning(tmp, n=16, size=32, captions_per_chip=1)
    spec = make_spec(tmp / "a", [folder], "IMAGECAPTIONER", **LEARN)
    code, reporter = train(spec)
    assert code == ExitCode.OK, [e for e in reporter.events if e["type"] in ("failed", "message")]
    return spec, folder, reporter


def test_beam_search_matches_teacher_forcing_on_its_own_output():
    """The beam search's best caption is one the decoder scores step by step the same way (same network)."""
    from gpjobs.training.backbones import build_backbone
    from gpjobs.training.models.captioning_net import CaptionNet

    torch.manual_seed(0)
    net = CaptionNet(
        build_backbone("RESNET18", 3),
        (32, 32),
        9,
        embed_size=8,
        hidden_size=16,
        attention_size=8,
        dropout=0.0,
        bos=2,
        eos=3,
        max_len=6,
        beam_width=1,
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, _ = net(images)
        ids = torch.cat([torch.full((2, 1), 2), tokens], 1)
        logits, _ = net.teacher_forced(images, ids)
    # width 1 = greedy: every chosen word is the arg-max of the teacher-forced step (until the end token)
    for row in range(2):
        for t in range(tokens.shape[1]):
            assert int(logits[row, t].argmax()) == int(tokens[row, t])
            if int(tokens[row, t]) == 3:
                break


def test_corpus_bleu():
    from gpjobs.training.models.captioning_net import corpus_bleu

    ref = [["a", "red", "square", "in", "the", "top", "left", "corner"]]
    assert corpus_bleu([ref[0]], [ref]) == pytest.approx(1.0)
    assert corpus_bleu([["a", "red", "square"]], [ref]) == 0.0  # no 4-gram: NLTK's unsmoothed value
    short = corpus_bleu([ref[0][:6]], [ref])  # every n-gram matches: only the brevity penalty is left
    assert short == pytest.approx(math.exp(1 - 8 / 6))


@pytest.mark.slow  # trains a captioner (caption_run)
def test_captioner_learns_and_packages(caption_run):
    _, _, reporter = caption_run
    epochs = epochs_of(reporter)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    metrics = result_of(reporter)["metrics"]
    assert 0.0 <= metrics["corpus_bleu"] <= 1.0 and 0.2 < metrics["accuracy"] <= 1.0, metrics
    result = result_of(reporter)
    assert {
        "model.emd",
        "model.pth",
        "model.pt",
        "GpjobsImageCaptioner.py",
        "gpjobs_prf_core.py",
        "model_metrics.html",
        "ModelCharacteristics/loss_graph.png",
        "ModelCharacteristics/show_results.png",
    } <= dlpk_members(result["package"])
    emd = emd_of(result)
    assert emd["ModelName"] == "ImageCaptioner" and emd["ModelType"] == "ImageCaptioner"
    assert emd["InferenceFunction"] == "GpjobsImageCaptioner.py" and emd["GpjobsInference"]["output"] == "captions"
    assert emd["ModelConfiguration"] == "_image_captioner_inference" and emd["MetaDataMode"] == "ImageCaptioning"
    assert emd["Vocabulary"][:4] == ["xxpad", "xxunk", "xxbos", "xxeos"] and "corner" in emd["Vocabulary"]
    assert emd["ModelParameters"]["decoder_params"]["embed_size"] == 32
    assert float(emd["accuracy"]) == pytest.approx(metrics["accuracy"], rel=1e-3)
    assert float(emd["corpus_bleu"]) == pytest.approx(metrics["corpus_bleu"], abs=1e-4)


@pytest.mark.slow  # trains a captioner (caption_run)
def test_predict_reproduces_validation(caption_run, capsys):
    from gpjobs.training.data import open_training_data
    from gpjobs.training.models.captioning_net import corpus_bleu

    spec, folder, reporter = caption_run
    result = result_of(reporter)
    data = open_training_data([folder], task="captioning", validation_percent=spec.request.validation_percent, seed=42)
    chips = [r.image for r in data.valid.records]
    lines = predict_lines(capsys, result["package"], chips)
    assert len(lines) == len(chips) and all(line["caption"] for line in lines)
    references = [[c.rstrip(".").split() + ["."] for c in captions] for captions in data.valid.captions]
    assert corpus_bleu([line["words"] for line in lines], references) == pytest.approx(
        result["metrics"]["corpus_bleu"], abs=1e-9
    )


@pytest.mark.slow  # trains a captioner (caption_run)
def test_resume_after_interrupt_gives_the_same_numbers(caption_run, tmp_path):
    spec, folder, straight = caption_run

    class StopAfterEpoch1(ListReporter):
        def emit(self, event_type, **fields):
            super().emit(event_type, **fields)
            if event_type == "epoch" and fields["epoch"] == 1:
                self.request_cancel()

    spec = make_spec(tmp_path, [folder], "IMAGECAPTIONER", **LEARN)
    code, _ = train(spec, StopAfterEpoch1())
    assert code == ExitCode.CANCELLED and spec.checkpoint_path.is_file()
    code, resumed = train(spec)
    assert code == ExitCode.OK
    assert [e["epoch"] for e in epochs_of(resumed)] == [2, 3, 4, 5]
    assert [e["valid_loss"] for e in epochs_of(resumed)] == [e["valid_loss"] for e in epochs_of(straight)][1:]
    assert result_of(resumed)["metrics"] == result_of(straight)["metrics"]


def test_arguments_and_bad_data_get_fix_it_errors(tmp_path):
    info = lookup_model_type("IMAGECAPTIONER")
    with pytest.raises(ArgumentError, match="unknown key 'embed'.*embed_size"):
        parse_arguments(info, {"decoder_params": '{"embed": 10}'})
    with pytest.raises(ArgumentError, match="teacher_forcing: 2 is out of range; use a number from 0 to 1"):
        parse_arguments(info, {"decoder_params": {"teacher_forcing": 2}})
    folder = write_image_captioning(tmp_path, n=8, size=32)
    label = sorted((folder / "labels").iterdir())[1]
    label.write_text("")
    code, reporter = train(make_spec(tmp_path, [folder], "IMAGECAPTIONER", **COMMON))
    failed = [e for e in reporter.events if e["type"] == "failed"][0]
    assert code == ExitCode.BAD_INPUT and any(f"labels/{label.name}" in d for d in failed["details"])
    label.write_text(sorted((folder / "labels").iterdir())[0].read_text())
    code, reporter = train(
        make_spec(tmp_path, [folder], "IMAGECAPTIONER", **{**COMMON, "arguments": {**SMALL, "vocab_min_freq": 1000}})
    )
    failed = [e for e in reporter.events if e["type"] == "failed"][0]
    assert code == ExitCode.BAD_INPUT and "vocab_min_freq" in " ".join(failed["details"])


@pytest.mark.heavy
def test_captioner_learns_to_caption(tmp_path):
    """Colour and corner words come from the pixels: BLEU-4 well above a template-only caption's."""
    folder = write_image_captioning(tmp_path, n=36, size=32, captions_per_chip=1)
    spec = make_spec(tmp_path, [folder], "IMAGECAPTIONER", **{**COMMON, "max_epochs": 12, "learning_rate": 0.003})
    code, reporter = train(spec)
    assert code == ExitCode.OK
    assert result_of(reporter)["metrics"]["corpus_bleu"] > 0.4, epochs_of(reporter)
