"""The demo vocabulary encoder: typed words become the token rows the generator would have written."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from ralbook.data import demo
from ralbook.data.collection import Collection
from ralbook.data.demo_text import DemoTextEncoder
from ralbook.errors import DataError

SMALL = {"n_train": 4, "n_val": 2, "n_test": 3}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A generated collection, and for every caption the generator's RNG state just before its token rows."""
    root = tmp_path_factory.mktemp("demo_text")
    calls = []
    original = demo._token_features

    def recording(rng, world, p, words):
        calls.append((list(words), copy.deepcopy(rng.bit_generator.state)))
        return original(rng, world, p, words)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_token_features", recording)
        out = demo.generate_demo(root, seed=11, **SMALL)
    truth = demo.load_ground_truth(root)
    cap_ids = list(truth.captions)  # generation order, the order of the calls
    assert len(cap_ids) == len(calls)
    return root, out, dict(zip(cap_ids, calls)), truth


def test_encoder_reproduces_the_stored_token_rows(recorded):
    """Rebuilt from world.json alone, the encoder gives the stored float32 rows bit for bit, given the same draw."""
    root, out, calls, truth = recorded
    encoder = DemoTextEncoder.from_collection(out)
    coll = Collection(root, "demo")
    generic_seen = False
    for cap_id, (words, state) in list(calls.items())[:12]:
        assert words == truth.captions[cap_id].words
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        rows = encoder.encode_words(words, rng)
        stored = coll.text_features(cap_id)
        assert rows.dtype == np.float32 and rows.shape == stored.shape
        np.testing.assert_array_equal(rows, stored)
        generic_seen |= any(truth.word_types[w] == "generic" for w in words)
    assert generic_seen  # the random-mixture path of generic words was covered too


def test_a_different_draw_is_not_the_stored_row(recorded):
    root, out, calls, _ = recorded
    encoder = DemoTextEncoder.from_collection(out)
    cap_id, (words, _) = next(iter(calls.items()))
    rows = encoder.encode_words(words, np.random.default_rng(12345))
    assert not np.allclose(rows, Collection(root, "demo").text_features(cap_id))


def test_unknown_words_are_named_and_known_ones_kept_in_order(recorded):
    _, out, _, _ = recorded
    encoder = DemoTextEncoder.from_collection(out)
    q = encoder.encode("A person opens the Zebra door, then xylophone zebra!", seed=3)
    assert q.words == ["a", "person", "opens", "the", "door", "then"]
    assert q.unknown == ["zebra", "xylophone"]
    assert q.features.shape == (6, 48)
    again = encoder.encode("a person opens the door then", seed=3)
    np.testing.assert_array_equal(q.features, again.features)  # unknown words change nothing
    assert not np.array_equal(q.features, encoder.encode("a person opens the door then", seed=4).features)
    with pytest.raises(DataError, match="none of its words.*unknown: zebra, quux"):
        encoder.encode("zebra quux")


def test_a_collection_without_a_world_file_or_of_another_version_is_refused(recorded, tmp_path):
    with pytest.raises(DataError, match="world.json: missing"):
        DemoTextEncoder.from_collection(tmp_path)
    _, out, _, _ = recorded
    meta = json.loads((out / "GroundTruth" / "world.json").read_text())
    meta["generator_version"] = demo.GENERATOR_VERSION + 1
    (tmp_path / "GroundTruth").mkdir()
    (tmp_path / "GroundTruth" / "world.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"version {demo.GENERATOR_VERSION + 1}.*regenerate"):
        DemoTextEncoder.from_collection(tmp_path)
