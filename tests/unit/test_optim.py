"""Optimizer registry, param grouping, and hand-checked LARS/LAMB steps (CPU, fast)."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from largebatch.optim import OPTIMIZERS, create_optimizer, trust_ratio_summary
from largebatch.optim.param_groups import split_decay_params

# Per-entry settings that make the 50-step toy problem converge; a new entry falls back to DEFAULT_TRAIN_KW.
TRAIN_KW = {
    "sgd": dict(lr=0.05),
    "adamw": dict(lr=0.02),
    "lars": dict(lr=0.1, trust_coefficient=0.02),
    "lamb": dict(lr=0.05),
}
DEFAULT_TRAIN_KW = dict(lr=0.01)
TRUST_RATIO_OPTIMIZERS = ["lars", "lamb"]


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 1))


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    return x, x @ torch.randn(8, 1, generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def build(name: str, model: nn.Module, **overrides) -> torch.optim.Optimizer:
    wd = 1e-4 if OPTIMIZERS.get(name).decays else 0.0  # rprop has no weight decay
    kw = {**TRAIN_KW.get(name, DEFAULT_TRAIN_KW), "weight_decay": wd, **overrides}
    return create_optimizer(model, name, **kw)


# ---- every registry entry -------------------------------------------------------------------------------


def test_registry_has_expected_entries_with_descriptions():
    assert {"sgd", "adamw", "adam", "rmsprop", "rprop", "lars", "lamb"} <= set(OPTIMIZERS.names())
    for entry in OPTIMIZERS.entries():
        assert entry.description and "\n" not in entry.description


def test_unknown_name_is_key_error():
    with pytest.raises(KeyError, match="lasr"):
        create_optimizer(tiny_mlp(), "lasr", lr=0.1)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_loss_falls(name):
    model, (x, y) = tiny_mlp(), toy_data()
    opt = build(name, model)
    assert isinstance(opt, torch.optim.Optimizer)
    losses = [train_step(model, opt, x, y) for _ in range(50)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.25 * losses[0], (name, losses[0], losses[-1])


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_state_dict_round_trip_gives_identical_next_step(name):
    x, y = toy_data()
    model = tiny_mlp()
    opt = build(name, model)
    for _ in range(3):
        train_step(model, opt, x, y)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train_step(model, opt, x, y)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = tiny_mlp(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    resumed_opt = build(name, resumed)
    resumed_opt.load_state_dict(ckpt["opt"])
    train_step(resumed, resumed_opt, x, y)

    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_groups_split_decay_and_no_decay(name):
    model = tiny_mlp()
    wd = 0.05 if OPTIMIZERS.get(name).decays else 0.0
    if not wd:
        with pytest.raises(ValueError, match="no weight decay"):
            create_optimizer(model, name, lr=0.1, weight_decay=0.05)
    opt = create_optimizer(model, name, lr=0.1, weight_decay=wd)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == wd and decay["trust_ratio"] is True
    assert no_decay["weight_decay"] == 0.0 and no_decay["trust_ratio"] is False
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4  # two Linear biases + LayerNorm weight and bias


@pytest.mark.parametrize("name", TRUST_RATIO_OPTIMIZERS)
def test_step_has_no_host_sync(name, monkeypatch):
    model, (x, y) = tiny_mlp(), toy_data()
    opt = build(name, model, nesterov=name == "lars")
    nn.functional.mse_loss(model(x), y).backward()

    def forbidden(*_a, **_k):
        raise AssertionError("host sync inside optimizer.step()")

    for attr in ("item", "tolist", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    opt.step()
    monkeypatch.undo()
    assert len(opt.last_trust_ratios) == 2


# ---- param grouping -------------------------------------------------------------------------------------


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.ln = nn.LayerNorm(2)
        self.scale = nn.Parameter(torch.ones(2))  # bare 1-D param
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)


def test_split_puts_biases_and_norm_params_in_no_decay():
    m = WithScale()
    decay, no_decay = split_decay_params(m)
    assert {id(p) for p in decay} == {id(m.conv.weight), id(m.fc.weight)}
    expected = [m.conv.bias, m.bn.weight, m.bn.bias, m.fc.bias, m.ln.weight, m.ln.bias, m.scale]
    assert {id(p) for p in no_decay} == {id(p) for p in expected}
    assert len(no_decay) == len(expected)


def test_split_dedupes_shared_params():
    fc = nn.Linear(3, 3)
    decay, no_decay = split_decay_params(nn.Sequential(fc, nn.ReLU(), fc))
    assert len(decay) == 1 and len(no_decay) == 1


# ---- hand-computed LARS / LAMB --------------------------------------------------------------------------


def two_param_model() -> nn.Linear:
    """weight [[1, 2, 2]] (norm 3) in the trust group, bias [0.5] in the no-trust group."""
    m = nn.Linear(3, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 2.0, 2.0]]))
        m.bias.copy_(torch.tensor([0.5]))
    return m


W_GRAD = torch.tensor([[0.0, 3.0, 4.0]])  # norm 5
B_GRAD = torch.tensor([2.0])


def set_grads(m: nn.Linear, w_grad: torch.Tensor = W_GRAD, b_grad: torch.Tensor = B_GRAD) -> None:
    m.weight.grad = w_grad.clone()
    m.bias.grad = b_grad.clone()


def test_lars_single_step_literal():
    # local_lr = 0.1 * 3 / 5 = 0.06; first momentum step v = lr * local_lr * g; bias: plain SGD, v = lr * g.
    m = two_param_model()
    opt = create_optimizer(m, "lars", lr=0.5, momentum=0.9, trust_coefficient=0.1)
    set_grads(m)
    opt.step()
    assert torch.allclose(m.weight, torch.tensor([[1.0, 1.91, 1.88]]))
    assert torch.allclose(m.bias, torch.tensor([-0.5]))
    assert len(opt.last_trust_ratios) == 1
    assert torch.allclose(opt.last_trust_ratios[0], torch.tensor(0.06))


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_two_steps_with_weight_decay(nesterov):
    lr, mom, wd, eta = 0.5, 0.9, 0.1, 0.1
    m = two_param_model()
    opt = create_optimizer(m, "lars", lr=lr, momentum=mom, weight_decay=wd, trust_coefficient=eta, nesterov=nesterov)
    w, b = m.weight.detach().clone(), m.bias.detach().clone()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for _ in range(2):
        set_grads(m)
        opt.step()
        local_lr = eta * w.norm() / (W_GRAD.norm() + wd * w.norm())
        sw = lr * local_lr * (W_GRAD + wd * w)
        sb = lr * B_GRAD  # bias: no decay, no trust ratio
        vw, vb = mom * vw + sw, mom * vb + sb
        w = w - (sw + mom * vw if nesterov else vw)
        b = b - (sb + mom * vb if nesterov else vb)
        assert torch.allclose(m.weight, w) and torch.allclose(m.bias, b)
        assert torch.allclose(opt.last_trust_ratios[0], local_lr)


def test_lars_zero_grad_norm_uses_ratio_one():
    m = two_param_model()
    opt = create_optimizer(m, "lars", lr=0.5, momentum=0.0, trust_coefficient=0.1)
    set_grads(m, w_grad=torch.zeros(1, 3))
    opt.step()
    assert torch.equal(opt.last_trust_ratios[0], torch.tensor(1.0))
    assert torch.allclose(m.weight, torch.tensor([[1.0, 2.0, 2.0]]))


def test_lamb_single_step_literal():
    # Step 1: m_hat = g, v_hat = g^2, so r = g / (|g| + eps) ~ [0, 1, 1]; ratio = 3 / sqrt(2).
    m = two_param_model()
    opt = create_optimizer(m, "lamb", lr=0.1, eps=1e-8)
    set_grads(m)
    opt.step()
    d = 0.1 * 3 / math.sqrt(2)
    assert torch.allclose(m.weight, torch.tensor([[1.0, 2.0 - d, 2.0 - d]]))
    assert torch.allclose(m.bias, torch.tensor([0.5 - 0.1]))  # bias: plain Adam step, lr * sign(g)
    assert torch.allclose(opt.last_trust_ratios[0], torch.tensor(3 / math.sqrt(2)))


def test_lamb_two_steps_with_weight_decay():
    lr, (b1, b2), eps, wd = 0.1, (0.9, 0.99), 1e-6, 0.1
    m = two_param_model()
    opt = create_optimizer(m, "lamb", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    grads = [(W_GRAD, B_GRAD), (torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([-1.0]))]
    w, b = m.weight.detach().clone(), m.bias.detach().clone()
    mw, vw, mb, vb = (torch.zeros_like(t) for t in (w, w, b, b))
    for t, (gw, gb) in enumerate(grads, start=1):
        set_grads(m, gw, gb)
        opt.step()
        mw, vw = b1 * mw + (1 - b1) * gw, b2 * vw + (1 - b2) * gw**2
        mb, vb = b1 * mb + (1 - b1) * gb, b2 * vb + (1 - b2) * gb**2
        rw = (mw / (1 - b1**t)) / ((vw / (1 - b2**t)).sqrt() + eps) + wd * w
        rb = (mb / (1 - b1**t)) / ((vb / (1 - b2**t)).sqrt() + eps)  # bias: no decay
        ratio = w.norm() / rw.norm()
        w = w - lr * ratio * rw
        b = b - lr * rb  # bias: no trust ratio
        assert torch.allclose(m.weight, w) and torch.allclose(m.bias, b)
        assert torch.allclose(opt.last_trust_ratios[0], ratio)


def test_lamb_zero_weight_norm_uses_ratio_one():
    m = two_param_model()
    with torch.no_grad():
        m.weight.zero_()
    opt = create_optimizer(m, "lamb", lr=0.1, eps=1e-8)
    set_grads(m)
    opt.step()
    assert torch.equal(opt.last_trust_ratios[0], torch.tensor(1.0))
    assert torch.allclose(m.weight, torch.tensor([[0.0, -0.1, -0.1]]))


# ---- nesterov, telemetry --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_nesterov_differs_from_plain(name):
    x, y = toy_data()
    finals = []
    for nesterov in (False, True):
        model = tiny_mlp()
        opt = build(name, model, nesterov=nesterov)
        for _ in range(3):
            train_step(model, opt, x, y)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.allclose(finals[0], finals[1])


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_trust_ratio_summary(name):
    model, (x, y) = tiny_mlp(), toy_data()
    opt = build(name, model)
    assert trust_ratio_summary(opt) is None  # nothing stepped yet
    train_step(model, opt, x, y)
    summary = trust_ratio_summary(opt)
    if name not in TRUST_RATIO_OPTIMIZERS:
        assert summary is None
        return
    assert set(summary) == {"trust_ratio_min", "trust_ratio_median", "trust_ratio_max"}
    assert all(isinstance(v, float) for v in summary.values())
    assert 0 < summary["trust_ratio_min"] <= summary["trust_ratio_median"] <= summary["trust_ratio_max"]
    assert len(opt.last_trust_ratios) == 2  # the two Linear weights; biases and LayerNorm are excluded


# ---- each entry's settings, declared once (OptimInfo.settings) -----------------------------------------

# a valid, non-default value of every setting some optimizer takes (a new setting must add one here)
NON_DEFAULT = {
    "momentum": 0.5, "nesterov": True, "betas": (0.8, 0.95), "eps": 1e-6, "trust_coefficient": 0.02,
    "alpha": 0.9, "centered": True, "etas": (0.4, 1.5), "step_sizes": (1e-5, 10.0),
}


def test_every_setting_is_an_optim_config_field():
    from largebatch.config import OptimConfig
    from largebatch.optim.factory import all_settings

    assert all_settings() <= set(OptimConfig.model_fields) and all_settings() <= set(NON_DEFAULT)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_settings_reach_the_optimizer(name):
    """Each declared setting arrives in the built optimizer (the non-default value, not the default)."""
    settings = OPTIMIZERS.get(name).settings
    assert settings, name
    opt = create_optimizer(tiny_mlp(), name, lr=0.1, **{s: NON_DEFAULT[s] for s in settings})
    for s in settings:
        assert opt.defaults[s] == NON_DEFAULT[s], (name, s)
    assert opt.defaults["lr"] == 0.1


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optim_settings_reads_exactly_its_own(name):
    from largebatch.config import OptimConfig
    from largebatch.optim import optim_settings

    cfg = OptimConfig(name=name, weight_decay=0.0, alpha=0.8, etas=[0.3, 1.1])
    got = optim_settings(cfg)
    assert set(got) == {"weight_decay", *OPTIMIZERS.get(name).settings}
    assert all(got[k] == getattr(cfg, k) for k in got)
    create_optimizer(tiny_mlp(), name, lr=0.01, **got)  # the loop's call: builds for every entry


def test_a_setting_no_optimizer_takes_is_a_type_error():
    with pytest.raises(TypeError, match="no optimizer takes momentun"):
        create_optimizer(tiny_mlp(), "sgd", lr=0.1, momentun=0.9)


def test_other_optimizers_settings_are_ignored():
    """One call serves every name: rprop ignores momentum, sgd ignores etas."""
    opt = create_optimizer(tiny_mlp(), "rprop", lr=0.01, momentum=0.5, etas=[0.4, 1.5])
    assert isinstance(opt, torch.optim.Rprop) and "momentum" not in opt.defaults and opt.defaults["etas"] == (0.4, 1.5)
    opt = create_optimizer(tiny_mlp(), "sgd", lr=0.01, etas=[0.4, 1.5])
    assert isinstance(opt, torch.optim.SGD) and "etas" not in opt.defaults


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("rmsprop", torch.optim.RMSprop),
                                       ("rprop", torch.optim.Rprop)])
def test_new_entries_are_torch_optims_own(name, cls):
    assert type(create_optimizer(tiny_mlp(), name, lr=0.01)) is cls


def test_rprop_steps_by_sign_alone():
    """Rprop's first step is lr x sign(grad) per weight, whatever the gradient's size (what a mini-batch flips)."""
    m = two_param_model()
    opt = create_optimizer(m, "rprop", lr=0.01)
    w0 = m.weight.detach().clone()
    set_grads(m, torch.tensor([[0.0, 3e-4, -40.0]]))
    opt.step()
    assert torch.allclose(m.weight - w0, torch.tensor([[0.0, -0.01, 0.01]]))


def test_only_rprop_is_full_batch_only():
    assert [n for n in OPTIMIZERS.names() if OPTIMIZERS.get(n).full_batch_only] == ["rprop"]
