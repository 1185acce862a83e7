"""`largebatch check STUDY.yaml`: make the task overfit one small batch on the driver before a study spends anything
(issue #30; docs/tasks.md "The overfit check"). `tune` and `train` run the same check first unless `--no-check`.

What it does, for the study's base trial (and the baseline's when it builds a different task, model or data): build
the task's data, model and loss exactly as a trial does (`tasks/build.py build_data`, `task.model(cfg, data)` under
`torch.manual_seed(cfg.seed)`, the loop's feed and autocast), take the first CHECK_EXAMPLES examples of the trial's
epoch-0 order, train on that one batch for up to MAX_STEPS steps, then compute every metric in eval mode on that batch
and on a batch of the eval split. Any of these is one BadInput line naming the task, what was seen and the likely fix:

- the model's output is not a tensor, or the loss is not a 0-d tensor with a gradient;
- the output's shape does not match the targets' in a way the loss silently broadcasts ((16,) against (16, 1) is a
  (16, 16) matrix to an elementwise loss);
- the loss is NaN or infinite at step 1 (before any update), or becomes so while overfitting;
- the loss does not fall to FALL_FACTOR of its first value (a dead or frozen model, one detached from the loss);
- building the data or the model, the forward, the loss, backward or a metric raises, or a metric is not finite.

The optimizer is plain Adam at CHECK_LR, not the study's own: the check is about the task, while the optimizer and
its LR are what the study searches. The study's SGD at its small-batch LR, a LARS trust ratio or a warmup from a
tenth of the LR may legitimately not overfit 16 examples in a hundred steps, and a false alarm would block a good
study; Adam at 3e-3 took every task measured to 5% of its first loss in 7 to 97 steps (docs/tasks.md lists them).
Adam is written out here (`_adam`, the textbook update) because constructing any torch.optim optimizer imports
torch._dynamo on first use, ~3 s on the demo machine: more than the whole check, on a driver that never needs it.
It runs on the CPU in this process, with no Ray and nothing written to disk: the driver may have no GPU, and a CUDA
context held by the driver for the whole study would take memory from its trials. Precision follows the trial's
autocast where a CPU has it (bf16); fp16 runs in fp32. A Ray Data task (its training rows exist only inside Ray)
overfits a batch of its eval split instead.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from largebatch.config import StudyConfig, TrialConfig, baseline_trial
from largebatch.errors import BadInput

if TYPE_CHECKING:
    import torch

    from largebatch.tasks import Task, TaskData

CHECK_EXAMPLES = 16  # one small batch: a classifier's 16 examples span most of its classes
CHECK_LR = 3e-3  # Adam; at 1e-3, 40 steps left LeNet on digits at 0.52x and charlm at 0.57x of their first loss
MAX_STEPS = 100  # charlm (16 windows of 64 bytes, the slowest measured) reaches 0.5x in ~35 steps, 0.03x in 100
FALL_FACTOR = 0.5  # the loss must end at most this fraction of its first value (for a negative loss: |first| lower)
OVERFIT_FACTOR = 0.05  # the check stops once the loss is this low: the batch is overfitted, more steps add nothing
LAST_STEPS = 5  # the end loss is the mean over the last steps: dropout makes a single step's loss noisy
MAX_SHOWN = 240  # characters of a user exception's message kept in the line


@dataclass(frozen=True)
class CheckResult:
    label: str  # "base" or "baseline"
    task: str
    examples: int
    steps: int
    loss_start: float
    loss_end: float
    metrics: dict[str, float]  # each task metric on the overfitted batch (it is also computed on an eval batch)
    seconds: float  # the whole check of this trial config, data included
    data_s: float  # of which building the data

    def line(self) -> str:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in self.metrics.items())
        return (f"check ({self.label}, task {self.task!r}): loss {self.loss_start:.3g} -> {self.loss_end:.3g} in "
                f"{self.steps} steps on {self.examples} examples{f' ({shown} on them)' if shown else ''}; "
                f"{self.seconds:.2f} s ({self.data_s:.2f} s of it building the data)")


def _shape(x: Any) -> str:
    import torch

    if isinstance(x, torch.Tensor):
        return f"Tensor{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return type(x).__name__


def _raised(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:MAX_SHOWN] + '...' if len(msg) > MAX_SHOWN else msg}"


class _Fault(Exception):
    """What the check saw and the likely fix; turned into one BadInput naming the study file and the task."""


def _call(what: str, fix: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except BadInput:
        raise
    except Exception as e:  # the user's code raised: one line, no traceback
        raise _Fault(f"{what} raised {_raised(e)}; {fix}") from None


def _check_loss(loss: Any, out: Any, y: Any, where: str) -> None:
    import torch

    if not isinstance(loss, torch.Tensor):
        raise _Fault(f"the loss {where} is a {type(loss).__name__}, not a tensor; compute it with torch ops on the "
                     f"model's output (no .item() or float())")
    if loss.dim() != 0:
        raise _Fault(f"the loss {where} is {_shape(loss)}, not a scalar (model output {_shape(out)}, targets "
                     f"{_shape(y)}); return its mean over the micro-batch, e.g. reduction='mean' or .mean()")


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> Optional[tuple[int, ...]]:
    """The shape torch broadcasts a and b to, None when it would not (torch.broadcast_shapes imports
    torch.fx's symbolic shapes on first use: half a second)."""
    k = max(len(a), len(b))
    a, b = (1,) * (k - len(a)) + a, (1,) * (k - len(b)) + b
    if any(i != j and 1 not in (i, j) for i, j in zip(a, b)):
        return None
    return tuple(max(i, j) if 0 not in (i, j) else 0 for i, j in zip(a, b))


def _check_broadcast(task: Any, out: Any, y: Any) -> None:
    """An output and targets whose shapes broadcast to a larger shape than either ((16,) and (16, 1) -> (16, 16)):
    a fault when the loss mixes examples, i.e. the batch's loss is not the mean of the per-example losses (a loss
    that reshapes them itself passes). It is measured on an output equal to the targets, where a mixing loss pays
    for every mismatched pair (twice the targets' variance for the squared error) and a per-example one nothing
    extra; on the model's output at initialisation the two differ only by the output's covariance with the targets,
    which is near 0."""
    import torch

    both = _broadcast(tuple(out.shape), tuple(y.shape))
    if both is None:
        return
    n = out.shape[0] if out.dim() else 0
    if math.prod(both) <= max(out.numel(), y.numel()) or n < 2 or y.dim() == 0 or y.shape[0] != n:
        return
    probe = y.reshape(out.shape).to(out.dtype) if y.numel() == out.numel() else out
    try:
        with torch.no_grad():
            whole = float(task.loss(probe, y))
            each = sum(float(task.loss(probe[i:i + 1], y[i:i + 1])) for i in range(n)) / n
    except Exception:  # a loss that takes no such output: the training steps below judge it
        return
    if not math.isclose(whole, each, rel_tol=1e-3, abs_tol=1e-6):
        raise _Fault(f"the model's output {_shape(out)} does not match the targets {_shape(y)}: the loss broadcasts "
                     f"them to {tuple(both)} and compares every output with every target (an output equal to the "
                     f"targets scores {whole:.4g}, example by example {each:.4g}); make the model's output the "
                     f"targets' shape (e.g. .squeeze(-1) or .view_as(targets)) or reshape in the loss")


def _nan_fault(x: Any, out: Any, loss: Any) -> str:
    import torch

    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum()) if x.dim() > 1 else int((~torch.isfinite(x)).sum())
        return (f"the loss is {float(loss)} at step 1: {bad} of the {len(x)} inputs hold NaN or inf; clean or impute "
                f"them in the task's data()")
    if out.is_floating_point() and not torch.isfinite(out).all():
        return (f"the loss is {float(loss)} at step 1, before any update: the model's output is not finite on "
                f"finite inputs; look for a log/sqrt/division of 0 or an overflow in forward, and normalise the "
                f"inputs")
    return (f"the loss is {float(loss)} at step 1, before any update, on a finite output: the loss takes a log of "
            f"0 or divides by 0 (use F.cross_entropy / log_softmax rather than log(softmax(...)), clamp)")


def _adam(params: list[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> Callable[[], None]:
    """A step function of Adam (Kingma & Ba) over `params`, clearing their gradients like zero_grad."""
    import torch

    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    t = 0

    def step() -> None:
        nonlocal t
        t += 1
        b1, b2 = betas
        with torch.no_grad():
            for p, (m, v) in zip(params, moments):
                if p.grad is None:
                    continue
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                p.grad = None

    return step


def _eval_batch(data: Any, device: Any, n: int):
    from largebatch.data.feed import make_feed

    feed = make_feed(data.eval, device, 0)
    return next(iter(feed.eval_batches(0, min(n, len(feed)), n)))


def overfit(cfg: TrialConfig, label: str = "base") -> CheckResult:
    """Overfit one small batch of `cfg`'s task (see the module doc); a fault raises _Fault."""
    import torch

    from largebatch.tasks import build_data, task_of

    t0 = time.perf_counter()
    device = torch.device("cpu")
    task = task_of(cfg)
    data = _call("building the data (task.data)", "fix the task's data()", build_data, task, cfg)
    data_s = time.perf_counter() - t0
    x, y, n = _training_batch(cfg, task, data, device)
    model = _check_model(cfg, task, data, device)
    precision = "bf16" if cfg.precision == "bf16" else "fp32"  # fp16 autocast is a GPU path
    losses, start, end = _overfit_steps(task, model, x, y, n, device, precision)
    metrics = _eval_metrics(task, model, data, x, y, n, device, precision, end)
    return CheckResult(label=label, task=task.name or cfg.task.name, examples=n, steps=len(losses),
                       loss_start=start, loss_end=end, metrics=metrics, seconds=time.perf_counter() - t0,
                       data_s=data_s)


def _training_batch(cfg: TrialConfig, task: Task, data: TaskData, device: torch.device) -> tuple[Any, Any, int]:
    """(inputs, targets, examples) of the batch to overfit: the eval split's where the train split is Ray Data."""
    from largebatch.data import epoch_permutation
    from largebatch.data.feed import make_feed

    ray_data = task.ray_data is not None or data.train is None
    split = data.eval if ray_data else data.train
    feed = make_feed(split, device, 0)
    n = min(CHECK_EXAMPLES, len(feed))
    if ray_data:
        x, y = _eval_batch(data, device, n)
    else:
        idx = epoch_permutation(len(feed), cfg.seed, 0)[:n]
        x, y = _call("reading the training batch", "fix the task's training split", feed.gather, idx)
    return x, y, n


def _check_model(cfg: TrialConfig, task: Task, data: TaskData, device: torch.device) -> torch.nn.Module:
    """The task's model, seeded, on `device` in train mode, with parameters to train."""
    import torch

    torch.manual_seed(cfg.seed)
    model = _call("building the model (task.model)", "fix the task's model()", task.model, cfg, data)
    if not isinstance(model, torch.nn.Module):
        raise _Fault(f"task.model returned {type(model).__name__}, not a torch.nn.Module")
    model = model.to(device).train()
    if not any(p.requires_grad for p in model.parameters()):
        raise _Fault("the model has no trainable parameters (none, or all with requires_grad=False); nothing can "
                     "learn")
    return model


def _overfit_steps(task: Task, model: torch.nn.Module, x: Any, y: Any, n: int, device: torch.device,
                   precision: str) -> tuple[list[float], float, float]:
    """Adam on the one batch until overfitted or MAX_STEPS: (losses, first, end); a loss that fails raises _Fault."""
    import torch

    from largebatch.train.loop import _autocast

    step_adam = _adam([p for p in model.parameters() if p.requires_grad], CHECK_LR)
    losses: list[float] = []
    for step in range(1, MAX_STEPS + 1):
        with _autocast(device, precision):
            out = _call("the model's forward", f"make it take the inputs {_shape(x)}", model, x)
            if not isinstance(out, torch.Tensor):
                raise _Fault(f"the model returned {_shape(out)}, not a tensor; return the output the loss and the "
                             f"metrics take (e.g. the logits)")
            loss = _call("the loss", f"it got the model's output {_shape(out)} and the targets {_shape(y)}: make "
                         f"them fit", task.loss, out, y)
        _check_loss(loss, out, y, "on a training batch")
        value = float(loss.detach())
        if step == 1:
            if not math.isfinite(value):
                raise _Fault(_nan_fault(x, out.detach(), loss))
            _check_broadcast(task, out.detach().float(), y)
            if not loss.requires_grad:
                raise _Fault("the loss has no gradient: it does not depend on the model's parameters (detached, "
                             "computed under no_grad, or from .item()/numpy); compute it from the output with torch "
                             "ops")
        elif not math.isfinite(value):
            raise _Fault(f"the loss went from {losses[0]:.4g} at step 1 to {value} at step {step} while overfitting "
                         f"{n} examples with Adam (lr {CHECK_LR:g}): the model or the loss is numerically unstable "
                         f"(a log of a softmax written out, an exp that overflows, a division by a small number)")
        losses.append(value)
        start, end = losses[0], sum(losses[-LAST_STEPS:]) / len(losses[-LAST_STEPS:])
        if step >= LAST_STEPS and start > 0 and end <= OVERFIT_FACTOR * start:
            break
        _call("backward", "the loss must be differentiable in the model's parameters", loss.backward)
        step_adam()

    if not end <= start - (1 - FALL_FACTOR) * abs(start) or start == 0:
        raise _Fault(f"the loss did not fall: {start:.4g} -> {end:.4g} in {len(losses)} steps of Adam (lr "
                     f"{CHECK_LR:g}) on the same {n} examples, where a working model reaches {FALL_FACTOR:g}x or "
                     f"less; the model may be dead (zero or frozen weights, dead ReLUs, an output that ignores the "
                     f"inputs), detached from the loss, or the targets may not follow from the inputs")
    return losses, start, end


def _eval_metrics(task: Task, model: torch.nn.Module, data: TaskData, x: Any, y: Any, n: int, device: torch.device,
                  precision: str, end: float) -> dict[str, float]:
    """Eval-mode loss and metrics on the training and an eval batch (must be finite); the training batch's."""
    import torch

    from largebatch.train.loop import _autocast

    model.eval()
    metrics: dict[str, float] = {}
    with torch.no_grad():
        ex, ey = _call("reading the eval batch", "fix the task's eval split", _eval_batch, data, device, n)
        for where, bx, by in (("on the training batch", x, y), ("on an eval batch", ex, ey)):
            with _autocast(device, precision):
                out = _call("the model's forward in eval mode", f"make it take the inputs {_shape(bx)}", model, bx)
            if not isinstance(out, torch.Tensor):
                raise _Fault(f"the model returned {_shape(out)} in eval mode, not a tensor; return the output the "
                             f"loss and the metrics take in both modes")
            out = out.float()
            vloss = _call("the loss in eval mode", f"it got {_shape(out)} and {_shape(by)}", task.loss, out, by)
            _check_loss(vloss, out, by, where)
            for m in task.metrics:
                v = _call(f"metric {m.name!r} {where}", f"it got the output {_shape(out)} and the targets "
                          f"{_shape(by)}", m.fn, out, by)
                if not isinstance(v, torch.Tensor) or v.numel() == 0:
                    raise _Fault(f"metric {m.name!r} {where} returned {_shape(v)}; return a tensor of one value per "
                                 f"element (example, token, ...), e.g. (output.argmax(1) == target)")
                mean = float(v.double().mean())
                if not math.isfinite(mean):
                    raise _Fault(f"metric {m.name!r} {where} is {mean} after overfitting (loss {end:.4g}); it must "
                                 f"be finite for a finite output")
                if bx is x:
                    metrics[m.name] = mean
    return metrics


def check_trial(cfg: TrialConfig, source: str, label: str = "base", threads: int = 1) -> CheckResult:
    """overfit(cfg) on `threads` CPU threads (a trial worker's), a fault as one BadInput line naming the file,
    `<label>.task.name` and the task. The global RNG state and thread count are left as they were; nothing is
    written."""
    import torch

    prefix = f"{label}." if label else ""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. mse_loss's broadcast warning: the check says it in its own line
            return overfit(cfg, label)
    except _Fault as e:
        raise BadInput(f"task {cfg.task.name!r} fails the overfit check: {e} (largebatch check; --no-check skips "
                       f"it)", source=source, field=f"{prefix}task.name") from None
    except BadInput as e:
        raise e.placed(source, prefix, "task.name") from None
    finally:
        torch.set_num_threads(old_threads)


# what the check builds from a trial config: a baseline that differs in none of them is not checked again
CHECKED_FIELDS = ("seed", "task", "precision", "model")
CHECKED_DATA = ("dataset", "path", "train_subset", "eval_subset")


def _built(cfg: TrialConfig) -> dict[str, Any]:
    tree = cfg.model_dump(mode="json")
    return {**{k: tree[k] for k in CHECKED_FIELDS}, **{f"data.{k}": tree["data"][k] for k in CHECKED_DATA}}


def check_configs(study: StudyConfig, source: str, baseline: Optional[bool] = None) -> list[tuple[str, TrialConfig]]:
    """(label, config) to check: base, and the baseline when it builds something else. baseline=True/False: only
    that one (`train --baseline` trains the baseline alone)."""
    base = ("base", study.base)
    other = ("baseline", baseline_trial(study, source)) if study.baseline is not None else None
    if baseline is True:
        return [other or base]
    if baseline is False or other is None or _built(other[1]) == _built(study.base):
        return [base]
    return [base, other]


def check_study(study: StudyConfig, source: str, baseline: Optional[bool] = None, prefix: str = "",
                echo: Callable[[str], None] = lambda line: print(line, flush=True)) -> list[CheckResult]:
    """Check each config of check_configs() (`largebatch check`, and `tune`/`train` before Ray starts); echo one
    line per config, after `prefix`; the first fault raises BadInput."""
    results = []
    for label, cfg in check_configs(study, source, baseline):
        results.append(check_trial(cfg, source, label, study.tuner.cpus_per_worker))
        echo(prefix + results[-1].line())
    return results


def check_models(study: StudyConfig, source: str) -> None:
    """The classification task's model options as create_model would take them (the builder, the factory's import,
    the keyword arguments), without building a model or reading data (`validate`); a user task builds its own."""
    from largebatch.models import check_model_options

    trials = [("base.", study.base)] + ([("baseline.", baseline_trial(study, source))] if study.baseline else [])
    for prefix, cfg in trials:
        if cfg.task.name != "classification":
            continue
        m = cfg.model
        try:
            check_model_options(m.name, hidden_sizes=tuple(m.hidden_sizes), depth=m.depth, width=m.width,
                                dropout=m.dropout, factory=m.factory, kwargs=m.kwargs,
                                ghost_batch_size=m.ghost_batch_size)
        except BadInput as e:
            raise e.placed(source, prefix, "model") from None
