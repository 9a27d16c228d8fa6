"""Word confidence measured: how much weight fillers keep, and what the learned weights do for the frame branch.

Why this module: "word confidence makes fillers count little" is a claim about weights and about retrieval,
and an AUC of content over filler words measures neither. It says content words are *ranked* above fillers,
which holds even when fillers keep most of their share. So 05 measures the claim directly:

* :func:`filler_shares` - per caption, the share of its confidence mass on filler words against the share
  fillers would get under uniform weights (their share of the words); the per-caption difference is
  averaged with a paired bootstrap over captions (:func:`ralbook.stats.paired_bootstrap`).
* :func:`frame_branch_ranks` - the frame branch's set-to-set score recomputed with three word weightings
  of the same encoded words: the learned confidences (the model's own frame score), uniform weights, and
  uniform over content words only (fillers weigh 0); :func:`compare_weightings` compares them paired over
  the same queries (:func:`ralbook.stats.compare_rankings`).
* :func:`demo_query` - a typed query over the demo vocabulary, ranked by the model, with what each of the
  top videos contains (its moments' concepts, those shared with the query marked).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from matplotlib.figure import Figure

import numpy as np
import torch
import torch.nn.functional as F

from ralbook import stats
from ralbook.data.datasets import QueryDataset, batched, collate_queries
from ralbook.data.demo_text import DemoTextEncoder, EncodedQuery
from ralbook.errors import ConfigError, DataError
from ralbook.model.scoring import masked_max_sim
from ralbook.retrieval.evaluate import encode_video_set
from ralbook.retrieval.metrics import ranks_from_scores
from ralbook.retrieval.search import Hit, search
from ralbook.runtime.device import to_device
from ralbook.studies.analysis import frame_span_to_rows
from ralbook.viz.diagrams import word_frame_timeline
from ralbook.viz.word_confidence import relative_confidence_strips

WEIGHTINGS: tuple[str, ...] = ("learned", "uniform", "content only")
WEIGHTING_NAMES = {"learned": "learned word confidence", "uniform": "uniform word weights",
                   "content only": "uniform weights on content words only"}


# ----------------------------------------------------------------------------- (a) the fillers' share


@dataclass(frozen=True)
class FillerShares:
    """Per caption holding both fillers and content words: the confidence mass on fillers and their uniform
    share (n_fillers / n_words); ``rows`` are the captions' row indices in the input."""

    mass: np.ndarray
    uniform: np.ndarray
    rows: np.ndarray

    @property
    def excess(self) -> np.ndarray:
        """mass - uniform: negative when fillers get less than their uniform share."""
        return self.mass - self.uniform

    def comparison(self, n_boot: int = stats.N_BOOT, seed: int = 0) -> stats.Comparison:
        """Mean filler mass minus mean uniform share, paired bootstrap over captions (lower = fillers weigh less)."""
        return stats.paired_bootstrap(self.mass, self.uniform, np.mean, name_a="the fillers' share of word confidence",
                                      name_b="their share of the words (uniform weights)",
                                      metric="share of a caption's weight on fillers", unit="captions",
                                      higher_is_better=False, n_boot=n_boot, seed=seed)


def _filler_flags(words: Sequence[str], n: int, fillers: set[str] | frozenset[str]) -> np.ndarray:
    """One flag per token row: True for a filler word; rows without a word (cut or placeholder) count as content."""
    return np.array([t < len(words) and words[t].lower() in fillers for t in range(n)], dtype=bool)


def filler_shares(confidence: np.ndarray, mask: np.ndarray, words: Sequence[Sequence[str]],
                  fillers: set[str] | frozenset[str]) -> FillerShares:
    """Confidence mass on fillers and their uniform share, for each caption with both kinds of words.

    ``confidence`` (Nq, L) sums to 1 over each caption's valid rows (``mask``); ``words[i]`` lists caption
    i's words, one per token row.
    """
    g, m = np.asarray(confidence, dtype=np.float64), np.asarray(mask, dtype=np.float64)
    if g.shape != m.shape or g.shape[0] != len(words):
        raise DataError(f"filler_shares: confidence {g.shape}, mask {m.shape} and words for {len(words)} captions "
                        "must describe the same captions")
    mass, uniform, rows = [], [], []
    for i, ws in enumerate(words):
        n = int(m[i].sum())
        flags = _filler_flags(ws, n, fillers)
        if flags.any() and not flags.all():
            mass.append(float(g[i, :n][flags].sum()))
            uniform.append(float(flags.sum()) / n)
            rows.append(i)
    if not rows:
        raise DataError("filler_shares: no caption holds both a filler and a content word")
    return FillerShares(np.asarray(mass), np.asarray(uniform), np.asarray(rows, dtype=np.int64))


# ----------------------------------------------------------------------------- (b) frame branch, three weightings


def weighting_matrix(kind: str, learned: torch.Tensor, mask: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Word weights (Nq, L) of one weighting; each row sums to 1 over its valid (and, content only, non-filler) rows.

    A caption with no content word falls back to uniform weights under "content only".
    """
    if kind == "learned":
        return learned
    keep = mask if kind == "uniform" else mask * content
    if kind == "content only":
        keep = torch.where(keep.sum(dim=-1, keepdim=True) > 0, keep, mask)
    elif kind != "uniform":
        raise ConfigError(f"weighting {kind!r}: expected one of {list(WEIGHTINGS)}")
    return keep / keep.sum(dim=-1, keepdim=True).clamp(min=1.0)


@torch.no_grad()
def frame_branch_ranks(model: Any, collection: Any, cap_ids: Sequence[str], video_ids: Sequence[str],
                       words: dict[str, Sequence[str]], fillers: set[str] | frozenset[str],
                       weightings: Sequence[str] = WEIGHTINGS, batch_size: int = 128,
                       progress: bool = False) -> dict[str, np.ndarray]:
    """Per-query rank of the caption's own video under the frame branch with each word weighting.

    The words' best-frame cosines are computed once (the model's CSA frame score: per word its best frame);
    only the weights that average them change. "learned" reproduces the model's own frame-branch ranks.
    """
    if not getattr(model.cfg, "csa", False):
        raise ConfigError("frame_branch_ranks: the model has CSA off, so its frame score has no word weights")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    index = {v: i for i, v in enumerate(video_ids)}
    missing = [c for c in cap_ids if collection.video_of(c) not in index]
    if missing:
        raise DataError(f"frame_branch_ranks: {len(missing)} caption(s) belong to no listed video, e.g. {missing[0]}")
    ranks: dict[str, list[torch.Tensor]] = {k: [] for k in weightings}
    try:
        videos = encode_video_set(model, collection, list(video_ids), device, 64, progress=progress)
        frames = F.normalize(videos.frames, dim=-1)
        for chunk in batched(list(cap_ids), batch_size):
            ds = QueryDataset(collection, chunk)
            batch = to_device(collate_queries([ds[i] for i in range(len(ds))]), device)
            q = model.encode_queries(batch["query_feats"], batch["query_mask"])
            w = F.normalize(q.words, dim=-1)
            sims = masked_max_sim(w, q.mask, frames, videos.mask).float()  # (Nq, Nv, L)
            learned = model._word_weights(w, q.mask).float()
            n_rows = q.mask.shape[1]
            content = torch.tensor(np.stack([~_filler_flags(words[c], n_rows, fillers) for c in chunk]),
                                   dtype=q.mask.dtype, device=q.mask.device)
            relevant = torch.tensor([[index[collection.video_of(c)]] for c in chunk], device=sims.device)
            for kind in weightings:
                weights = weighting_matrix(kind, learned, q.mask.float(), content.float())
                scores = torch.einsum("qvt,qt->qv", sims, weights)
                ranks[kind].append(ranks_from_scores(scores, relevant).cpu())
    finally:
        model.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in ranks.items()}


def compare_weightings(ranks: dict[str, np.ndarray], metric: str = "SumR", n_boot: int = stats.N_BOOT,
                       seed: int = 0) -> dict[str, stats.Comparison]:
    """Learned weights against each other weighting, paired over the same queries."""
    if "learned" not in ranks:
        raise ConfigError(f"compare_weightings: need the 'learned' ranks, got {sorted(ranks)}")
    return {other: stats.compare_rankings(ranks["learned"], ranks[other], metric, name_a=WEIGHTING_NAMES["learned"],
                                          name_b=WEIGHTING_NAMES[other], n_boot=n_boot, seed=seed)
            for other in ranks if other != "learned"}


# ----------------------------------------------------------------------------- query box on the demo vocabulary


@dataclass
class QueryResult:
    """A typed query ranked over a split: the encoded words, the hits, and per hit its ground-truth moments."""

    query: EncodedQuery
    confidence: np.ndarray                  # (n_words,) word confidence g of the typed words
    hits: list[Hit]
    moments: list[list[tuple[float, float, str]]] = field(default_factory=list)  # per hit: (row0, row1, label)
    shared: list[list[set[str]]] = field(default_factory=list)                 # per hit, per moment: shared words
    best_moment: list[Optional[int]] = field(default_factory=list)             # per hit: moment sharing most


def query_concepts(words: Sequence[str], truth: Any) -> dict[str, str]:
    """Concept -> the query word naming it, for the specific words of a typed query (demo ground truth)."""
    found: dict[str, str] = {}
    for concept, info in truth.concepts.items():
        for w in words:
            if w in info["words"]:
                found.setdefault(concept, w)
    return found


@torch.no_grad()
def demo_query(model: Any, collection: Any, encoder: DemoTextEncoder, truth: Any, text: str,
               video_ids: Sequence[str], top: int = 5, seed: int = 0) -> QueryResult:
    """Encode ``text`` with the demo vocabulary, rank ``video_ids`` (fused score) and describe the top videos."""
    encoded = encoder.encode(text, seed=seed)
    hits = search(model, collection, list(video_ids), encoded.features, top, progress=False)
    confidence = hits[0].confidence if hits and hits[0].confidence is not None else np.array([])
    named = query_concepts(encoded.words, truth)
    result = QueryResult(encoded, np.asarray(confidence, dtype=float), hits)
    for hit in hits:
        video = truth.videos.get(hit.video)
        rows, shared = [], []
        for m in (video.moments if video else []):
            r0, r1 = frame_span_to_rows((m.start, m.end), hit.n_frames, model.cfg.max_frames)
            concepts = [m.concepts[s] for s in ("action", "object", "attribute", "place") if s in m.concepts]
            rows.append((r0, r1, " ".join(concepts)))
            shared.append({c for c in concepts if c in named})
        result.moments.append(rows)
        result.shared.append(shared)
        counts = [len(s) for s in shared]
        result.best_moment.append(int(np.argmax(counts)) if counts and max(counts) > 0 else None)
    return result


def hits_table(result: QueryResult, truth: Any) -> list[dict[str, Any]]:
    """One row per ranked video: rank, id, fused score (3 decimals), length, and its moments' concepts with the
    concepts the query names in capitals (plain text, no markdown)."""
    rows = []
    for rank, (hit, moments, shared) in enumerate(zip(result.hits, result.moments, result.shared), 1):
        parts = []
        for k, ((_, _, label), sh) in enumerate(zip(moments, shared), 1):
            shown = " ".join(c.upper() if c in sh else c for c in label.split())
            parts.append(f"M{k}: {shown}")
        video = truth.videos.get(hit.video)
        rows.append({"rank": rank, "video": hit.video, "score": round(hit.score, 3),
                     "frames": video.n_frames if video else hit.n_frames,
                     "concepts named by the query": sum(len(s) for s in shared),
                     "moments (CAPITALS = named by the query)": "; ".join(parts) or "(no ground truth)"})
    return rows


def query_figures(result: QueryResult, fillers: set[str] | frozenset[str] = frozenset()) -> dict[str, Figure]:
    """The typed query's relative word confidences, and the word-by-frame map of its top video with that video's
    whole timeline of moments. The outlined moment is the one sharing most concepts with the query, or, when
    none shares any, the moment the model reads off its frame profile (the title says which)."""
    words = result.query.words
    relative = result.confidence * len(words)
    figures = {"confidence": relative_confidence_strips([(f"query: {result.query.text}", words, relative)], fillers)}
    if not result.hits or result.hits[0].similarity is None:
        return figures
    hit, moments, best = result.hits[0], result.moments[0], result.best_moment[0]
    n = hit.similarity.shape[0]
    if best is not None:
        span, name = moments[best][:2], "the moment sharing most concepts"
        how = f"outlined: M{best + 1}, the moment sharing most concepts with the query"
    else:
        span, name = (hit.moment.first_row, hit.moment.last_row + 1), "the model's best window"
        how = "no moment shares a concept with the query; outlined: the model's own best moment"
    title = f"rank 1: {hit.video} (fused score {hit.score:.3f}); {how}"
    figures["word_frame"] = word_frame_timeline(hit.similarity, words[:n], moments, span, result.confidence[:n],
                                                title=title, fillers=sorted(fillers), span_name=name)
    return figures
