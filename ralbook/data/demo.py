"""The bundled demo collection: a small synthetic PRVR data set with known ground truth.

Real feature releases are tens of GB and carry no record of *why* a video matches a query.
This module generates a collection in exactly the release layout (see ``data/README.md``) whose
generative story is known, so that every notebook runs out of the box and analyses can check
what RAL is meant to do:

* partial relevance: a video is several *moments* separated by background; a caption describes
  one moment, and its frame span is recorded;
* a latent concept space: actions, objects, colours and places, grouped into families; frames
  inside a moment are a fixed linear map of the moment's concept vectors plus slow drift and noise,
  background frames carry a scene signal that no caption names;
* words: one token row per word, stored beside the features; content words embed their concept,
  filler words ("the", "then") are fixed vectors orthogonal to every concept; a generic word
  ("moves", "something", "outdoors") is, at each use, a random mixture of the words of every
  concept it stands for plus extra noise, so the input itself is spread out;
* query ambiguity: ambiguous captions name the action and the object with generic words, and
  truthfully match every video with a moment those words fit: ``GroundTruth/relevant_SPLIT.json``
  lists them all (``evaluate --relevant`` uses it); ``GroundTruth/labels/`` holds label files for
  ``sigma-report``;
* video-side uncertainty: videos differ in their number of events (moments) and in the share of
  frames that no caption describes; ``videos.json`` records both;
* distractors: moments copied from another video of the split with one or two concepts changed.

Everything is derived from one seed with NumPy generators, computed in float64 and stored as
float32, so the same seed gives the same files (byte-identical on one machine).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from ralbook.data.layout import _json_lines, _write_features, _write_text, _write_text_features
from ralbook.errors import DataError
from ralbook.runtime.provenance import file_sha256


GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")   # splits that get a multi-ground-truth file and label files
SLOTS = ("action", "object", "attribute", "place")

# ----------------------------------------------------------------------------- vocabulary (data)
# kind -> family -> concept -> words naming it (synonyms; every word is one token).
CONCEPTS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "action": {
        "locomotion": {"walk": ("walks", "strolls"), "run": ("runs", "jogs"), "jump": ("jumps", "leaps"),
                       "climb": ("climbs",), "dance": ("dances",), "crawl": ("crawls",), "swim": ("swims",)},
        "manipulation": {"open": ("opens",), "close": ("closes", "shuts"), "lift": ("lifts", "raises"),
                         "throw": ("throws", "tosses"), "catch": ("catches",), "drop": ("drops",),
                         "push": ("pushes",), "pull": ("pulls", "drags"), "carry": ("carries",)},
        "communication": {"talk": ("talks", "speaks"), "laugh": ("laughs",), "shout": ("shouts", "yells"),
                          "wave": ("waves",), "point": ("points",), "sing": ("sings",)},
        "consumption": {"eat": ("eats",), "drink": ("drinks", "sips"), "taste": ("tastes",),
                        "chew": ("chews",), "bite": ("bites",), "smell": ("smells", "sniffs")},
        "chore": {"cook": ("cooks",), "clean": ("cleans", "wipes"), "wash": ("washes",),
                  "cut": ("cuts", "slices"), "fold": ("folds",), "fix": ("fixes", "repairs")},
    },
    "object": {
        "food": {"apple": ("apple",), "bread": ("bread", "loaf"), "cake": ("cake",), "soup": ("soup",),
                 "pizza": ("pizza",), "banana": ("banana",)},
        "tool": {"hammer": ("hammer",), "knife": ("knife",), "broom": ("broom",), "ladder": ("ladder",),
                 "rope": ("rope",), "shovel": ("shovel", "spade")},
        "furniture": {"chair": ("chair", "stool"), "table": ("table", "desk"), "door": ("door",),
                      "sofa": ("sofa", "couch"), "bed": ("bed",), "shelf": ("shelf",)},
        "device": {"phone": ("phone",), "laptop": ("laptop", "computer"), "camera": ("camera",),
                   "guitar": ("guitar",), "radio": ("radio",), "lamp": ("lamp",)},
        "gear": {"ball": ("ball",), "bicycle": ("bicycle", "bike"), "racket": ("racket",),
                 "skateboard": ("skateboard",), "frisbee": ("frisbee",), "kite": ("kite",)},
    },
    "attribute": {
        "colour": {"red": ("red",), "blue": ("blue",), "green": ("green",), "yellow": ("yellow",),
                   "black": ("black",), "white": ("white",), "orange": ("orange",), "purple": ("purple",)},
    },
    "place": {
        "indoor": {"kitchen": ("kitchen",), "bedroom": ("bedroom",), "office": ("office",),
                   "garage": ("garage",), "hallway": ("hallway", "corridor")},
        "outdoor": {"park": ("park",), "street": ("street", "road"), "beach": ("beach",),
                    "forest": ("forest", "woods"), "garden": ("garden",), "field": ("field",)},
    },
}
# Generic words: word -> what it names ("person", "kind:KIND" or "family:FAMILY").
GENERIC_WORDS: dict[str, str] = {
    "person": "person", "someone": "person", "somebody": "person",
    "does": "kind:action", "moves": "family:locomotion", "handles": "family:manipulation",
    "gestures": "family:communication", "consumes": "family:consumption", "works": "family:chore",
    "something": "kind:object", "thing": "kind:object", "object": "kind:object",
    "food": "family:food", "tool": "family:tool", "furniture": "family:furniture",
    "device": "family:device", "gear": "family:gear",
    "somewhere": "kind:place", "inside": "family:indoor", "indoors": "family:indoor",
    "outside": "family:outdoor", "outdoors": "family:outdoor",
}
FILLER_WORDS: tuple[str, ...] = (
    "the", "a", "an", "then", "is", "while", "in", "at", "on", "with", "and", "again", "after", "that",
    "for", "very", "slowly", "quickly", "there", "some", "first", "later", "briefly", "it", "time",
)
# Action families that take their object through a filler word ("runs with the ball").
CONNECTOR = {"locomotion": "with", "communication": "at", "chore": None, "manipulation": None,
             "consumption": None}
GENERIC_VERB = {"locomotion": "moves", "manipulation": "handles", "communication": "gestures",
                "consumption": "consumes", "chore": "works"}
GENERIC_VERB_CONNECTOR = {"works": "on"}
GENERIC_OBJECT = {"food": ("some", "food"), "tool": ("a", "tool"), "furniture": ("some", "furniture"),
                  "device": ("a", "device"), "gear": ("some", "gear")}
GENERIC_PLACE = {"indoor": ("inside", "indoors"), "outdoor": ("outside", "outdoors")}
# Object families an action family can act on (None: any).
COMPATIBLE_OBJECTS: dict[str, Optional[tuple[str, ...]]] = {
    "locomotion": ("gear", "tool", "device", "food"), "manipulation": None, "communication": None,
    "consumption": ("food",), "chore": None,
}
PREFIXES: tuple[tuple[str, ...], ...] = (("then",), ("and", "then"), ("after", "that"), ("at", "first"),
                                         ("later",), ("first",))
SUFFIXES: tuple[tuple[str, ...], ...] = (("again",), ("for", "a", "while"), ("very", "slowly"), ("quickly",),
                                         ("briefly",), ("while", "it", "is", "there"), ("at", "that", "time"))
MASS_NOUNS = ("bread", "cake", "soup", "pizza")
SUBJECTS: tuple[tuple[str, ...], ...] = (("a", "person"), ("the", "person"), ("someone",), ("somebody",))

WORD_TYPES = ("filler", "generic", "specific")


# ----------------------------------------------------------------------------- parameters

@dataclass(frozen=True)
class DemoParams:
    """Every knob of the generator. The defaults produce the shipped ``data/demo``.

    Sizes: videos per split, captions per video (``1 + Binomial(captions_max - 1, p)`` with mean
    ``captions_mean``), frames per video (a mixture: ``short_fraction`` below 32 frames,
    ``long_fraction`` above 128, the rest log-normal around ``frames_median``).
    Difficulty: ``difficulty`` scales every noise level (frame noise, drift, token noise);
    ``ambiguous_fraction`` of captions are ambiguous; ``distractor_fraction`` of moments are
    near copies of another moment of the same split.
    """

    seed: int = 2025
    n_train: int = 600
    n_val: int = 100
    n_test: int = 200
    visual_dim: int = 64
    text_dim: int = 48
    latent_dim: int = 24
    collection: str = "demo"
    feature: str = "synthetic"
    # frames
    min_frames: int = 24
    max_frames: int = 200
    frames_median: float = 34.0
    short_fraction: float = 0.12
    long_fraction: float = 0.06
    moment_coverage: tuple[float, float] = (0.45, 0.8)   # fraction of a video's frames inside moments
    min_moment_frames: int = 3
    # captions
    captions_mean: float = 3.5
    captions_max: int = 8
    min_words: int = 6
    max_words: int = 13
    ambiguous_fraction: float = 0.35
    distractor_fraction: float = 0.3
    # signal and noise (relative to unit-norm concept vectors)
    difficulty: float = 1.0
    frame_noise: float = 0.95
    drift: float = 0.6
    drift_memory: float = 0.9        # AR(1) coefficient of the drift from frame to frame
    video_style: float = 0.5         # per-video constant offset (lighting, camera)
    background_strength: float = 1.6
    n_scenes: int = 10
    person_weight: float = 0.5
    slot_weights: tuple[float, float, float, float] = (1.0, 1.0, 0.6, 0.8)  # action, object, attribute, place
    family_share: float = 0.55       # weight of the family vector inside a concept vector
    kind_share: float = 0.3          # weight of the kind vector inside a concept vector
    synonym_noise: float = 0.3
    token_noise: float = 0.4
    generic_noise: float = 1.5       # extra noise on a generic word's row (on top of its member mixture)
    context_mix: float = 0.15        # each token row mixes in this much of its neighbours' word vectors
    position_strength: float = 0.2
    spread_fraction: float = 0.15    # videos whose last caption is moved to the end of the caption file

    def validate(self) -> None:
        """Reject settings the generator cannot honour, with the offending value."""
        checks = [
            (self.n_train >= 1 and self.n_val >= 1 and self.n_test >= 1, "n_train, n_val and n_test must be >= 1"),
            (self.visual_dim >= 2 * self.latent_dim, "visual_dim must be >= 2 * latent_dim (room for background)"),
            (self.text_dim > self.latent_dim, "text_dim must be > latent_dim (room for filler words)"),
            (1 <= self.min_frames <= self.max_frames, "need 1 <= min_frames <= max_frames"),
            (self.min_frames >= 2 * self.min_moment_frames + 1, "min_frames too small for two moments"),
            (1 <= self.captions_mean <= self.captions_max, "need 1 <= captions_mean <= captions_max"),
            (3 <= self.min_words <= self.max_words <= 30, "need 3 <= min_words <= max_words <= 30"),
            (0 <= self.ambiguous_fraction <= 1 and 0 <= self.distractor_fraction <= 1, "fractions must be in [0, 1]"),
            (0 <= self.short_fraction + self.long_fraction <= 1, "short_fraction + long_fraction must be <= 1"),
            (self.difficulty >= 0, "difficulty must be >= 0"),
            ("#" not in self.collection and "/" not in self.collection, "collection must not contain '#' or '/'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"DemoParams: {message} (got {self})")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


# ----------------------------------------------------------------------------- ground truth types

@dataclass
class MomentTruth:
    """A stretch of a video showing one concept tuple; frames ``start`` .. ``end - 1``."""

    start: int
    end: int
    concepts: dict[str, str]              # slot -> concept name
    derived_from: Optional[str] = None    # "VIDEO/MOMENT" it was copied from (a planted distractor)


@dataclass
class VideoTruth:
    split: str
    n_frames: int
    scene: int
    moments: list[MomentTruth]
    n_events: int = 0                     # moments (events) in the video
    unrelated_share: float = 0.0          # share of frames inside no captioned moment


@dataclass
class CaptionTruth:
    video: str
    split: str
    moment: int                           # index into the video's moments
    start: int
    end: int                              # exclusive
    words: list[str]
    word_types: list[str]                 # filler | generic | specific, one per word
    word_refs: list[Optional[str]]        # concept name, "family:F", "kind:K", "person" or None
    concepts: list[str]                   # concepts named by specific words
    generic: list[str]                    # families/kinds named by generic words
    ambiguity: int                        # 0 specific, 1 ambiguous
    n_consistent: int                     # videos of the split the caption describes truthfully (>= 1)
    distractors: list[str] = field(default_factory=list)  # near-miss videos of the split


@dataclass
class GroundTruth:
    params: dict[str, Any]
    concepts: dict[str, dict[str, Any]]   # concept -> {"kind", "family", "words"}
    word_types: dict[str, str]            # every vocabulary word -> filler | generic | specific
    videos: dict[str, VideoTruth]
    captions: dict[str, CaptionTruth]

    def captions_of(self, split: str) -> dict[str, CaptionTruth]:
        return {k: c for k, c in self.captions.items() if c.split == split}


# ----------------------------------------------------------------------------- the latent world

@dataclass
class ConceptWorld:
    """Concept vectors and the fixed maps into visual and text space (all float64)."""

    concept_kind: dict[str, str]
    concept_family: dict[str, str]
    latent: dict[str, np.ndarray]         # concept, "person", "family:F", "kind:K" -> unit vector (latent_dim,)
    visual_map: np.ndarray                # (visual_dim, latent_dim), orthonormal columns
    scenes: np.ndarray                    # (n_scenes, visual_dim), orthogonal to visual_map's columns
    text_map: np.ndarray                  # (text_dim, latent_dim), orthonormal columns
    word_vectors: dict[str, np.ndarray]   # word -> (text_dim,)
    word_type: dict[str, str]
    word_ref: dict[str, Optional[str]]
    positions: np.ndarray                 # (max_words, text_dim)
    members: dict[str, np.ndarray] = field(default_factory=dict)  # generic word -> (k, text_dim) member words

    def concepts_of(self, kind: str, family: Optional[str] = None) -> list[str]:
        return [c for c, k in self.concept_kind.items()
                if k == kind and (family is None or self.concept_family[c] == family)]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def _complement_vectors(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
    """``n`` unit vectors orthogonal to the columns of ``basis`` (so they carry no concept signal)."""
    v = rng.standard_normal((n, basis.shape[0]))
    v -= (v @ basis) @ basis.T
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def build_world(params: DemoParams) -> ConceptWorld:
    """Draw the concept space, the visual and text maps and every word's base vector from the seed."""
    rng = np.random.default_rng([params.seed, 0])
    k = params.latent_dim
    latent: dict[str, np.ndarray] = {"person": _unit(rng.standard_normal(k))}
    kind_of: dict[str, str] = {}
    family_of: dict[str, str] = {}
    own_share = np.sqrt(max(1.0 - params.family_share ** 2 - params.kind_share ** 2, 0.0))
    for kind, families in CONCEPTS.items():
        kind_vec = _unit(rng.standard_normal(k))
        latent[f"kind:{kind}"] = kind_vec
        for family, concepts in families.items():
            fam_vec = _unit(rng.standard_normal(k))
            latent[f"family:{family}"] = _unit(params.kind_share * kind_vec + params.family_share * fam_vec)
            for concept in concepts:
                own = _unit(rng.standard_normal(k))
                latent[concept] = _unit(params.kind_share * kind_vec + params.family_share * fam_vec + own_share * own)
                kind_of[concept], family_of[concept] = kind, family
    visual_map = _orthonormal(rng, params.visual_dim, k)
    scenes = _complement_vectors(rng, visual_map, params.n_scenes)
    text_map = _orthonormal(rng, params.text_dim, k)

    word_vectors: dict[str, np.ndarray] = {}
    word_type: dict[str, str] = {}
    word_ref: dict[str, Optional[str]] = {}
    for kind, families in CONCEPTS.items():
        for family, concepts in families.items():
            for concept, words in concepts.items():
                for word in words:
                    word_type[word], word_ref[word] = "specific", concept
    for word, ref in GENERIC_WORDS.items():
        word_type[word], word_ref[word] = "generic", ref
    for word in FILLER_WORDS:
        word_type[word], word_ref[word] = "filler", None
    n_words = sum(len(w) for fams in CONCEPTS.values() for cs in fams.values() for w in cs.values())
    if len(word_type) != n_words + len(GENERIC_WORDS) + len(FILLER_WORDS):
        raise AssertionError("a word appears twice in the demo vocabulary tables")
    fillers = [w for w in word_type if word_type[w] == "filler"]
    filler_vecs = _complement_vectors(rng, text_map, len(fillers))
    for word in word_type:   # dict order: fixed by the tables above
        if word_type[word] == "filler":
            word_vectors[word] = filler_vecs[fillers.index(word)]
        else:
            noise = _unit(rng.standard_normal(params.text_dim))
            word_vectors[word] = text_map @ latent[word_ref[word]] + params.synonym_noise * noise
    positions = rng.standard_normal((30, params.text_dim)) / np.sqrt(params.text_dim)
    members = {word: np.stack([word_vectors[w] for c in _members(ref, kind_of, family_of)
                               for w in CONCEPTS[kind_of[c]][family_of[c]][c]])
               for word, ref in GENERIC_WORDS.items() if ref != "person"}
    return ConceptWorld(kind_of, family_of, latent, visual_map, scenes, text_map, word_vectors, word_type, word_ref,
                 positions, members)


def _members(ref: str, kind_of: dict[str, str], family_of: dict[str, str]) -> list[str]:
    """Concepts a generic reference ("family:F" or "kind:K") stands for, in table order."""
    what, name = ref.split(":", 1)
    table = family_of if what == "family" else kind_of
    return [c for c in kind_of if table[c] == name]


# ----------------------------------------------------------------------------- videos

def _sample_n_frames(rng: np.random.Generator, p: DemoParams) -> int:
    u = rng.random()
    if u < p.short_fraction:
        lo, hi = p.min_frames, min(31, p.max_frames)
        return int(rng.integers(lo, hi + 1)) if hi >= lo else p.min_frames
    if u < p.short_fraction + p.long_fraction:
        lo, hi = max(129, p.min_frames), p.max_frames
        return int(rng.integers(lo, hi + 1)) if hi >= lo else p.max_frames
    lo, hi = max(32, p.min_frames), min(128, p.max_frames)
    n = int(round(p.frames_median * np.exp(0.35 * rng.standard_normal())))
    return int(np.clip(n, lo, hi)) if hi >= lo else p.min_frames


def _split_lengths(rng: np.random.Generator, total: int, parts: int, minimum: int) -> list[int]:
    """Random integer lengths, each >= ``minimum``, summing to ``total``."""
    extra = total - parts * minimum
    raw = np.floor(rng.dirichlet(np.ones(parts)) * extra).astype(int)
    raw[: extra - int(raw.sum())] += 1
    return [minimum + int(r) for r in raw]


def _layout_moments(rng: np.random.Generator, n_frames: int, p: DemoParams) -> list[tuple[int, int]]:
    """Non-overlapping moment spans (end exclusive) with background before, between and after them."""
    n_moments = int(np.clip(round(n_frames / 22 + rng.uniform(0.5, 2.0)), 2, 6))
    while n_moments > 1 and n_moments * p.min_moment_frames + (n_moments - 1) > n_frames:
        n_moments -= 1
    inside = int(round(n_frames * rng.uniform(*p.moment_coverage)))
    inside = int(np.clip(inside, n_moments * p.min_moment_frames, n_frames - (n_moments - 1)))
    lengths = _split_lengths(rng, inside, n_moments, p.min_moment_frames)
    # n_moments + 1 background stretches; the inner ones get at least one frame so moments stay apart
    gaps = _split_lengths(rng, n_frames - inside - (n_moments - 1), n_moments + 1, 0)
    gaps = [g + (1 if 0 < i < n_moments else 0) for i, g in enumerate(gaps)]
    spans, t = [], gaps[0]
    for length, gap in zip(lengths, gaps[1:]):
        spans.append((t, t + length))
        t += length + gap
    return spans


def _fresh_concepts(rng: np.random.Generator, world: ConceptWorld, home_place: str) -> dict[str, str]:
    actions = world.concepts_of("action")
    action = actions[rng.integers(len(actions))]
    allowed = COMPATIBLE_OBJECTS[world.concept_family[action]]
    objects = [o for o in world.concepts_of("object") if allowed is None or world.concept_family[o] in allowed]
    colours = world.concepts_of("attribute")
    places = world.concepts_of("place")
    place = home_place if rng.random() < 0.7 else places[rng.integers(len(places))]
    return {"action": action, "object": objects[rng.integers(len(objects))],
            "attribute": colours[rng.integers(len(colours))], "place": place}


def _perturb(rng: np.random.Generator, world: ConceptWorld, base: dict[str, str]) -> dict[str, str]:
    """Copy a moment's concepts and change one or two of them: a near miss for its captions."""
    out = dict(base)
    n_change = 1 if rng.random() < 0.6 else 2
    for slot in rng.permutation(SLOTS)[:n_change]:
        slot = str(slot)
        choices = [c for c in world.concepts_of(slot) if c != base[slot]]
        if slot == "object":
            allowed = COMPATIBLE_OBJECTS[world.concept_family[out["action"]]]
            choices = [c for c in choices if allowed is None or world.concept_family[c] in allowed] or choices
        if slot == "action":
            obj_family = world.concept_family[out["object"]]
            choices = [c for c in choices if COMPATIBLE_OBJECTS[world.concept_family[c]] is None
                       or obj_family in COMPATIBLE_OBJECTS[world.concept_family[c]]]
        out[slot] = choices[rng.integers(len(choices))]
    return out


def _render_frames(rng: np.random.Generator, world: ConceptWorld, p: DemoParams, n_frames: int, scene: int,
                   moments: list[MomentTruth]) -> np.ndarray:
    """Frame rows of one video: moment signal or scene background, plus style, drift and noise."""
    dv, s = p.visual_dim, p.difficulty
    frames = np.zeros((n_frames, dv))
    scene_vec = world.scenes[scene] + 0.3 * _unit(rng.standard_normal(dv))
    frames[:] = p.background_strength * _unit(scene_vec)
    for m in moments:
        length = m.end - m.start
        envelope = 0.6 + 0.4 * np.sin(np.pi * (np.arange(length) + 0.5) / length)
        static = p.person_weight * world.latent["person"]
        for slot, weight in zip(SLOTS[1:], p.slot_weights[1:]):
            static = static + weight * world.latent[m.concepts[slot]]
        latent = static[None, :] + envelope[:, None] * p.slot_weights[0] * world.latent[m.concepts["action"]][None, :]
        frames[m.start:m.end] = latent @ world.visual_map.T
    style = p.video_style * _unit(rng.standard_normal(dv))
    drift = np.zeros((n_frames, dv))
    step = rng.standard_normal((n_frames, dv)) / np.sqrt(dv)
    a = p.drift_memory
    drift[0] = step[0]
    for t in range(1, n_frames):
        drift[t] = a * drift[t - 1] + np.sqrt(1 - a * a) * step[t]
    noise = rng.standard_normal((n_frames, dv)) / np.sqrt(dv)
    return frames + style + s * p.drift * drift + s * p.frame_noise * noise


# ----------------------------------------------------------------------------- captions

def _choose(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _compose_caption(rng: np.random.Generator, world: ConceptWorld, p: DemoParams, concepts: dict[str, str],
                     ambiguous: bool) -> list[str]:
    """Words of one caption of a moment: specific words for named concepts, generic ones otherwise."""
    action, obj, colour, place = (concepts[s] for s in SLOTS)
    family = world.concept_family[action]
    if ambiguous:
        say_action = rng.random() < 0.3
        say_object = (not say_action) and rng.random() < 0.3
        say_colour = say_object and rng.random() < 0.2
        place_mode = _choose(rng, ("specific", "generic", "generic", "none", "none"))
    else:
        say_action = say_object = True
        say_colour = rng.random() < 0.6
        place_mode = _choose(rng, ("specific", "specific", "specific", "generic", "none"))

    words: list[str] = list(_choose(rng, SUBJECTS))
    object_words: list[str]
    if say_object:
        obj_word = _choose(rng, CONCEPTS["object"][world.concept_family[obj]][obj])
        det = "some" if obj in MASS_NOUNS and rng.random() < 0.5 else _choose(rng, ("the", "a"))
        colour_words = [_choose(rng, CONCEPTS["attribute"]["colour"][colour])] if say_colour else []
        if det == "a" and (colour_words or [obj_word])[0][0] in "aeiou":
            det = "an"
        object_words = [det, *colour_words, obj_word]
    elif rng.random() < 0.5:
        object_words = list(GENERIC_OBJECT[world.concept_family[obj]])
    else:
        object_words = list(_choose(rng, (("something",), ("a", "thing"), ("an", "object"))))

    if say_action:
        verb_words = [_choose(rng, CONCEPTS["action"][family][action])]
        connector = CONNECTOR[family]
    elif rng.random() < 0.65:
        verb_words = [GENERIC_VERB[family]]
        connector = CONNECTOR[family] or GENERIC_VERB_CONNECTOR.get(verb_words[0])
    else:   # "does something (with the ball)": the action is named only by its kind
        verb_words, connector = ["does", "something"], "with"
        if object_words == ["something"] or rng.random() < 0.3:
            object_words, connector = [], None
    words += [*verb_words, *([connector] if connector else []), *object_words]

    if place_mode == "specific":
        place_words = ["in", "the", _choose(rng, CONCEPTS["place"][world.concept_family[place]][place])]
    elif place_mode == "generic":
        place_words = [_choose(rng, GENERIC_PLACE[world.concept_family[place]] + ("somewhere",))]
    else:
        place_words = []
    if place_words and rng.random() < 0.3 and place_words[0] == "in":
        words = place_words + words
    else:
        words = words + place_words
    return _pad_with_fillers(rng, p, words)


def _pad_with_fillers(rng: np.random.Generator, p: DemoParams, words: list[str]) -> list[str]:
    """Add filler phrases (a prefix, then suffixes) until the caption reaches a sampled length."""
    target = int(rng.integers(p.min_words, p.max_words + 1))
    target = max(target, p.min_words)
    if rng.random() < 0.5 or len(words) < target:
        prefix = _choose(rng, PREFIXES)
        if len(words) + len(prefix) <= p.max_words:
            words = [*prefix, *words]
    for idx in rng.permutation(len(SUFFIXES))[:2]:
        if len(words) >= target:
            break
        suffix = SUFFIXES[int(idx)]
        if len(words) + len(suffix) <= p.max_words:
            words = [*words, *suffix]
    while len(words) < p.min_words:   # only for very short captions and tiny min_words/max_words
        words.append(_choose(rng, ("again", "there", "briefly")))
    return words[: p.max_words]


def _token_features(rng: np.random.Generator, world: ConceptWorld, p: DemoParams, words: list[str]) -> np.ndarray:
    """One row per word: its base vector, a little of its neighbours', a position code and noise.

    A generic word's base vector is drawn at each use: a Dirichlet(1) mixture of the word vectors
    of every concept it stands for, plus ``generic_noise`` (so its input is spread out).
    """
    rows = []
    for w in words:
        if w in world.members:
            pool = world.members[w]
            extra = rng.standard_normal(p.text_dim) / np.sqrt(p.text_dim)
            rows.append(rng.dirichlet(np.ones(len(pool))) @ pool + p.difficulty * p.generic_noise * extra)
        else:
            rows.append(world.word_vectors[w])
    base = np.stack(rows)
    padded = np.concatenate([base[:1], base, base[-1:]])
    neighbours = 0.5 * (padded[:-2] + padded[2:])
    noise = rng.standard_normal(base.shape) / np.sqrt(p.text_dim)
    return (base + p.context_mix * neighbours + p.position_strength * world.positions[: len(words)]
            + p.difficulty * p.token_noise * noise)


def _word_annotations(world: ConceptWorld, words: list[str], concepts: dict[str, str]) -> tuple[list, list, list, list]:
    types = [world.word_type[w] for w in words]
    refs = [world.word_ref[w] for w in words]
    named = [r for r, t in zip(refs, types) if t == "specific"]
    generic = [r for r, t in zip(refs, types) if t == "generic"]
    bad = [r for r in named if r not in concepts.values()]
    if bad:
        raise AssertionError(f"caption names concepts {bad} that its moment {concepts} lacks")
    return types, refs, list(dict.fromkeys(named)), list(dict.fromkeys(generic))


def caption_describes(world: ConceptWorld, named: list[str], generic: list[str], concepts: dict[str, str]) -> bool:
    """True when every specific word names one of the moment's concepts and every generic word fits it."""
    present = set(concepts.values())
    if any(c not in present for c in named):
        return False
    families = {world.concept_family[c] for c in present}
    kinds = {world.concept_kind[c] for c in present}
    for ref in generic:
        if ref.startswith("family:") and ref[7:] not in families:
            return False
        if ref.startswith("kind:") and ref[5:] not in kinds:
            return False
    return True


# ----------------------------------------------------------------------------- one split

@dataclass
class _SplitData:
    video_ids: list[str]
    frames: dict[str, np.ndarray]
    videos: dict[str, VideoTruth]
    captions: dict[str, CaptionTruth]
    order: list[str]                       # caption ids in caption-file order
    features: dict[str, np.ndarray]        # cap id -> (L, Dt)
    relevant: dict[str, list[str]]         # cap id -> every video of the split it describes truthfully


def _sample_n_captions(rng: np.random.Generator, p: DemoParams) -> int:
    prob = (p.captions_mean - 1) / max(p.captions_max - 1, 1)
    return 1 + int(rng.binomial(p.captions_max - 1, prob))


def _generate_split(split: str, video_ids: list[str], world: ConceptWorld, p: DemoParams) -> _SplitData:
    rng = np.random.default_rng([p.seed, 1 + SPLITS.index(split)])
    places = world.concepts_of("place")
    videos: dict[str, VideoTruth] = {}
    frames: dict[str, np.ndarray] = {}
    pool: list[tuple[str, int, dict[str, str]]] = []      # earlier moments of this split
    for vid in video_ids:
        n = _sample_n_frames(rng, p)
        scene = int(rng.integers(p.n_scenes))
        home = places[rng.integers(len(places))]
        moments = []
        for idx, (start, end) in enumerate(_layout_moments(rng, n, p)):
            if pool and rng.random() < p.distractor_fraction:
                src_vid, src_idx, src = pool[int(rng.integers(len(pool)))]
                moments.append(MomentTruth(start, end, _perturb(rng, world, src), f"{src_vid}/{src_idx}"))
            else:
                moments.append(MomentTruth(start, end, _fresh_concepts(rng, world, home)))
        pool.extend((vid, i, m.concepts) for i, m in enumerate(moments))
        videos[vid] = VideoTruth(split, n, scene, moments)
        frames[vid] = _render_frames(rng, world, p, n, scene, moments)

    captions: dict[str, CaptionTruth] = {}
    features: dict[str, np.ndarray] = {}
    per_video: dict[str, list[str]] = {}
    for vid in video_ids:
        moments = videos[vid].moments
        n_caps = _sample_n_captions(rng, p)
        targets = [int(i) for i in np.concatenate([rng.permutation(len(moments))
                                                   for _ in range(-(-n_caps // len(moments)))])[:n_caps]]
        per_video[vid] = []
        captioned = sorted(set(targets))
        videos[vid].n_events = len(moments)
        videos[vid].unrelated_share = round(1.0 - sum(moments[i].end - moments[i].start for i in captioned)
                                            / videos[vid].n_frames, 6)
        for j, m_idx in enumerate(targets):
            cap_id = f"{vid}#enc#{j}"
            m = moments[m_idx]
            ambiguous = bool(rng.random() < p.ambiguous_fraction)
            words = _compose_caption(rng, world, p, m.concepts, ambiguous)
            types, refs, named, generic = _word_annotations(world, words, m.concepts)
            captions[cap_id] = CaptionTruth(vid, split, m_idx, m.start, m.end, words, types, refs, named, generic,
                                            int(ambiguous), 0)
            features[cap_id] = _token_features(rng, world, p, words)
            per_video[vid].append(cap_id)
    relevant = _annotate_confusions(world, videos, captions)
    order = _caption_order(rng, p, video_ids, per_video)
    return _SplitData(video_ids, frames, videos, captions, order, features, relevant)


def _annotate_confusions(world: ConceptWorld, videos: dict[str, VideoTruth],
                         captions: dict[str, CaptionTruth]) -> dict[str, list[str]]:
    """Fill ``n_consistent`` and ``distractors`` of every caption of one split; return the described videos.

    ``n_consistent``: videos of the split with a moment the caption describes truthfully (its own
    included): every specific word names one of the moment's concepts and every generic word fits.
    ``distractors``: other videos with a moment that shares the caption moment's action and object, or
    three of its four concepts, yet is not described by the caption (near misses).
    """
    names = list(world.concept_kind)
    index = {c: i for i, c in enumerate(names)}
    family_ids = {f: i for i, f in enumerate(dict.fromkeys(world.concept_family.values()))}
    concept_family = np.array([family_ids[world.concept_family[c]] for c in names])
    vids = list(videos)
    owner = np.array([i for i, v in enumerate(vids) for _ in videos[v].moments])
    table = np.array([[index[m.concepts[s]] for s in SLOTS] for v in vids for m in videos[v].moments])
    fam_table = concept_family[table]
    slot_of = {c: SLOTS.index(world.concept_kind[c]) for c in names}
    family_slot = {f: SLOTS.index(world.concept_kind[c]) for c, f in world.concept_family.items()}
    moment_base = {v: int(np.flatnonzero(owner == i)[0]) for i, v in enumerate(vids)}
    relevant: dict[str, list[str]] = {}
    for cap_id, cap in captions.items():
        fits = np.ones(len(table), dtype=bool)
        for c in cap.concepts:
            fits &= table[:, slot_of[c]] == index[c]
        for ref in cap.generic:
            if ref.startswith("family:"):
                fam = ref[len("family:"):]
                fits &= fam_table[:, family_slot[fam]] == family_ids[fam]
        described = np.zeros(len(vids), dtype=bool)
        np.logical_or.at(described, owner, fits)
        own = table[moment_base[cap.video] + cap.moment]
        same = table == own[None, :]
        near = same[:, :2].all(axis=1) | (same.sum(axis=1) >= 3)
        near_video = np.zeros(len(vids), dtype=bool)
        np.logical_or.at(near_video, owner, near)
        near_video &= ~described
        near_video[vids.index(cap.video)] = False
        cap.n_consistent = int(described.sum())
        cap.distractors = [vids[i] for i in np.flatnonzero(near_video)]
        # own video first, so a reader that takes the first entry gets the caption's source video
        relevant[cap_id] = [cap.video] + [vids[i] for i in np.flatnonzero(described) if vids[i] != cap.video]
    return relevant


def _caption_order(rng: np.random.Generator, p: DemoParams, video_ids: list[str],
                   per_video: dict[str, list[str]]) -> list[str]:
    """Captions grouped by video, except that some videos' last caption moves to the end of the file
    (real releases do not promise grouping; readers must use first appearance)."""
    head, tail = [], []
    for vid in video_ids:
        caps = per_video[vid]
        if len(caps) > 1 and rng.random() < p.spread_fraction:
            head.extend(caps[:-1])
            tail.append(caps[-1])
        else:
            head.extend(caps)
    return head + tail


# ----------------------------------------------------------------------------- writing


def generate_from_params(root: str | os.PathLike, params: DemoParams, progress: bool = False) -> Path:
    """Write ``root/<collection>/`` for ``params``; see :func:`generate_demo`."""
    params.validate()
    world = build_world(params)
    sizes = params.split_sizes()
    out = Path(root) / params.collection
    text_dir, truth_dir = out / "TextData", out / "GroundTruth"
    feature_dir = out / "FeatureData" / params.feature
    for d in (text_dir, truth_dir, truth_dir / "labels", feature_dir):
        d.mkdir(parents=True, exist_ok=True)

    ids, start = {}, 0
    total = sum(sizes.values())
    width = max(4, len(str(total - 1)))
    for split in SPLITS:
        ids[split] = [f"v{i:0{width}d}" for i in range(start, start + sizes[split])]
        start += sizes[split]

    splits = {}
    iterator: Iterable[str] = SPLITS
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(SPLITS, desc="demo splits")
    for split in iterator:
        splits[split] = _generate_split(split, ids[split], world, params)

    features: dict[str, np.ndarray] = {}
    words: dict[str, list[str]] = {}
    for split, data in splits.items():
        lines = [f"{cap} {' '.join(data.captions[cap].words)}\n" for cap in data.order]
        _write_text(text_dir / f"{params.collection}{split}.caption.txt", "".join(lines))
        features.update(data.features)
        words.update({cap: data.captions[cap].words for cap in data.order})
    _write_text_features(text_dir / f"roberta_{params.collection}_query_feat.hdf5", features)
    _write_text(text_dir / f"{params.collection}_words.json", _json_lines(words))

    all_ids = [v for split in SPLITS for v in ids[split]]
    frames = {v: splits[s].frames[v] for s in SPLITS for v in ids[s]}
    _write_features(feature_dir, all_ids, frames)
    _write_ground_truth(truth_dir, params, world, splits)
    return out


def _write_ground_truth(truth_dir: Path, params: DemoParams, world: ConceptWorld, splits: dict[str, _SplitData]) -> None:
    concepts = {c: {"kind": world.concept_kind[c], "family": world.concept_family[c],
                    "words": list(CONCEPTS[world.concept_kind[c]][world.concept_family[c]][c])}
                for c in world.concept_kind}
    meta = {"generator_version": GENERATOR_VERSION, "params": dataclasses.asdict(params),
            "slots": list(SLOTS), "concepts": concepts, "word_types": dict(world.word_type),
            "word_refs": dict(world.word_ref)}
    _write_text(truth_dir / "world.json", json.dumps(meta, indent=1) + "\n")
    videos = {v: dataclasses.asdict(t) for data in splits.values() for v, t in data.videos.items()}
    captions = {c: {k: val for k, val in dataclasses.asdict(t).items() if k not in ("words", "word_refs")}
                for data in splits.values() for c, t in data.captions.items()}
    _write_text(truth_dir / "videos.json", _json_lines(videos))
    _write_text(truth_dir / "captions.json", _json_lines(captions))
    for split in EVAL_SPLITS:
        data = splits[split]
        _write_text(truth_dir / relevant_file(split), _json_lines({c: data.relevant[c] for c in data.order}))
        for name, labels in split_labels(data.videos, data.captions, data.order).items():
            _write_text(truth_dir / label_file(split, name), "".join(f"{k}\t{v}\n" for k, v in labels.items()))


def relevant_file(split: str) -> str:
    """Path, inside ``GroundTruth/``, of a split's multi-ground truth (caption id -> every matching video)."""
    return f"relevant_{split}.json"


def label_file(split: str, name: str) -> str:
    """Path, inside ``GroundTruth/``, of one of a split's label files for ``sigma-report``."""
    return f"labels/{split}_{name}.tsv"


def split_labels(videos: dict[str, VideoTruth], captions: dict[str, CaptionTruth],
                 order: list[str]) -> dict[str, dict[str, int]]:
    """The 0/1 labels a split's ground truth gives (1 = the uncertain side), per label-file name.

    ``caption_ambiguous``: the caption is ambiguous. ``support_ambiguous``: at least half of the
    video's captions are ambiguous (the support set is mostly vague). ``video_unrelated``: the
    video's share of frames that no caption describes is above the split's median.
    ``video_events``: the video's number of events is above the split's median.
    """
    per_video: dict[str, list[int]] = {}
    for c in order:
        per_video.setdefault(captions[c].video, []).append(captions[c].ambiguity)
    vids = list(per_video)
    unrelated = np.array([videos[v].unrelated_share for v in vids])
    events = np.array([videos[v].n_events for v in vids])
    return {
        "caption_ambiguous": {c: captions[c].ambiguity for c in order},
        "support_ambiguous": {v: int(2 * sum(a) >= len(a)) for v, a in per_video.items()},
        "video_unrelated": {v: int(x > np.median(unrelated)) for v, x in zip(vids, unrelated)},
        "video_events": {v: int(x > np.median(events)) for v, x in zip(vids, events)},
    }


def generate_demo(root: str | os.PathLike = "data", seed: int = 2025, n_train: int = 600, n_val: int = 100,
                  n_test: int = 200, visual_dim: int = 64, text_dim: int = 48, difficulty: float = 1.0,
                  ambiguous_fraction: float = 0.35, distractor_fraction: float = 0.3,
                  params: Optional[DemoParams] = None, progress: bool = False, **more: Any) -> Path:
    """Generate the demo collection into ``root/demo/`` and return that directory.

    ``seed`` fixes everything (same seed and parameters -> identical files). ``n_train``/``n_val``/
    ``n_test`` are videos per split; ``visual_dim``/``text_dim`` the feature widths (Dv, Dt);
    ``difficulty`` scales all noise (0 = noiseless); ``ambiguous_fraction`` is the share of captions
    that name action and object only generically; ``distractor_fraction`` the share of moments that
    are near copies of another moment of their split. Any other :class:`DemoParams` field can be
    given as a keyword, or pass a whole ``params`` (then the other arguments are ignored).
    """
    if params is None:
        unknown = set(more) - {f.name for f in dataclasses.fields(DemoParams)}
        if unknown:
            raise TypeError(f"generate_demo: unknown parameter(s) {sorted(unknown)}")
        params = DemoParams(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, visual_dim=visual_dim,
                            text_dim=text_dim, difficulty=difficulty, ambiguous_fraction=ambiguous_fraction,
                            distractor_fraction=distractor_fraction, **more)
    return generate_from_params(root, params, progress=progress)


# ----------------------------------------------------------------------------- reading ground truth

def load_ground_truth(root: str | os.PathLike = "data", collection: str = "demo") -> GroundTruth:
    """Read ``root/collection/GroundTruth/`` (written by the generator; real releases have none)."""
    truth_dir = Path(root) / collection / "GroundTruth"
    loaded = {}
    for name in ("world.json", "videos.json", "captions.json"):
        path = truth_dir / name
        if not path.is_file():
            raise DataError(f"{path}: missing ground-truth file (only generated collections have one)")
        try:
            loaded[name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from err
    meta = loaded["world.json"]
    videos = {v: VideoTruth(split=d["split"], n_frames=d["n_frames"], scene=d["scene"],
                            moments=[MomentTruth(**m) for m in d["moments"]], n_events=d.get("n_events", 0),
                            unrelated_share=d.get("unrelated_share", 0.0))
              for v, d in loaded["videos.json"].items()}
    words_path = Path(root) / collection / "TextData" / f"{collection}_words.json"
    words = json.loads(words_path.read_text(encoding="utf-8")) if words_path.is_file() else {}
    refs = meta["word_refs"]
    captions = {}
    for c, d in loaded["captions.json"].items():
        cap_words = words.get(c, [])
        captions[c] = CaptionTruth(words=cap_words, word_refs=[refs.get(w) for w in cap_words], **d)
    return GroundTruth(params=meta["params"], concepts=meta["concepts"], word_types=meta["word_types"],
                       videos=videos, captions=captions)


def file_digests(directory: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` keyed by relative path (for reproducibility checks)."""
    base = Path(directory)
    return {str(p.relative_to(base)): file_sha256(p)
            for p in sorted(base.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- command line
