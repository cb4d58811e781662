"""State captions for twin pairs: the same noun and template, only the state word differs.

Taught in chapter 10. A twin pair is one crop shown clean and with a defect. Its two captions
share everything but the state, e.g. "a photo of a flawless brick wall." / "a photo of a cracked
brick wall.", so the only thing a caption can teach is the state. Half the time the noun is generic
("object", "surface", ...) and half the time the category's; half the time the state is generic
(flawless / damaged and their synonyms) and half the time it names the defect ("scratched",
"red stained"). The book's hand-written prompts ("a photo of a flawless object." / "a photo of a
damaged object.") lie inside this distribution.

Every caption that can ever be drawn is listed once in a :class:`CaptionTable` and tokenized once;
a batch then only indexes the table. The table also says which token ids pretraining can touch:
the rows of the token table that :func:`promptmoe.microclip.export.export_weights` keeps.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Sequence, Tuple

import torch

from .defects import BLOTCH_COLOURS, KINDS

GENERIC_NOUNS = ("object", "surface", "part", "item", "product", "material", "component", "piece",
                 "sample", "thing")
NORMAL_WORDS = ("flawless", "perfect", "normal", "intact", "good", "clean", "undamaged",
                "pristine", "unblemished")
ABNORMAL_WORDS = ("damaged", "defective", "broken", "flawed", "faulty", "abnormal", "anomalous",
                  "imperfect", "blemished")
# a word naming each defect kind (blotches: "<colour> stained", filled in per colour)
KIND_WORDS = {"scratch": ("scratched",), "crack": ("cracked",), "hole": ("punctured", "holed"),
              "stain": ("stained", "dirty"), "missing": ("chipped",), "blotch": ("{colour} stained",)}
# the noun of each kind for "with a ..." templates
KIND_NOUNS = {"scratch": "scratch", "crack": "crack", "hole": "hole", "stain": "stain",
              "missing": "missing piece", "blotch": "{colour} stain"}
STATE_TEMPLATES = ("a photo of a {state} {noun}.", "a {state} {noun}.", "a photo of the {state} {noun}.",
                   "a close-up photo of a {state} {noun}.", "a cropped photo of a {state} {noun}.")
WITH_TEMPLATES = ("a photo of a {noun} with a {defect}.", "a photo of a {noun} without any {defect}.")
HAND_PROMPTS = ("a photo of a flawless object.", "a photo of a damaged object.")


def _kind_words(kind: str) -> List[str]:
    words = []
    for w in KIND_WORDS[kind]:
        words += [w.format(colour=c) for c in BLOTCH_COLOURS] if "{colour}" in w else [w]
    return words


class CaptionTable:
    """Every caption pretraining can draw, tokenized once.

    Args:
        nouns: the category nouns (generic nouns are added).
        tokenizer: an open_clip tokenizer (texts -> (N, 77) ids).
    """

    def __init__(self, nouns: Sequence[str], tokenizer):
        self.nouns = tuple(GENERIC_NOUNS) + tuple(dict.fromkeys(nouns))
        texts: List[str] = []
        self.index: Dict[Tuple, int] = {}

        def add(key, text):
            if key not in self.index:
                self.index[key] = len(texts)
                texts.append(text)

        for t, noun in itertools.product(range(len(STATE_TEMPLATES)), self.nouns):
            states = list(NORMAL_WORDS) + list(ABNORMAL_WORDS)
            states += [w for k in KINDS for w in _kind_words(k)]
            for state in states:
                text = STATE_TEMPLATES[t].format(state=state, noun=noun)
                add(("state", t, noun, state, True), text)
                add(("state", t, noun, state, False), text[:-1])  # no full stop
        for noun in self.nouns:
            for kind in KINDS:
                for colour in (BLOTCH_COLOURS if kind == "blotch" else [None]):
                    defect = KIND_NOUNS[kind].format(colour=colour)
                    add(("with", noun, kind, colour), WITH_TEMPLATES[0].format(noun=noun, defect=defect))
            add(("without", noun), WITH_TEMPLATES[1].format(noun=noun, defect="defect"))
        for text in HAND_PROMPTS:
            add(("hand", text), text)
        self.texts = texts
        self.tokens = tokenizer(texts)  # (N, 77)
        self.lengths = self.tokens.argmax(dim=-1) + 1  # tokens up to and including EOT

    def __len__(self) -> int:
        return len(self.texts)

    def used_token_ids(self) -> torch.Tensor:
        """Sorted ids of every token any caption uses (SOT, EOT and padding 0 included)."""
        return torch.unique(self.tokens)

    def sample_twins(self, nouns: Sequence[str], kinds: Sequence[int], colours: Sequence[int],
                     g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """Caption ids of n twin pairs: (clean ids (n,), defective ids (n,)).

        Args:
            nouns: the category noun of each pair.
            kinds: the defect kind of each pair (index into KINDS).
            colours: the blotch colour index of each pair (-1 when not a blotch).
        """
        n = len(nouns)
        r = torch.rand(n, 5, generator=g)  # noun, state, template, full stop, word choice
        pick = torch.randint(0, 1 << 30, (n, 4), generator=g)
        colour_names = list(BLOTCH_COLOURS)
        clean, bad = [], []
        for i in range(n):
            noun = GENERIC_NOUNS[pick[i, 0] % len(GENERIC_NOUNS)] if r[i, 0] < 0.5 else nouns[i]
            kind = KINDS[int(kinds[i])]
            colour = colour_names[int(colours[i])] if kind == "blotch" else None
            if r[i, 2] < 0.15:  # "a photo of a nut with a crack." / "... without any defect."
                clean.append(self.index[("without", noun)])
                bad.append(self.index[("with", noun, kind, colour)])
                continue
            t = int(pick[i, 1] % len(STATE_TEMPLATES))
            stop = bool(r[i, 3] < 0.7)
            good = NORMAL_WORDS[pick[i, 2] % len(NORMAL_WORDS)]
            if r[i, 1] < 0.5:
                word = ABNORMAL_WORDS[pick[i, 3] % len(ABNORMAL_WORDS)]
            else:
                words = [w.format(colour=colour) for w in KIND_WORDS[kind]]
                word = words[int(pick[i, 3] % len(words))]
            clean.append(self.index[("state", t, noun, good, stop)])
            bad.append(self.index[("state", t, noun, word, stop)])
        return torch.tensor(clean), torch.tensor(bad)
