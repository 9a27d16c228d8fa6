"""Free-text queries over a generated demo collection: words -> token vectors the way the generator made them.

Why: the demo captions are not encoded by a language model; the generator turns each word into a token row
(its word vector, a little of its neighbours', a position code and noise: ``demo._token_features``). A query
typed by a student goes through that same function, with the world rebuilt from the parameters the
collection recorded in ``GroundTruth/world.json``, so a typed query is an input of exactly the kind the model
was trained on. Words outside the demo vocabulary have no vector; they are named, never guessed.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ralbook.data.demo import GENERATOR_VERSION, ConceptWorld, DemoParams, _token_features, build_world
from ralbook.errors import DataError

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class EncodedQuery:
    """A typed query: the known words kept in order, their token rows (float32), and the unknown words."""

    text: str
    words: list[str]
    unknown: list[str]
    features: np.ndarray  # (len(words), text_dim) float32, as the collection stores caption tokens


def _params_from(meta: dict[str, Any], path: Path) -> DemoParams:
    fields = {f.name: f for f in dataclasses.fields(DemoParams)}
    stored = meta.get("params")
    if not isinstance(stored, dict):
        raise DataError(f"{path}: no 'params' object; expected the generator's parameters")
    unknown = sorted(set(stored) - set(fields))
    if unknown:
        raise DataError(f"{path}: parameters {unknown} are not DemoParams fields of this ralbook version")
    # JSON turns tuples into lists; DemoParams is frozen and its tuple fields stay tuples
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}
    return DemoParams(**values)


class DemoTextEncoder:
    """Encodes typed words over a demo collection's vocabulary with the generator's own token path.

    ``encode(text, seed)`` draws the generator's per-use randomness (token noise, the mixture of a generic
    word) from ``seed``: the same text and seed give the same rows; another seed gives another draw of the
    same distribution the training captions came from.
    """

    name = "demo vocabulary (the generator's word vectors)"

    def __init__(self, params: DemoParams, world: Optional[ConceptWorld] = None):
        self.params = params
        self.world = world if world is not None else build_world(params)

    @classmethod
    def from_collection(cls, collection_dir: str | Path) -> "DemoTextEncoder":
        """The encoder of ``collection_dir`` (``root/demo``), from its ``GroundTruth/world.json``."""
        path = Path(collection_dir) / "GroundTruth" / "world.json"
        if not path.is_file():
            raise DataError(f"{path}: missing; only collections written by the demo generator have a vocabulary "
                            "encoder")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from err
        version = meta.get("generator_version")
        if version != GENERATOR_VERSION:
            raise DataError(f"{path}: written by demo generator version {version}, this ralbook encodes with "
                            f"version {GENERATOR_VERSION}; regenerate the collection (ralbook make-demo)")
        return cls(_params_from(meta, path))

    @property
    def vocabulary(self) -> list[str]:
        """Every word the generator knows, in its table order."""
        return list(self.world.word_type)

    def split(self, text: str) -> tuple[list[str], list[str]]:
        """(known words in order, unknown words in order of first use): lower case, letters only."""
        known, unknown = [], []
        for word in _WORD.findall(text.lower()):
            if word in self.world.word_type:
                known.append(word)
            elif word not in unknown:
                unknown.append(word)
        return known, unknown

    def encode_words(self, words: list[str], rng: np.random.Generator) -> np.ndarray:
        """Token rows of known ``words`` (float32), drawing from ``rng`` exactly as the generator does."""
        bad = [w for w in words if w not in self.world.word_type]
        if bad:
            raise DataError(f"words {bad} are not in the demo vocabulary ({len(self.world.word_type)} words)")
        if not words:
            raise DataError("no words to encode: a query needs at least one word of the demo vocabulary")
        limit = len(self.world.positions)
        if len(words) > limit:
            raise DataError(f"{len(words)} words: the demo generator has position codes for at most {limit}")
        return _token_features(rng, self.world, self.params, list(words)).astype(np.float32)

    def encode(self, text: str, seed: int = 0) -> EncodedQuery:
        """Encode a typed query; unknown words are dropped and listed, none known is a DataError naming them."""
        known, unknown = self.split(text)
        if not known:
            raise DataError(f"query {text!r}: none of its words is in the demo vocabulary "
                            f"(unknown: {', '.join(unknown) or 'no words at all'}); try words such as "
                            f"'person opens the door in the kitchen'")
        features = self.encode_words(known, np.random.default_rng(seed))
        return EncodedQuery(text, known, unknown, features)
