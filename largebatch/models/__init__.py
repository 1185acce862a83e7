"""Models: a registry of builders, and `create_model`, the one way the trainer gets a network.

Each MODELS entry is a callable (input_shape, num_classes, ModelOptions) -> nn.Module. The builders themselves
(`create_mlp`, `create_lenet`, `create_resnet`) have plain keyword signatures and work without the registry.
`kwargs` go to the chosen builder (e.g. resnet's zero_init_residual) or, for `factory`, to the user's function.
"""
from __future__ import annotations

import contextvars
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import nn

from largebatch.errors import BadInput, unknown_choice
from largebatch.models.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, apply_ghost_batchnorm
from largebatch.models.lenet import create_lenet
from largebatch.models.mlp import create_mlp
from largebatch.models.resnet import create_resnet
from largebatch.registry import Registry

__all__ = [
    "MODELS", "ModelOptions", "create_model", "load_factory", "apply_ghost_batchnorm", "GhostBatchNorm1d",
    "GhostBatchNorm2d", "create_mlp", "create_lenet", "create_resnet",
]


@dataclass(frozen=True, slots=True)
class ModelOptions:
    hidden_sizes: tuple[int, ...] = (256, 128)  # mlp hidden widths
    depth: int = 20  # resnet depth, 6n+2
    width: int = 16  # resnet channels in the first stage (then 2x, 4x)
    dropout: float = 0.0  # probability, before the head (and after each hidden layer of the mlp)
    factory: str | None = None  # "package.module:function", for the `factory` entry only
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the builder


Builder = Callable[[tuple[int, ...], int, ModelOptions], nn.Module]
MODELS: Registry[Builder] = Registry("model")


def _call(fn: Callable[..., nn.Module], what: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Call a builder, turning an unexpected keyword into a BadInput that lists the accepted ones."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(fn).parameters if p not in ("input_shape", "num_classes")]
        raise BadInput(f"{what} does not accept these arguments ({e}); it accepts: {', '.join(params) or 'none'}",
                       field="model.kwargs") from None
    except ValueError:  # some callables (C builtins) have no signature; let the call itself fail
        pass
    if _DRY.get():  # check_model_options: the arguments bind; nothing is built
        return _DRY_MODEL
    return fn(*args, **kwargs)


_DRY: contextvars.ContextVar[bool] = contextvars.ContextVar("largebatch_models_dry", default=False)
_DRY_MODEL = nn.Identity()


def check_model_options(name: str, **options: Any) -> None:
    """What create_model(name, ..., **options) would refuse, found without building the model or reading data: the
    name, the factory's import and the keyword arguments each builder (or the user's factory) would be called with.
    The input shape and class count are placeholders: a factory's own checks on them run when the trial builds it."""
    token = _DRY.set(True)
    try:
        create_model(name, (1,), 2, **options)
    finally:
        _DRY.reset(token)


@MODELS.register("mlp", "multi-layer perceptron: Linear+ReLU per hidden size, then a Linear head")
def _build_mlp(input_shape: tuple[int, ...], num_classes: int, o: ModelOptions) -> nn.Module:
    return _call(create_mlp, "model 'mlp'", input_shape, num_classes, hidden_sizes=o.hidden_sizes,
                 dropout=o.dropout, **o.kwargs)


@MODELS.register("lenet", "LeNet-5 style CNN (LeCun et al. 1998): conv6-pool-conv16-pool-fc120-fc84")
def _build_lenet(input_shape: tuple[int, ...], num_classes: int, o: ModelOptions) -> nn.Module:
    return _call(create_lenet, "model 'lenet'", input_shape, num_classes, dropout=o.dropout, **o.kwargs)


@MODELS.register("resnet", "CIFAR-style ResNet, depth 6n+2, BatchNorm (He et al. 2015, arXiv 1512.03385)")
def _build_resnet(input_shape: tuple[int, ...], num_classes: int, o: ModelOptions) -> nn.Module:
    return _call(create_resnet, "model 'resnet'", input_shape, num_classes, depth=o.depth, width=o.width,
                 dropout=o.dropout, **o.kwargs)


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """Resolve "package.module:function" to the function; anything wrong is a BadInput naming the fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"model factory {spec!r} is not of the form 'package.module:function'", field="model.factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BadInput(
            f"model factory {spec!r}: cannot import module {module_name!r} ({e}); install the package or put it on "
            f"PYTHONPATH on every worker (for Ray, add it to the runtime_env working_dir/py_modules)",
            field="model.factory") from None
    try:
        fn = module
        for part in attr.split("."):
            fn = getattr(fn, part)
    except AttributeError:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise BadInput(
            f"model factory {spec!r}: module {module_name!r} has no attribute {attr!r}; callables there: "
            f"{', '.join(public) or 'none'}", field="model.factory") from None
    if not callable(fn):
        raise BadInput(f"model factory {spec!r} is not callable", field="model.factory")
    return fn


@MODELS.register(
    "factory", "your own model: factory='package.module:function', called (input_shape=, num_classes=, **kwargs)")
def _build_factory(input_shape: tuple[int, ...], num_classes: int, o: ModelOptions) -> nn.Module:
    if not o.factory:
        raise BadInput("model 'factory' needs factory='package.module:function'", field="model.factory")
    fn = load_factory(o.factory)
    model = _call(fn, f"model factory {o.factory!r}", input_shape=input_shape, num_classes=num_classes, **o.kwargs)
    if not isinstance(model, nn.Module):
        raise BadInput(f"model factory {o.factory!r} returned {type(model).__name__}, not a torch.nn.Module",
                       field="model.factory")
    return model


def create_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden_sizes: Sequence[int] = (256, 128),
    depth: int = 20,
    width: int = 16,
    dropout: float = 0.0,
    factory: str | None = None,
    kwargs: dict[str, Any] | None = None,
    ghost_batch_size: int | None = None,
) -> nn.Module:
    """Build MODELS[name]; with `ghost_batch_size`, every BatchNorm becomes ghost BN (arXiv 1705.08741)."""
    if name not in MODELS:
        raise BadInput(unknown_choice("model", name, MODELS.names()), field="model.name")
    if factory is not None and name != "factory":
        raise BadInput(f"factory={factory!r} is only used with model 'factory', not {name!r}", field="model.factory")
    opts = ModelOptions(tuple(int(h) for h in hidden_sizes), int(depth), int(width), float(dropout), factory,
                        dict(kwargs or {}))
    model = MODELS.get(name)(tuple(int(d) for d in input_shape), int(num_classes), opts)
    if ghost_batch_size is not None and not _DRY.get():
        model = apply_ghost_batchnorm(model, ghost_batch_size)
    return model
