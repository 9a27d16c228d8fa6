"""The training objective of docs/method.md#training-objective: small loss functions, one job each, and their weighted sum.

Shapes: ``scores`` (Nq, Nv) with ``labels`` (Nq,) = video index of each query; proxies (Nv, K, d).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ralbook.config import LossConfig
from ralbook.errors import NonFiniteError
from ralbook.model import ModelOutput


def _positives(labels: Tensor, n_videos: int) -> Tensor:
    """(Nq, Nv) boolean: query i belongs to video j."""
    return labels.unsqueeze(1) == torch.arange(n_videos, device=labels.device).unsqueeze(0)


def nce(scores: Tensor, labels: Tensor) -> Tensor:
    """InfoNCE on raw scores: text->video over all videos, plus video->(all its queries) over all queries."""
    pos = _positives(labels, scores.shape[1])
    t2v = torch.logsumexp(scores, dim=1) - scores.gather(1, labels.unsqueeze(1)).squeeze(1)
    own = torch.logsumexp(scores.masked_fill(~pos, float("-inf")), dim=0)
    has_query = pos.any(dim=0)  # a video without queries contributes 0, as in the public code
    v2t = torch.where(has_query, torch.logsumexp(scores, dim=0) - own, torch.zeros_like(own))
    return t2v.mean() + v2t.mean()


def _hinge_to_sampled_negative(scores: Tensor, labels: Tensor, margin: float, hard: bool, hard_pool_size: int,
                               generator: Optional[torch.Generator] = None) -> Tensor:
    """Per row: hinge between its positive column ``labels[row]`` and one sampled other column, (N,).

    The negative is a random other column (hard: random among the ``hard_pool_size`` best-scoring others).
    """
    n, m = scores.shape
    pos = _positives(labels, m)
    positive = scores.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = scores.detach().masked_fill(pos, float("-inf"))
    pool = max(1, min(hard_pool_size, m - 1)) if hard else max(1, m - 1)
    if hard:
        candidates = others.topk(pool, dim=1).indices
    else:
        candidates = torch.argsort(pos.float(), dim=1, stable=True)[:, :pool]  # every other column
    pick = torch.randint(0, pool, (n,), generator=generator).to(scores.device)
    negative = scores.gather(1, candidates.gather(1, pick.unsqueeze(1))).squeeze(1)
    return (margin + negative - positive).clamp(min=0)


def triplet(scores: Tensor, labels: Tensor, margin: float, hard: bool, hard_pool_size: int,
            generator: Optional[torch.Generator] = None) -> Tensor:
    """Hinge loss on normalised scores with one sampled negative per query and per video.

    text->video: a random other video (hard: random among the ``hard_pool_size`` best-scoring others);
    video->text: positive = mean of its queries, negative = a random other query (hard: the best one).
    """
    nq, nv = scores.shape
    pos = _positives(labels, nv)
    t2v = _hinge_to_sampled_negative(scores, labels, margin, hard, hard_pool_size, generator)
    # video -> text
    pos_v2t = (scores * pos).sum(0) / pos.sum(0).clamp(min=1)
    others_v = scores.detach().t().masked_fill(pos.t(), float("-inf"))  # (Nv, Nq)
    if hard:
        neg_idx = others_v.argmax(dim=1)
    else:
        noise = torch.rand(others_v.shape, generator=generator).to(scores.device)
        neg_idx = noise.masked_fill(pos.t(), -1.0).argmax(dim=1)
    neg_v2t = scores.t().gather(1, neg_idx.unsqueeze(1)).squeeze(1)
    valid = pos.any(0) & (~pos).any(0)
    v2t = torch.where(valid, (margin + neg_v2t - pos_v2t).clamp(min=0), torch.zeros_like(pos_v2t))
    return t2v.sum() / nq + v2t.sum() / nv


def diagonal_triplet(scores: Tensor, margin: float, hard: bool, hard_pool_size: int,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """MS-SL's frame triplet on (N, N) scores with positives on the diagonal: rows, then columns.

    A single query has no negative and gives 0 (the public code crashes there).
    """
    n = scores.shape[0]
    if n < 2:
        return scores.sum() * 0.0
    diagonal = torch.arange(n, device=scores.device)
    rows = _hinge_to_sampled_negative(scores, diagonal, margin, hard, hard_pool_size, generator)
    columns = _hinge_to_sampled_negative(scores.t(), diagonal, margin, hard, hard_pool_size, generator)
    return rows.sum() / n + columns.sum() / n


def pair_nce(scores: Tensor) -> Tensor:
    """MS-SL's frame NCE on (N, N) raw scores: row i and column i together against the diagonal entry.

    The diagonal entry enters the log-sum-exp twice (once from the row, once from the column), as in the public code.
    """
    both = torch.cat([scores, scores.t()], dim=1)
    return (torch.logsumexp(both, dim=1) - scores.diagonal()).mean()


def query_diversity(pooled: Tensor, labels: Tensor, margin: float, alpha: float, lam: float) -> Tensor:
    """GMMFormer's query-diversity loss: pushes apart queries of the same video (pairs i != j)."""
    x = F.normalize(pooled, dim=-1)
    cos = x @ x.t()
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~torch.eye(len(labels), dtype=torch.bool,
                                                                   device=labels.device)
    terms = (1 + cos) ** lam * torch.log(1 + torch.exp(alpha * (cos + margin)))
    return (terms * same).sum() / len(labels)


def _assignment(sim: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment maximising ``sim``; NonFiniteError instead of scipy's traceback on NaN or inf."""
    cost = sim.detach().float().cpu().numpy()
    if not np.isfinite(cost).all():
        raise NonFiniteError("the training loss became non-finite: the optimal-transport step got NaN or inf "
                             "similarities; lower train.lr, turn off train.amp or check the features")
    return linear_sum_assignment(cost, maximize=True)


def query_diversity_gmmformer(pooled: Tensor, labels: Tensor, margin: float, alpha: float) -> Tensor:
    """GMMFormer's query-diversity loss: per query j, log(1 + sum over the other queries i of its video
    of exp(alpha (cos_ij + margin))), averaged over all queries."""
    x = F.normalize(pooled, dim=-1)
    cos = x @ x.t()
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~torch.eye(len(labels), dtype=torch.bool,
                                                                   device=labels.device)
    sums = torch.where(same, torch.exp(alpha * (cos + margin)), torch.zeros_like(cos)).sum(dim=0)
    return torch.log(1 + sums).sum() / len(labels)


def optimal_transport(pooled: Tensor, clips: Tensor, labels: Tensor) -> Tensor:
    """1 - mean cosine of a one-to-one (Hungarian) assignment of each video's queries to its clips.

    Videos with a single query are skipped; a batch without any video of >= 2 queries gives 0
    (the public code crashes there).
    """
    q, c = F.normalize(pooled, dim=-1), F.normalize(clips, dim=-1)
    matched: list[Tensor] = []
    for v in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == v).squeeze(1)
        if len(rows) < 2:
            continue
        sim = q[rows] @ c[v].t()  # (n_q, Lc)
        r, col = _assignment(sim)
        matched.append(sim[torch.as_tensor(r), torch.as_tensor(col)])
    if not matched:
        return pooled.sum() * 0.0
    return 1.0 - torch.cat(matched).mean()


def ot_assignment(pooled: Tensor, clips: Tensor, labels: Tensor) -> dict[int, tuple[list[int], list[int]]]:
    """The assignment used by ``optimal_transport``: video -> (query rows within the video, clip columns)."""
    q, c = F.normalize(pooled, dim=-1), F.normalize(clips, dim=-1)
    out = {}
    for v in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == v).squeeze(1)
        if len(rows) >= 2:
            r, col = _assignment(q[rows] @ c[v].t())
            out[v] = (r.tolist(), col.tolist())
    return out


def proxy_matching_one_way(sim: Tensor, k: int) -> Tensor:
    """Rows: B*K proxies; for each row, minus the mean log-softmax over the K columns of its instance."""
    n = sim.shape[0] // k
    block = torch.block_diag(*[sim.new_ones(k, sim.shape[1] // n)] * n).bool()
    return (-(F.log_softmax(sim, dim=1) * block).sum(1) / block.sum(1)).mean()


def proxy_matching(video_proxies: Tensor, text_proxies: Tensor) -> Tensor:
    """L_PM: proxy matching in both directions (rows = video proxies, then rows = text proxies)."""
    k, d = video_proxies.shape[1], video_proxies.shape[-1]
    v, t = video_proxies.reshape(-1, d), text_proxies.reshape(-1, d)
    sim = v @ t.t()
    return (proxy_matching_one_way(sim, k) + proxy_matching_one_way(sim.t(), text_proxies.shape[1])) / 2


def distribution_alignment(video_proxies: Tensor, video_log_sigma: Tensor,
                           text_proxies: Tensor, text_log_sigma: Tensor) -> Tensor:
    """L_DA: KL of each modality to N(0, I) plus the cross-modal term, with mu_bar = mean of the proxies."""
    mu_v, mu_t = video_proxies.mean(dim=1), text_proxies.mean(dim=1)

    def kl_to_prior(mu: Tensor, log_sigma: Tensor) -> Tensor:
        return (-0.5 * (1 + log_sigma - mu**2 - log_sigma.exp())).sum(dim=1).mean()

    var_v, var_t = video_log_sigma.exp(), text_log_sigma.exp()
    cross = video_log_sigma - text_log_sigma + (var_t**2 + (mu_t - mu_v) ** 2) / (2 * var_v**2) - 0.5
    return kl_to_prior(mu_v, video_log_sigma) + kl_to_prior(mu_t, text_log_sigma) + cross.sum(dim=1).mean()


# Largest |log evidence|: exp(20) ~ 5e8 keeps S finite in fp32 and u = K / S above 0 for K >= 2.
EVIDENCE_LOG_CAP = 20.0


def evidence(scores: Tensor, tau: float, cap: float = EVIDENCE_LOG_CAP) -> Tensor:
    """Dirichlet evidence of each score: exp(clamp(score / tau, -cap, cap)) >= 0.

    Why this function: the expected probabilities alpha / S then follow a softmax of score / tau
    wherever the evidence is large (so ``tau`` plays the role of the NCE temperature), the evidence
    stays positive for negative cosines, and the clamp bounds S (Holmes bounds its exponent with a
    tanh of the score instead).
    """
    return torch.exp(torch.clamp(scores / tau, min=-cap, max=cap))


def candidate_columns(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """(Nq, min(k, Nv)) column indices per row: its positive first, then the best-scoring other columns.

    The candidate set of the evidential term has a fixed size K, as the top K of a first stage at
    test time; in training the positive is always one of them so that the Dirichlet has a target.
    The choice uses detached scores and a stable sort (ties by column index).
    """
    n, m = scores.shape
    k = min(k, m)
    others = scores.detach().masked_fill(_positives(labels, m), float("-inf"))
    best = torch.sort(others, dim=1, descending=True, stable=True).indices[:, : k - 1]
    return torch.cat([labels.unsqueeze(1), best], dim=1)


def evidential(scores: Tensor, labels: Tensor, k: int, tau: float) -> Tensor:
    """Evidential (Dirichlet) loss over each query's K candidates (:func:`candidate_columns`).

    alpha = evidence + 1, S = sum alpha, p = alpha / S; per query the expected squared error of a
    one-hot target under Dir(alpha): sum_j (y_j - p_j)^2 + p_j (1 - p_j) / (S + 1) (Sensoy et al. 2018,
    the form Holmes uses), averaged over queries. No KL regulariser.
    """
    columns = candidate_columns(scores, labels, k)
    alpha = evidence(scores.gather(1, columns), tau) + 1.0
    strength = alpha.sum(dim=1, keepdim=True)
    p = alpha / strength
    target = torch.zeros_like(p)
    target[:, 0] = 1.0
    return ((target - p) ** 2 + p * (1 - p) / (strength + 1)).sum(dim=1).mean()


# The raw terms of the objective, in logging order.
TERMS = ("clip_nce", "frame_nce", "clip_triplet", "frame_triplet", "query_diversity", "proxy_matching",
         "distribution_alignment", "optimal_transport", "evidential")


def weights(cfg: LossConfig) -> dict[str, float]:
    """The weight of each raw term in the total (docs/method.md#training-objective)."""
    f0, f1, f2, f3 = cfg.loss_factor
    return {"clip_nce": f0, "frame_nce": f1, "clip_triplet": 1.0, "frame_triplet": 1.0, "query_diversity": f2,
            "proxy_matching": cfg.pm_weight, "distribution_alignment": cfg.da_weight, "optimal_transport": f3,
            "evidential": cfg.evidential_weight}


def weighted_total(raw: dict[str, Tensor], cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and the weighted parts, from the raw (unweighted) terms present in ``raw``."""
    w = weights(cfg)
    parts = {name: w[name] * raw[name] for name in TERMS if name in raw}
    return torch.stack(list(parts.values())).sum(), parts


class Objective(torch.nn.Module):
    """total = f0 NCE_clip + f1 NCE_frame + Trip_clip + Trip_frame + f2 QDL + w_pm L_PM + w_da L_DA + f3 OT
    (+ w_ev evidential, when ``loss.evidential_weight`` > 0)."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg

    def raw_terms(self, out: ModelOutput, hard_negatives: bool = False,
                  generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        c, labels = self.cfg, out.labels
        m, a, lam = c.neg_factor
        raw = {"clip_nce": nce(out.clip_scores_raw, labels)}
        if out.frame_by_query:  # MS-SL: (Nq, Nq) frame scores, positives on the diagonal
            raw["frame_nce"] = pair_nce(out.frame_scores_raw)
        else:
            raw["frame_nce"] = nce(out.frame_scores_raw, labels)
        raw["clip_triplet"] = triplet(out.clip_scores, labels, c.margin, hard_negatives, c.hard_pool_size, generator)
        if out.frame_by_query:
            raw["frame_triplet"] = diagonal_triplet(out.frame_scores, c.margin, hard_negatives, c.hard_pool_size,
                                                    generator)
        else:
            raw["frame_triplet"] = triplet(out.frame_scores, labels, c.margin, hard_negatives, c.hard_pool_size,
                                           generator)
        # each backbone's own extra terms: GMMFormer v2 (query diversity, OT), GMMFormer (its query diversity)
        if out.backbone == "gmmformer_v2":
            raw["query_diversity"] = query_diversity(out.pooled_queries, labels, m, a, lam)
            raw["optimal_transport"] = optimal_transport(out.pooled_queries, out.clips, labels)
        elif out.backbone == "gmmformer":
            raw["query_diversity"] = query_diversity_gmmformer(out.pooled_queries, labels, m, a)
        if out.video_proxies is not None and out.text_proxies is not None:
            raw["proxy_matching"] = proxy_matching(out.video_proxies, out.text_proxies)
            raw["distribution_alignment"] = distribution_alignment(out.video_proxies, out.video_log_sigma,
                                                                   out.text_proxies, out.text_log_sigma)
        if c.evidential_weight > 0:  # off by default: the term is not even computed (total unchanged)
            raw["evidential"] = evidential(out.clip_scores, labels, c.evidential_k, c.evidential_tau)
            if not out.frame_by_query:  # the mean over both branches (the loss does not know the fusion weight)
                frame = evidential(out.frame_scores, labels, c.evidential_k, c.evidential_tau)
                raw["evidential"] = (raw["evidential"] + frame) / 2
        return raw

    def forward(self, out: ModelOutput, labels: Optional[Tensor] = None, hard_negatives: bool = False,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(total, weighted parts); ``labels`` defaults to the ones the model output carries."""
        if labels is not None:
            out.labels = labels.to(out.clip_scores.device)
        return weighted_total(self.raw_terms(out, hard_negatives, generator), self.cfg)


__all__ = ["nce", "triplet", "diagonal_triplet", "pair_nce", "query_diversity", "query_diversity_gmmformer",
           "optimal_transport", "ot_assignment", "proxy_matching", "proxy_matching_one_way", "distribution_alignment",
           "evidence", "candidate_columns", "evidential", "weights", "weighted_total", "Objective", "TERMS",
           "EVIDENCE_LOG_CAP"]
