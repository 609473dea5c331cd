"""The IMAGECAPTIONER network: ResNet spatial features + Bahdanau-attention LSTM decoder, beam search, BLEU.

Show, Attend and Tell (Xu et al. 2015) with a ResNet encoder, as arcgis.learn's ImageCaptioner:
  - encoder: the backbone's stride-16 and stride-32 taps, each projected to ENCODER_DIM channels by a 1x1
    convolution, the deeper one upsampled and added (so small chips keep a grid of places to attend to),
    average-pooled to at most GRID x GRID cells, plus a learned embedding of each cell's position (so a
    caption can say where something is);
  - decoder: word embedding, LSTMCell fed [embedding, attended context]; additive attention
    score_p = v . tanh(W_f f_p + W_h h); the context is gated by sigmoid(W_b h) (the paper's beta); the
    first state comes from the mean feature; dropout before the word classifier;
  - training: teacher forcing with probability `teacher_forcing` per step (else the previous step's best
    word is fed back: scheduled sampling); loss = token cross-entropy + the doubly stochastic attention
    term mean_p (1 - sum_t alpha_tp)^2;
  - inference (`forward`): beam search, always `max_len` + 1 steps (no data-dependent exit, so the traced
    TorchScript module does the same search); a beam that emitted the end token keeps it at no cost;
    the best beam by mean log-probability per word.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_DIM = 256
GRID = 14  # at most GRID x GRID attention cells (Show, Attend and Tell's 14 x 14)
ATTENTION_REG = 0.1  # weight of the doubly stochastic attention term


class CaptionNet(nn.Module):
    """images -> (caption word ids (B, max_len), mean log-probability per word (B,)) by beam search."""

    def __init__(
        self,
        backbone: nn.Module,
        chip_size: tuple[int, int],
        vocab_size: int,
        *,
        embed_size: int,
        hidden_size: int,
        attention_size: int,
        dropout: float,
        bos: int,
        eos: int,
        max_len: int,
        beam_width: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        c16, c32 = list(backbone.out_channels)[-2:]
        self.reduce16 = nn.Conv2d(c16, ENCODER_DIM, 1)
        self.reduce32 = nn.Conv2d(c32, ENCODER_DIM, 1)
        self.grid = (max(1, min(GRID, math.ceil(chip_size[0] / 16))), max(1, min(GRID, math.ceil(chip_size[1] / 16))))
        self.position = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], ENCODER_DIM))
        nn.init.normal_(self.position, std=0.02)
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=0)
        self.att_feature = nn.Linear(ENCODER_DIM, attention_size)
        self.att_hidden = nn.Linear(hidden_size, attention_size)
        self.att_score = nn.Linear(attention_size, 1)
        self.gate = nn.Linear(hidden_size, ENCODER_DIM)
        self.init_h = nn.Linear(ENCODER_DIM, hidden_size)
        self.init_c = nn.Linear(ENCODER_DIM, hidden_size)
        self.lstm = nn.LSTMCell(embed_size + ENCODER_DIM, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.classify = nn.Linear(hidden_size, vocab_size)
        self.vocab_size, self.bos, self.eos = vocab_size, bos, eos
        self.max_len, self.beam_width = max_len, beam_width

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, P, ENCODER_DIM) features of the P = grid cells."""
        taps = list(self.backbone(images).values())
        f16, f32 = taps[-2], taps[-1]
        x = self.reduce16(f16) + F.interpolate(self.reduce32(f32), size=f16.shape[-2:], mode="nearest")
        x = F.adaptive_avg_pool2d(x, self.grid)
        return x.flatten(2).transpose(1, 2) + self.position

    def start(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h, c, projected features) before the first word."""
        mean = feats.mean(1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), self.att_feature(feats)

    def step(
        self, words: torch.Tensor, h: torch.Tensor, c: torch.Tensor, feats: torch.Tensor, projected: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One word: (logits (N, V), h, c, attention (N, P))."""
        scores = self.att_score(torch.tanh(projected + self.att_hidden(h)[:, None])).squeeze(-1)
        alpha = torch.softmax(scores, dim=1)
        context = (alpha[:, :, None] * feats).sum(1) * torch.sigmoid(self.gate(h))
        h, c = self.lstm(torch.cat([self.embed(words), context], 1), (h, c))
        return self.classify(self.drop(h)), h, c, alpha

    def teacher_forced(
        self, images: torch.Tensor, captions: torch.Tensor, teacher_forcing: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T-1, V) predicting captions[:, 1:], attention (B, T-1, P))."""
        feats = self.encode(images)
        h, c, projected = self.start(feats)
        words = captions[:, 0]
        logits, alphas = [], []
        for t in range(captions.shape[1] - 1):
            out, h, c, alpha = self.step(words, h, c, feats, projected)
            logits.append(out)
            alphas.append(alpha)
            words = captions[:, t + 1]
            if teacher_forcing < 1.0 and self.training:
                fed_back = torch.rand(words.shape[0], device=words.device) >= teacher_forcing
                words = torch.where(fed_back, out.argmax(1), words)
        return torch.stack(logits, 1), torch.stack(alphas, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encode(images)
        b, p, d = feats.shape
        k, v = self.beam_width, self.vocab_size
        feats = feats[:, None].expand(b, k, p, d).reshape(b * k, p, d)
        h, c, projected = self.start(feats)
        words = torch.full((b * k,), self.bos, dtype=torch.long, device=images.device)
        # only beam 0 is alive at the start, so the first top-k picks k different words
        total = torch.full((b, k), -1e9, device=images.device)
        total[:, 0] = 0.0
        lengths = torch.zeros(b, k, device=images.device)
        done = torch.zeros(b, k, dtype=torch.bool, device=images.device)
        tokens = torch.zeros(b, k, 0, dtype=torch.long, device=images.device)
        stay = torch.full((v,), -1e9, device=images.device)
        stay[self.eos] = 0.0  # a finished beam repeats the end token for free
        for _ in range(self.max_len + 1):
            logits, h, c, _ = self.step(words, h, c, feats, projected)
            logp = torch.log_softmax(logits.float(), dim=1).view(b, k, v)
            logp = torch.where(done[:, :, None], stay.expand(b, k, v), logp)
            best, index = (total[:, :, None] + logp).view(b, k * v).topk(k, dim=1)
            beam, word = index // v, index % v
            rows = (beam + torch.arange(b, device=images.device)[:, None] * k).view(-1)
            h, c = h[rows], c[rows]
            tokens = torch.cat([tokens.gather(1, beam[:, :, None].expand(b, k, tokens.shape[2])), word[:, :, None]], 2)
            was_done = done.gather(1, beam)
            lengths = lengths.gather(1, beam) + (~was_done).float()
            done = was_done | (word == self.eos)
            total, words = best, word.view(-1)
        score = total / lengths.clamp_min(1.0)
        pick = score.argmax(1)
        chosen = tokens[torch.arange(b, device=images.device), pick, : self.max_len]
        return chosen, score.gather(1, pick[:, None])[:, 0]


class CaptionSteps(nn.Module):
    """What a package's GpjobsImageCaptioner.py runs, traced: `forward(images)` = encoder features (B, P, D),
    `start(features)` = (h, c, projected features) and `step(words, h, c, features, projected)` = (logits, h, c),
    one decoder step. The beam search itself is plain torch in the raster function (the same search as
    `CaptionNet.forward`), so the beam width and caption length stay the user's to choose there."""

    def __init__(self, net: CaptionNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encode(images)

    def start(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.start(feats)

    def step(
        self, words: torch.Tensor, h: torch.Tensor, c: torch.Tensor, feats: torch.Tensor, projected: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, h, c, _ = self.net.step(words, h, c, feats, projected)
        return logits, h, c

    def trace(self, example: torch.Tensor) -> torch.jit.ScriptModule:
        example = example.expand(2, *example.shape[1:])  # a batch dimension that stays a variable
        feats = self.forward(example)
        h, c, projected = self.start(feats)
        words = torch.full((feats.shape[0],), self.net.bos, dtype=torch.long)
        methods = {"forward": (example,), "start": (feats,), "step": (words, h, c, feats, projected)}
        return torch.jit.trace_module(self, methods, check_trace=False, strict=False)


def caption_loss(logits: torch.Tensor, alphas: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy (padding 0 ignored) + the doubly stochastic attention regulariser."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=0)
    valid = (targets > 0).float()[:, :, None]
    coverage = (alphas.float() * valid).sum(1)  # (B, P): attention each cell got over the caption
    share = coverage * alphas.shape[2] / valid.sum(1).clamp_min(1.0)  # 1 where a cell got its even share
    return ce + ATTENTION_REG * ((1.0 - share) ** 2).mean()


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = 4
) -> float:
    """Papineni et al.'s corpus BLEU-`max_n` (uniform weights, clipped counts, closest-length brevity penalty).

    Like NLTK's corpus_bleu without smoothing: 0 when some n-gram order has no match at all.
    """
    matched, possible = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        hyp_len += len(hyp)
        ref_len += min((len(r) for r in refs), key=lambda n: (abs(n - len(hyp)), n), default=0)
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            best: Counter = Counter()
            for r in refs:
                best |= _ngrams(r, n)
            matched[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            possible[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matched, possible)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)
