"""ImageCaptioning exports: chips in images/, their captions in labels/<stem>.xml. No torch.

What Export Training Data writes for captions is a MultiLabeled_Tiles export whose `.emd` says
`"SingleLabelFieldFound": "Caption"` (export-format.md §1.8, §2.1): each label file is a PASCAL-style
XML whose `<object><name>` holds the caption text. arcgis.learn reads the first object's name; we read
every `<object>` as one reference caption (a chip may carry several, as RSICD-style data does) and
train on one of them at random per epoch, as arcgis.learn does with several captions.

The vocabulary is built from the training captions: lower-cased words and punctuation marks
(`tokenize`), words seen fewer than `min_freq` times map to the unknown token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from gpjobs.export.readers import LabelError, parse_voc
from gpjobs.paths import PathError

PAD, UNK, BOS, EOS = "xxpad", "xxunk", "xxbos", "xxeos"  # fastai's special token names, as arcgis.learn uses
SPECIALS = (PAD, UNK, BOS, EOS)
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[^\sa-z0-9]")


def parse_captions(path: Path, root: str | Path = "/") -> list[str]:
    """Every non-empty `<object><name>` text of a caption label file (LabelError when unreadable), read inside
    store `root`."""
    return [name.strip() for name, _ in parse_voc(path, root) if name.strip()]


def tokenize(text: str) -> list[str]:
    """Lower-cased words (with inner apostrophes/hyphens) and single punctuation marks."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Token <-> index; index 0 is padding, then unknown, begin and end of caption, then words by frequency."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.itos = list(tokens)
        if tuple(self.itos[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {', '.join(SPECIALS)}")
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Iterable[str], min_freq: int = 4, max_size: int = 100_000) -> Vocabulary:
        counts = Counter(t for c in captions for t in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_freq), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *words[: max(0, max_size - len(SPECIALS))]])

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad(self) -> int:
        return 0

    @property
    def bos(self) -> int:
        return self.stoi[BOS]

    @property
    def eos(self) -> int:
        return self.stoi[EOS]

    def encode(self, caption: str) -> list[int]:
        """BOS, the caption's token ids, EOS."""
        unk = self.stoi[UNK]
        return [self.bos, *(self.stoi.get(t, unk) for t in tokenize(caption)), self.eos]

    def words(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ids up to the first EOS, without BOS and padding."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            out.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return out

    def text(self, ids: Iterable[int]) -> str:
        return detokenize(self.words(ids))


def detokenize(tokens: Sequence[str]) -> str:
    """Words joined by spaces, punctuation attached to the word before it."""
    text = ""
    for t in tokens:
        text += t if (text and not t[0].isalnum()) else (" " if text else "") + t
    return text


def caption_problem(path: Path, root: str | Path = "/") -> tuple[str, str] | None:
    """(problem kind, detail) for a caption label that cannot be used, else None (report.PROBLEMS kinds)."""
    try:
        captions = parse_captions(path, root)
    except LabelError as exc:
        return ("empty_label", "") if "empty" in str(exc) else ("bad_label", str(exc)[:80])
    except PathError:
        return "outside_store", ""
    if not captions:
        return "no_caption", ""
    return None
