"""Word confidence measured (ralbook.studies.word_confidence) and its sentences (report.word_confidence_text)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ralbook import stats
from ralbook.errors import ConfigError, DataError
from ralbook.studies import report
from ralbook.studies import word_confidence as W

FILLERS = {"the", "then", "a"}


# ----------------------------------------------------------------------------- (a) the fillers' share


def test_filler_shares_against_a_hand_computation():
    confidence = np.array([[0.1, 0.2, 0.7, 0.0],      # the red ball: filler mass 0.1, uniform 1/3
                           [0.25, 0.25, 0.25, 0.25],  # then the a ball: 0.75 vs 3/4
                           [0.5, 0.5, 0.0, 0.0],      # red ball: no filler, left out
                           [0.5, 0.5, 0.0, 0.0],      # the a: no content word, left out
                           [0.6, 0.3, 0.1, 0.0]])     # the ball + a row without a word (content)
    mask = (confidence > 0).astype(float)
    mask[1] = 1.0
    words = [["the", "red", "ball"], ["then", "the", "a", "ball"], ["red", "ball"], ["The", "a"], ["the", "ball"]]
    s = W.filler_shares(confidence, mask, words, FILLERS)
    np.testing.assert_array_equal(s.rows, [0, 1, 4])
    np.testing.assert_allclose(s.mass, [0.1, 0.75, 0.6])
    np.testing.assert_allclose(s.uniform, [1 / 3, 3 / 4, 1 / 3])
    np.testing.assert_allclose(s.excess, [0.1 - 1 / 3, 0.0, 0.6 - 1 / 3])
    c = s.comparison(n_boot=200)
    assert c.estimate == pytest.approx(np.mean(s.excess)) and c.n == 3
    with pytest.raises(DataError, match="no caption holds both"):
        W.filler_shares(confidence[2:3], mask[2:3], words[2:3], FILLERS)


def _shares(mass, uniform) -> stats.Comparison:
    return W.FillerShares(np.asarray(mass), np.asarray(uniform), np.arange(len(mass))).comparison(n_boot=500)


def test_filler_share_sentence_has_three_outcomes_and_swaps():
    rng = np.random.default_rng(0)
    uniform = rng.uniform(0.2, 0.5, 200)
    lower = _shares(uniform * 0.8 + rng.normal(0, 0.01, 200), uniform)
    text = report.word_confidence_text(lower, None, None)
    assert "Fillers get less weight than their share" in text and "keep about 80% of their uniform share" in text
    assert "takes about 20% of it away" in text
    assert "does not ignore them" in text
    higher = _shares(uniform, uniform * 0.8 + rng.normal(0, 0.01, 200))   # inputs swapped
    assert "Fillers get more weight than their share" in report.word_confidence_text(higher, None, None)
    tiny = _shares(uniform + 0.001 + rng.normal(0, 0.05, 200), uniform)  # a difference of 0.001 in noise
    text = report.word_confidence_text(tiny, None, None)
    assert tiny.verdict == "undecided" and "cannot be told from their uniform share at this size" in text
    assert "less weight" not in text and "more weight" not in text


def test_auc_is_worded_as_ranking_never_as_ignoring():
    per_caption = stats.bootstrap_mean(np.full(50, 0.9) + np.linspace(-0.05, 0.05, 50), unit="captions", n_boot=300)
    text = report.word_confidence_text(None, 0.977, per_caption)
    assert "ranked above a filler word with probability 0.977" in text and "above chance" in text
    assert "ignor" not in text.replace("does not ignore", "") and "count little" not in text
    flat = stats.bootstrap_mean(np.linspace(0.3, 0.7, 50), unit="captions", n_boot=300)
    text = report.word_confidence_text(None, 0.51, flat)
    assert "cannot be told from chance" in text and "Content words are ranked above" not in text
    assert "no word types" in report.word_confidence_text(None, None, None)


def test_localisation_is_described_without_a_verdict():
    loc = {"content_hit_rate": 0.7, "filler_hit_rate": 0.4, "chance": 0.2, "n_captions": 40}
    text = report.word_confidence_text(None, 0.9, None, localisation=loc)
    assert "70%" in text and "40 captions" in text and "localise" not in text


# ----------------------------------------------------------------------------- (b) three weightings


def test_weighting_matrix_rows():
    learned = torch.tensor([[0.1, 0.2, 0.7, 0.0], [0.5, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    content = torch.tensor([[0.0, 1, 1, 1], [0, 0, 1, 1]])  # caption 2: only fillers
    assert torch.equal(W.weighting_matrix("learned", learned, mask, content), learned)
    torch.testing.assert_close(W.weighting_matrix("uniform", learned, mask, content),
                               torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0], [0.5, 0.5, 0, 0]]))
    torch.testing.assert_close(W.weighting_matrix("content only", learned, mask, content),
                               torch.tensor([[0, 0.5, 0.5, 0], [0.5, 0.5, 0, 0]]))  # no content word: uniform
    with pytest.raises(ConfigError, match="weighting 'idf'"):
        W.weighting_matrix("idf", learned, mask, content)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A generated demo collection (12 test videos) and a small untrained model with CSA and word confidence."""
    from micro import micro_model
    from ralbook.data.demo import load_ground_truth

    root = tmp_path_factory.mktemp("wc_micro")
    coll, model = micro_model(root, n_test=12, seed=3)
    truth = load_ground_truth(root, "demo")
    return root, coll, model, truth


def test_frame_branch_ranks_brute_force(micro, one_thread):
    """learned = the model's own frame score; uniform and content only = plain means of the best-frame cosines."""
    from ralbook.data.datasets import QueryDataset, VideoDataset, collate_queries, collate_videos

    _, coll, model, truth = micro
    caps = [c for c, _ in coll.captions("test")]
    vids = coll.videos("test")
    words = {c: truth.captions[c].words for c in caps}
    fillers = {w for w, t in truth.word_types.items() if t == "filler"}
    ranks = W.frame_branch_ranks(model, coll, caps, vids, words, fillers, batch_size=7)
    assert set(ranks) == set(W.WEIGHTINGS) and all(r.shape == (len(caps),) for r in ranks.values())
    with torch.no_grad():
        vb = collate_videos([VideoDataset(coll, vids)[i] for i in range(len(vids))])
        v = model.encode_videos(vb["clip_feats"], vb["frame_feats"], vb["frame_mask"])
        for i, cap in enumerate(caps[:6]):
            qb = collate_queries([QueryDataset(coll, [cap])[0]])
            q = model.encode_queries(qb["query_feats"], qb["query_mask"])
            own = model.frame_scores(q, v)[0].numpy()
            words_t = F.normalize(q.words[0], dim=-1).numpy()
            best = []
            for j in range(len(vids)):
                n_f = int(v.mask[j].sum())
                frames = F.normalize(v.frames[j, :n_f], dim=-1).numpy()
                best.append((words_t @ frames.T).max(axis=1))
            best = np.stack(best)                                   # (Nv, n_words)
            is_content = np.array([w not in fillers for w in words[cap]])
            expected = {"learned": own, "uniform": best.mean(axis=1), "content only": best[:, is_content].mean(axis=1)}
            target = vids.index(coll.video_of(cap))
            for kind, scores in expected.items():
                rank = 1 + int(np.sum(scores > scores[target]))       # no ties in continuous scores
                assert ranks[kind][i] == rank, (kind, cap)
    comparisons = W.compare_weightings(ranks, n_boot=200)
    assert set(comparisons) == {"uniform", "content only"}
    c = comparisons["uniform"]
    assert c.value_a == pytest.approx(stats.ranking_values(ranks["learned"], "SumR").mean())
    assert "frame-branch SumR" in stats.describe(c, what="frame-branch SumR")


def test_frame_branch_ranks_refuse_a_model_without_csa(micro):
    from ralbook.config import ModelConfig
    from ralbook.model import build_model

    _, coll, _, _ = micro
    plain = build_model(ModelConfig(visual_dim=coll.visual_dim, text_dim=coll.text_dim, hidden_size=16, n_heads=2,
                                    csa=False, msra=False))
    with pytest.raises(ConfigError, match="CSA off"):
        W.frame_branch_ranks(plain, coll, [], coll.videos("test"), {}, set())


# ----------------------------------------------------------------------------- query box


def test_demo_query_names_unknown_words_and_describes_the_top_videos(micro, one_thread):
    from ralbook.data.demo_text import DemoTextEncoder

    root, coll, model, truth = micro
    encoder = DemoTextEncoder.from_collection(root / "demo")
    vids = coll.videos("test")
    result = W.demo_query(model, coll, encoder, truth, "a person opens the red door zorp", vids, top=5)
    assert result.query.unknown == ["zorp"] and result.query.words[-1] == "door"
    assert len(result.hits) == 5 and len({h.video for h in result.hits}) == 5
    assert result.confidence.shape == (len(result.query.words),)
    assert result.confidence.sum() == pytest.approx(1.0, abs=1e-5)
    named = {"open", "red", "door"}
    assert set(W.query_concepts(result.query.words, truth)) == named
    table = W.hits_table(result, truth)
    for row, hit, moments in zip(table, result.hits, result.moments):
        video = truth.videos[hit.video]
        assert row["video"] == hit.video and row["frames"] == video.n_frames and len(moments) == len(video.moments)
        hand = sum(len(named & set(m.concepts.values())) for m in video.moments)
        assert row["concepts named by the query"] == hand
        assert "*" not in row["moments (CAPITALS = named by the query)"]
    with pytest.raises(DataError, match="none of its words"):
        W.demo_query(model, coll, encoder, truth, "zorp blib", vids)


def test_query_figures_and_strips_are_readable(micro, one_thread):
    """Every text >= 10 pt, at most 9.5 in wide (shown unscaled), white exactly at relative confidence 1,
    titles wrapped between words only."""
    import matplotlib.pyplot as plt

    from ralbook.data.demo_text import DemoTextEncoder
    from ralbook.viz import word_confidence as V

    root, coll, model, truth = micro
    encoder = DemoTextEncoder.from_collection(root / "demo")
    result = W.demo_query(model, coll, encoder, truth, "then a person opens the red door", coll.videos("test"))
    figs = W.query_figures(result, FILLERS)
    assert set(figs) == {"confidence", "word_frame"}
    long_title = "v0001#enc#0: " + " ".join(["somebody", "quickly", "throws", "the", "purple", "frisbee"] * 4)
    strips = V.relative_confidence_strips([(long_title, ["a", "b", "c"], np.array([0.2, 1.0, 2.5]))])
    for fig in (figs["confidence"], strips):
        assert fig.get_size_inches()[0] <= V.MAX_WIDTH
        fig.canvas.draw()
        sizes = [t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_text().strip() and t.get_visible()]
        assert sizes and min(sizes) >= V.MIN_FONT
        image = fig.axes[0].images[0]
        assert image.norm(1.0) == pytest.approx(0.5)
        assert image.norm.vmin + image.norm.vmax == pytest.approx(2.0)  # symmetric around the uniform share
    title = strips.axes[0].get_title(loc="left")
    assert "\n" in title and title.replace("\n", " ") == long_title
    for fig in (*figs.values(), strips):
        plt.close(fig)


def test_centred_norm_half_range():
    from ralbook.viz.word_confidence import centred_norm

    near = centred_norm([np.array([0.96, 1.04]), np.array([1.0])])
    assert (near.vmin, near.vmax) == pytest.approx((0.9, 1.1))  # at least +-0.1
    wide = centred_norm([np.array([0.87, 1.02])])
    assert (wide.vmin, wide.vmax) == pytest.approx((0.85, 1.15))  # 0.13 rounded up to 0.15
    assert wide(1.0) == pytest.approx(0.5) and wide(0.85) == pytest.approx(0.0) and wide(1.15) == pytest.approx(1.0)
    with pytest.raises(DataError, match="half_range"):
        centred_norm([np.array([1.0])], half_range=0.0)


def test_query_box_runs_each_submitted_query_once_and_says_what_it_ranks(capsys):
    """Enter (a value change) and the rank button both submit; a query equal to the one shown is not run again
    (leaving the box, then clicking, submits the same text twice); while ``render`` runs, the line above the
    output names the query (escaped), and afterwards tells how to submit."""
    from ralbook.viz import word_confidence as V

    calls: list[tuple[str, object]] = []
    line: list = []  # the status line, once the box exists (the example runs while it is built)
    box = V.query_box(lambda q: calls.append((q, line[0].value if line else None)), example="a door")
    (text, button), status, out = box.children[0].children, box.children[1], box.children[2]
    line.append(status)
    assert type(text).__name__ == "Text" and type(button).__name__ == "Button" and type(out).__name__ == "Output"
    assert button.description == "rank"
    assert calls == [("a door", None)]  # the example is shown at once
    text.value = "the red <ball>"  # Enter
    button.click()  # the same text again: nothing to do
    assert calls[1:] == [("the red <ball>", "ranking <i>the red &lt;ball&gt;</i> ...")]
    text.value = "a door"  # an earlier query, not the one shown: runs
    assert [q for q, _ in calls] == ["a door", "the red <ball>", "a door"]
    assert status.value == V.QUERY_HINT and "Enter" in V.QUERY_HINT and "rank" in V.QUERY_HINT
    capsys.readouterr()  # display() of the box prints its repr outside a kernel


def test_query_box_displays_and_closes_the_figures_render_returns(monkeypatch):
    """Each returned figure is displayed once and closed (no reliance on the inline backend's show); a render that
    returns no figures falls back to plt.show()."""
    import IPython.display
    import matplotlib.pyplot as plt

    from ralbook.viz import word_confidence as V

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, *a, **k: shown.append(obj))
    figs = {"a": plt.figure(), "b": plt.figure()}
    assert V.shown_figures(figs) == 2
    assert shown == [figs["a"], figs["b"]]
    assert not set(plt.get_fignums()) & {figs["a"].number, figs["b"].number}  # both closed
    fallback = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: fallback.append(True))
    assert V.shown_figures(None) == 0 and V.shown_figures("text") == 0 and fallback == [True, True]
