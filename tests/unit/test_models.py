"""Models: every MODELS entry builds, runs forward/backward on Fashion-MNIST and digits shapes; ghost BN is exact."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from largebatch.errors import BadInput
from largebatch.models import (
    MODELS, GhostBatchNorm1d, GhostBatchNorm2d, apply_ghost_batchnorm, create_model, create_resnet,
)


def tiny_factory(input_shape, num_classes, hidden=8):
    """A user model, imported by create_model through factory='module:function'."""
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_model(input_shape, num_classes):
    return "oops"


FACTORY = f"{__name__}:tiny_factory"


def build(name: str, shape, **kw) -> nn.Module:
    if name == "factory":
        kw.setdefault("factory", FACTORY)
    return create_model(name, shape, 10, **kw)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name, shape):
    torch.manual_seed(0)
    model = build(name, shape)
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 2, 9])
    out = model(x)
    assert out.shape == (4, 10)
    nn.functional.cross_entropy(out, y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_entry_has_description(name):
    assert len(next(e for e in MODELS.entries() if e.name == name).description) > 10


def test_dropout_and_hidden_sizes_reach_the_mlp():
    m = create_model("mlp", (1, 8, 8), 3, hidden_sizes=(7,), dropout=0.5)
    assert [layer.out_features for layer in m if isinstance(layer, nn.Linear)] == [7, 3]
    assert any(isinstance(layer, nn.Dropout) and layer.p == 0.5 for layer in m)


def test_resnet_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2.*20, 32"):
        create_resnet((3, 32, 32), 10, depth=21)
    m = create_model("resnet", (3, 32, 32), 10, depth=32, width=8)
    assert sum(isinstance(b, nn.Module) for b in m.blocks) == 15  # 3 stages x n=5
    assert m.head.in_features == 32  # 4 x width


def test_resnet20_has_the_papers_parameter_count():
    m = create_model("resnet", (3, 32, 32), 10, depth=20)
    assert abs(sum(p.numel() for p in m.parameters()) - 0.27e6) < 0.01e6  # He et al. table 6: 0.27M


def test_builder_kwargs_pass_through_and_unknown_ones_are_bad_input():
    m = create_model("resnet", (1, 8, 8), 10, kwargs={"zero_init_residual": True})
    assert not m.blocks[0].bn2.weight.detach().any()
    with pytest.raises(BadInput, match="bogus.*accepts: hidden_sizes, dropout"):
        create_model("mlp", (1, 8, 8), 10, kwargs={"bogus": 1})


def test_factory_gets_shape_classes_and_kwargs():
    m = create_model("factory", (1, 8, 8), 5, factory=FACTORY, kwargs={"hidden": 3})
    assert m[1].in_features == 64 and m[1].out_features == 3 and m[3].out_features == 5


@pytest.mark.parametrize("spec, needle", [
    ("no_colon_here", "package.module:function"),
    ("surely_not_a_package_xyz.mod:fn", "cannot import module 'surely_not_a_package_xyz.mod'.*PYTHONPATH"),
    (f"{__name__}:missing_fn", "has no attribute 'missing_fn'.*tiny_factory"),
    (f"{__name__}:not_a_model", "returned str, not a torch.nn.Module"),
])
def test_bad_factory_is_bad_input(spec, needle):
    with pytest.raises(BadInput, match=needle) as e:
        create_model("factory", (1, 8, 8), 10, factory=spec)
    assert repr(spec) in str(e.value)  # the message names the string the user wrote


def test_unknown_model_and_misplaced_factory_are_bad_input():
    with pytest.raises(BadInput, match="did you mean 'resnet'"):
        create_model("resnt", (1, 8, 8), 10)
    with pytest.raises(BadInput, match="only used with model 'factory'"):
        create_model("mlp", (1, 8, 8), 10, factory=FACTORY)
    with pytest.raises(BadInput, match="needs factory="):
        create_model("factory", (1, 8, 8), 10)


# --- ghost batch norm ---------------------------------------------------------------------------------------------


def manual_ghost(x, bn: nn.modules.batchnorm._BatchNorm, k: int):
    """Reference: normalise each of k chunks with its own biased stats; running stats = mean of chunk updates."""
    dims = [d for d in range(x.dim()) if d != 1]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    outs, rms, rvs = [], [], []
    m = bn.momentum
    for c in torch.tensor_split(x, k):
        mu, var = c.mean(dims), c.var(dims, correction=0)
        outs.append((c - mu.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(shape)
                    + bn.bias.view(shape))
        n = c.numel() // c.shape[1]
        rms.append((1 - m) * bn.running_mean + m * mu)
        rvs.append((1 - m) * bn.running_var + m * var * n / (n - 1))
    return torch.cat(outs), torch.stack(rms).mean(0), torch.stack(rvs).mean(0)


@pytest.mark.parametrize("cls, shape, ghost, k", [
    (GhostBatchNorm2d, (12, 3, 5, 5), 4, 3),  # equal chunks: the folded one-call path
    (GhostBatchNorm2d, (11, 3, 4, 4), 4, 2),  # 11 = 6 + 5: the per-chunk path
    (GhostBatchNorm1d, (16, 6), 4, 4),
    (GhostBatchNorm1d, (10, 6, 7), 3, 3),  # 10 = 4 + 3 + 3
])
def test_ghost_bn_train_equals_per_chunk_normalisation(cls, shape, ghost, k):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    gbn = cls(shape[1], ghost)
    with torch.no_grad():
        gbn.weight.uniform_(0.5, 2)
        gbn.bias.normal_()
        gbn.running_mean.normal_()
        gbn.running_var.uniform_(0.5, 2)
    ref = cls(shape[1], ghost)
    ref.load_state_dict(gbn.state_dict())
    want, want_rm, want_rv = manual_ghost(x, ref, k)
    xg = x.clone().requires_grad_()
    got = gbn.train()(xg)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gbn.running_mean, want_rm)
    torch.testing.assert_close(gbn.running_var, want_rv)
    assert int(gbn.num_batches_tracked) == 1
    # Gradients flow to the input and the shared affine params like the reference's.
    xr = x.clone().requires_grad_()
    ref_out, _, _ = manual_ghost(xr, ref, k)
    (got * torch.arange(got.numel()).view_as(got)).sum().backward()
    (ref_out * torch.arange(got.numel()).view_as(got)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gbn.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    # And it is really not plain BN over the whole batch.
    assert not torch.allclose(got, nn.functional.batch_norm(x, None, None, gbn.weight, gbn.bias, True), atol=1e-3)


def test_ghost_bn_eval_and_small_batches_equal_plain_bn():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
    gbn = apply_ghost_batchnorm(bn, 4)
    assert isinstance(gbn, GhostBatchNorm2d)
    x = torch.randn(16, 3, 4, 4)
    torch.testing.assert_close(gbn.eval()(x), bn.eval()(x))
    small = torch.randn(4, 3, 4, 4)  # batch <= ghost size: one virtual batch, exactly BN
    torch.testing.assert_close(gbn.train()(small), bn.train()(small))
    torch.testing.assert_close(gbn.running_mean, bn.running_mean)


def test_apply_ghost_batchnorm_replaces_every_bn_and_keeps_state():
    torch.manual_seed(0)
    model = create_model("resnet", (1, 8, 8), 10, depth=8, width=4)
    model.train()(torch.randn(8, 1, 8, 8))  # move the running stats off their init
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    x = torch.randn(5, 1, 8, 8)
    want = model.eval()(x)
    out = apply_ghost_batchnorm(model, 4)
    assert out is model
    assert sum(isinstance(m, GhostBatchNorm2d) for m in model.modules()) == n_bn > 0
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(model(x), want)  # eval is unchanged
    apply_ghost_batchnorm(model, 8)  # idempotent: ghost modules are not wrapped again
    assert all(m.ghost_batch_size == 4 for m in model.modules() if isinstance(m, GhostBatchNorm2d))


def test_create_model_applies_ghost_batch_size():
    m = create_model("resnet", (1, 8, 8), 10, depth=8, width=4, ghost_batch_size=2)
    ghosts = [g for g in m.modules() if isinstance(g, GhostBatchNorm2d)]
    assert ghosts and all(g.ghost_batch_size == 2 for g in ghosts)
    m.train()(torch.randn(6, 1, 8, 8)).sum().backward()


# ---- lenet ----------------------------------------------------------------------------------------------------


def test_lenet_on_28x28_is_the_classic_lenet5():
    """Padded conv1 keeps 28x28 (as LeNet-5's 32x32 input did): 16 maps of 5x5 reach fc120, and the parameter count
    is LeNet-5's 61,706 (156 + 2,416 + 48,120 + 10,164 + 850)."""
    from largebatch.models import create_model

    m = create_model("lenet", (1, 28, 28), 10)
    assert m.classifier[0].in_features == 16 * 5 * 5
    assert sum(p.numel() for p in m.parameters()) == 61_706
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_lenet_on_digits_8x8_and_refusals():
    from largebatch.models import create_model

    assert create_model("lenet", (1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="image input"):
        create_model("lenet", (64,), 10)
    with pytest.raises(ValueError, match="at least 4x4"):
        create_model("lenet", (1, 3, 3), 10)
