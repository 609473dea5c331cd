"""Image captioning: IMAGECAPTIONER on ImageCaptioning exports (chips + caption labels).

The network is in captioning_net.py (ResNet spatial features, attention LSTM decoder, beam search). The
vocabulary is built from the training captions (`vocab_min_freq`) and stored in the `.emd`
(`Vocabulary`), so a package alone captions chips. Metrics: token accuracy under teacher forcing
(arcgis.learn's `accuracy`) and corpus BLEU-4 of the beam-searched captions against every reference
caption of each chip (`corpus_bleu`). `decoder_params.pretrained_emb` (fastText) needs a download, which
this server never does: the embeddings start random and a warning says so.

The package's GpjobsImageCaptioner.py captions the objects of Classify Objects Using Deep Learning: the
encoder and one decoder step are traced, the beam search runs in plain torch there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpjobs.catalog import DECODER_PARAMS_DEFAULTS, ArgumentError
from gpjobs.export.captions import Vocabulary
from gpjobs.training.backbones import build_backbone
from gpjobs.training.models.base import ModelFamily
from gpjobs.training.models.captioning_net import CaptionNet, CaptionSteps, caption_loss, corpus_bleu


class ImageCaptionerFamily(ModelFamily):
    emd_model_type = "ImageCaptioner"
    emd_model_configuration = "_image_captioner_inference"
    inference_function = "GpjobsImageCaptioner.py"  # Classify Objects Using Deep Learning: a caption per object

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.decoder = {**DECODER_PARAMS_DEFAULTS, **(self.args.get("decoder_params") or {})}
        self.beam_width = int(self.args.get("beam_width") or 3)
        self.max_len = int(self.args.get("max_len") or 20)
        if self.beam_width < 1 or self.max_len < 1:
            raise ArgumentError(f"beam_width ({self.beam_width}) and max_len ({self.max_len}) must be at least 1")
        if self.decoder["pretrained_emb"]:
            self.say(
                "warning",
                "decoder_params.pretrained_emb: fastText embeddings would have to be downloaded, "
                "which this server never does; the word embeddings start random",
            )
        self.vocab: Vocabulary | None = None

    def attach_data(self, data: Any) -> None:
        self.vocab = data.build_vocabulary(int(self.args.get("vocab_min_freq") or 1))
        self.say("info", f"Vocabulary: {len(self.vocab) - 4} words from the training captions (+ 4 special tokens)")

    def load_emd(self, emd: dict[str, Any]) -> None:
        words = emd.get("Vocabulary")
        if not isinstance(words, list) or len(words) < 5:
            from gpjobs.training.package import PackageError

            raise PackageError("the .emd has no Vocabulary list; an IMAGECAPTIONER package needs its vocabulary")
        self.vocab = Vocabulary([str(w) for w in words])

    def build(self) -> nn.Module:
        if self.vocab is None:
            raise ArgumentError("IMAGECAPTIONER needs the vocabulary of its training data (or of its package)")
        if self.beam_width > len(self.vocab):
            raise ArgumentError(f"beam_width {self.beam_width} exceeds the vocabulary size {len(self.vocab)}")
        backbone = build_backbone(self.backbone, self.in_channels, weights=self.weights, say=self.say)
        d = self.decoder
        return CaptionNet(
            backbone,
            tuple(self.info.chip_size),
            len(self.vocab),
            embed_size=d["embed_size"],
            hidden_size=d["hidden_size"],
            attention_size=d["attention_size"],
            dropout=d["dropout"],
            bos=self.vocab.bos,
            eos=self.vocab.eos,
            max_len=self.max_len,
            beam_width=self.beam_width,
        )

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, ids, _ = batch
        images, ids = images.to(device, non_blocking=True), ids.to(device, non_blocking=True)
        logits, alphas = model.teacher_forced(images, ids, float(self.decoder["teacher_forcing"]))
        return caption_loss(logits, alphas, ids[:, 1:])

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, dict[str, Any]]:
        total, n, correct, words = 0.0, 0, 0, 0
        hypotheses: list[list[str]] = []
        references: list[list[list[str]]] = []
        for images, ids, refs in loader:
            images, ids = images.to(device, non_blocking=True), ids.to(device, non_blocking=True)
            logits, alphas = model.teacher_forced(images, ids)
            targets = ids[:, 1:]
            total += float(caption_loss(logits, alphas, targets)) * images.shape[0]
            n += images.shape[0]
            real = targets > 0
            correct += int(((logits.argmax(-1) == targets) & real).sum())
            words += int(real.sum())
            hypotheses += self.captions(model(images)[0])
            references += refs
        bleu = corpus_bleu(hypotheses, references)
        return total / max(n, 1), {"accuracy": correct / max(words, 1), "corpus_bleu": bleu}

    def captions(self, tokens: torch.Tensor) -> list[list[str]]:
        """Word lists of beam-searched token rows."""
        assert self.vocab is not None
        return [self.vocab.words(row.tolist()) for row in tokens.cpu()]

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> list[dict[str, Any]]:
        """Per chip: the caption, its words and the mean log-probability per word."""
        from gpjobs.export.captions import detokenize

        tokens, scores = model(images)
        return [
            {"caption": detokenize(words), "words": words, "score": round(float(s), 6)}
            for words, s in zip(self.captions(tokens), scores.tolist())
        ]

    def deployable(self, model: nn.Module) -> nn.Module:
        return CaptionSteps(model)

    def inference_spec(self, network: nn.Module) -> dict[str, Any]:
        """The decoder's tokens and the search it was validated with (the words are the .emd's Vocabulary)."""
        assert self.vocab is not None
        return {
            "output": "captions",
            "bos": self.vocab.bos,
            "eos": self.vocab.eos,
            "pad": self.vocab.pad,
            "beam_width": self.beam_width,
            "max_len": self.max_len,
        }

    def model_parameters(self) -> dict[str, Any]:
        return {
            **super().model_parameters(),
            "decoder_params": dict(self.decoder),
            "beam_width": self.beam_width,
            "max_len": self.max_len,
        }

    def emd_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        fields = super().emd_fields(metrics)
        fields["Vocabulary"] = list(self.vocab.itos) if self.vocab else []
        for key in ("accuracy", "corpus_bleu"):
            if key in metrics:
                fields[key] = f"{metrics[key]:.4e}"
        return fields

    def show_results(self, model: nn.Module, batch: Any, path: Path) -> None:
        from gpjobs.export.captions import detokenize
        from gpjobs.training.model_card import _plt, display_rgb

        images, _, refs = batch
        model.eval()
        with torch.no_grad():
            predicted = self.captions(model(images)[0])
        plt = _plt()
        n = min(4, images.shape[0])
        fig, axes = plt.subplots(n, 1, figsize=(4.5, 3.0 * n), squeeze=False)
        for i in range(n):
            ax = axes[i][0]
            ax.imshow(display_rgb(images[i]))
            ax.axis("off")
            ax.set_title(f"truth: {detokenize(refs[i][0])}\npredicted: {detokenize(predicted[i])}", fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)


FAMILIES: dict[str, type[ModelFamily]] = {"IMAGECAPTIONER": ImageCaptionerFamily}
