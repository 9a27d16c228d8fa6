"""BertAdam and warmup-linear against an independent re-derivation of the authors' update rule."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ralbook.config import preset
from ralbook.training.optim import BertAdam, authors_style_name, build_optimizer, is_no_decay, parameter_groups, warmup_linear

FIXTURES = Path(__file__).parent / "fixtures"


def reference_schedule(p: float, warmup: float) -> float:
    # written out from docs/method.md#optimisation, on purpose without calling ralbook
    if p < warmup:
        return p / warmup
    return max((p - 1) / (warmup - 1), 0.0)


def hand_loop(params, grads_per_step, lr, warmup, t_total, wd, b1=0.9, b2=0.999, eps=1e-6, clip=1.0):
    """Plain per-tensor loop of the update rule, in float64 for a precise reference."""
    ps = [p.detach().double().clone() for p in params]
    ms = [torch.zeros_like(p) for p in ps]
    vs = [torch.zeros_like(p) for p in ps]
    for step, grads in enumerate(grads_per_step):
        for i, g in enumerate(grads):
            g = g.double().clone()
            norm = g.norm().item()
            g = g * min(1.0, clip / (norm + 1e-6))            # clip each tensor BEFORE the moments
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            update = ms[i] / (vs[i].sqrt() + eps) + wd[i] * ps[i]  # no bias correction
            ps[i] = ps[i] - lr * reference_schedule(step / t_total, warmup) * update
    return ps


def test_warmup_linear_matches_the_formula_and_hand_values():
    for warmup in (0.01, 0.1, 0.5):
        for p in [0.0, 0.005, 0.01, 0.05, 0.3, 0.99, 1.0, 1.5]:
            assert warmup_linear(p, warmup) == pytest.approx(reference_schedule(p, warmup))
    # hand-computed: warmup 0.1 -> p=0.05 is half way up; p=0.55 is half way down ((0.55-1)/(0.1-1) = 0.5)
    assert warmup_linear(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_linear(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_linear(1.2, 0.1) == 0.0
    assert warmup_linear(0.0, 0.1) == 0.0  # the very first update uses lr 0


@pytest.mark.parametrize("scale", [0.01, 10.0])  # below and above the clip norm
def test_bertadam_equals_hand_written_update_rule(scale):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4))]
    steps, t_total, lr, warmup = 12, 20, 0.1, 0.2
    grads = [[torch.randn_like(p) * scale for p in params] for _ in range(steps)]
    expected = hand_loop(params, grads, lr, warmup, t_total, wd=[0.01, 0.0])
    opt = BertAdam([{"params": [params[0]], "weight_decay": 0.01}, {"params": [params[1]], "weight_decay": 0.0}],
                   lr=lr, warmup=warmup, t_total=t_total)
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)
    # schedule position: the last update was number steps-1
    assert opt.current_lr() == pytest.approx(lr * reference_schedule((steps - 1) / t_total, warmup))


def test_first_update_has_zero_lr_and_clipping_bounds_the_moment():
    p = nn.Parameter(torch.ones(3))
    opt = BertAdam([p], lr=1.0, warmup=0.5, t_total=10, weight_decay=0.0)
    p.grad = torch.full((3,), 100.0)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3))  # lr multiplier 0 at step 0
    m = opt.state[p]["next_m"]
    # clipped gradient has norm ~1: m = 0.1 * g_clipped, so |m| ~ 0.1
    assert m.norm().item() == pytest.approx(0.1, rel=1e-5)


def test_parameters_without_grad_do_not_advance_their_schedule():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = BertAdam([a, b], lr=0.1, warmup=0.1, t_total=10)
    a.grad = torch.ones(2)
    opt.step()
    assert opt.state[a]["step"] == 1 and b not in opt.state


def test_state_dict_roundtrip_continues_identically():
    torch.manual_seed(1)
    p1 = nn.Parameter(torch.randn(6))
    p2 = nn.Parameter(p1.detach().clone())
    grads = [torch.randn(6) for _ in range(8)]
    o1 = BertAdam([p1], lr=0.05, warmup=0.1, t_total=8)
    o2 = BertAdam([p2], lr=0.05, warmup=0.1, t_total=8)
    for i, g in enumerate(grads):
        p1.grad = g.clone()
        o1.step()
        if i == 3:  # copy the state half way and continue with the copy
            o2.load_state_dict(copy.deepcopy(o1.state_dict()))  # as if read back from a file
            with torch.no_grad():
                p2.copy_(p1)
        elif i > 3:
            p2.grad = g.clone()
            o2.step()
    assert torch.equal(p1, p2)


def test_no_decay_groups_follow_the_authors_names():
    """For every tensor of the authors' TVR model, ralbook's group equals the authors' name rule."""
    from ralbook.checkpoint import reference_to_ralbook_key
    from ralbook.model import build_model

    cfg = preset("tvr", model={"hidden_size": 16, "n_heads": 2}, data={"visual_dim": 8, "text_dim": 8})
    model = build_model(cfg.model)
    names = authors_style_name(model)
    groups = parameter_groups(model, 0.01)
    decayed = set(groups[0]["names"])
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert decayed.isdisjoint(groups[1]["names"])
    assert len(decayed) + len(groups[1]["names"]) == len(list(model.parameters()))
    rows = [line.split("\t")[0] for line in (FIXTURES / "reference_keys_tvr.txt").read_text().splitlines() if line]
    checked = 0
    for authors_key in rows:
        ours = reference_to_ralbook_key(authors_key)
        if ours not in names:
            continue
        checked += 1
        authors_no_decay = any(m in authors_key for m in ("bias", "LayerNorm.bias", "LayerNorm.weight"))
        assert (ours not in decayed) == authors_no_decay, (authors_key, ours)
    assert checked == len(names)
    # the cases that differ from a naive "all LayerNorms" rule
    assert "query_encoder.norm1.weight" in decayed
    assert "query_proj.norm.weight" not in decayed


def test_is_no_decay_markers():
    assert is_no_decay("x.bias") and is_no_decay("a.LayerNorm.weight")
    assert not is_no_decay("a.norm1.weight") and not is_no_decay("a.weight")


def test_build_optimizer_on_a_model_reduces_a_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    opt = build_optimizer(model, lr=0.01, warmup=0.1, weight_decay=0.01, t_total=200)
    first = None
    for _ in range(200):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < 0.9 * first and math.isfinite(loss.item())
