"""The built-in `charlm` task: a small GPT-style causal language model over bytes, on a plain-text corpus.

The corpus is Debian's `fortunes` (the fortune-mod cookie files, ~2.4 MB of English text; `make data` installs it,
nothing is downloaded at run time), or any folder of text files / one text file given as data.path. Tokens are
bytes (vocabulary 256), so the loss per token in bits is bits per byte. The last `val_fraction` of the corpus is the
validation text. A training example is one window of `block_size` bytes and its next-byte targets; windows do not
overlap, so an epoch reads the training text once. Metrics: val_loss (nats per byte) and val_bpb, both `min`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.errors import BadInput
from largebatch.tasks.api import TASKS, Metric, Task, TaskData

FORTUNES_ENV = "LARGEBATCH_FORTUNES_DIR"
FORTUNES_DEBIAN_DIR = "/usr/share/games/fortunes"  # Debian package fortunes
FORTUNES_LOCAL_DIR = "data/fortunes/usr/share/games/fortunes"  # non-root `dpkg-deb -x` into ./data
MAX_CORPUS_BYTES = 256 * 2**20  # the corpus is read whole into memory: a bound, not a tuning knob
VOCAB = 256
FORTUNES_MARKER = "wisdom"  # a file of the `fortunes` package proper
# The corpus is exactly these files of Debian's `fortunes` (1:1.99.1): the folder also takes files from other packages
# (fortunes-min's `fortunes`, fortunes-bofh-excuses, ...), and a corpus that changed with what else is installed would
# change the training set and the validation text between trials of one study.
FORTUNES_FILES = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs", "education", "ethnic",
    "food", "goedel", "humorists", "kids", "knghtbrd", "law", "linux", "linuxcookie", "love", "magic", "medicine",
    "men-women", "miscellaneous", "news", "paradoxum", "people", "perl", "pets", "platitudes", "politics",
    "pratchett", "science", "songs-poems", "sports", "startrek", "tao", "translate-me", "wisdom", "work", "zippy")


def corpus_files(path: str | None) -> list[Path]:
    """The text files of the corpus, in a fixed order: `path` (a file or a folder), else the fortunes folders.
    Fortune index files (.dat) and the .u8 links are left out."""
    # ./data relative to the working directory and to this checkout (Ray workers may start elsewhere)
    repo_local = str(Path(__file__).resolve().parents[2] / FORTUNES_LOCAL_DIR)
    candidates = [path] if path else [p for p in (os.environ.get(FORTUNES_ENV), FORTUNES_DEBIAN_DIR,
                                                  FORTUNES_LOCAL_DIR, repo_local) if p]
    for c in candidates:
        p = Path(c)
        if p.is_file():
            return [p]
        # a default folder counts only with the full `fortunes` package (fortunes-min alone is a tiny corpus)
        if p.is_dir() and (path or (p / FORTUNES_MARKER).is_file()):
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.is_symlink()
                           and f.suffix not in (".dat", ".u8") and (path or f.name in FORTUNES_FILES))
            if files:
                return files
    raise BadInput(f"no text corpus found; tried: {', '.join(candidates)}. To fix: install the Debian package "
                   f"fortunes (make data does), set {FORTUNES_ENV}, or give data.path (a text file or a folder of "
                   f"them)", field="data.path")


def _sizes(path: str | None, val_fraction: float) -> tuple[list[Path], int, int]:
    files = corpus_files(path)
    total = sum(f.stat().st_size for f in files)
    if total > MAX_CORPUS_BYTES:
        raise BadInput(f"the corpus is {total} bytes, over the {MAX_CORPUS_BYTES} this in-memory task reads; give a "
                       f"smaller data.path", field="data.path")
    n_val = int(total * val_fraction)
    return files, total - n_val, n_val


def _windows(text: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = (text.numel() - 1) // block
    if n < 1:
        raise BadInput(f"the text split holds {text.numel()} bytes, fewer than one window of block_size={block}+1",
                       field="task.kwargs.block_size")
    x = text[: n * block].view(n, block).long()
    y = text[1: n * block + 1].view(n, block).long()
    return x, y


def bits_per_byte(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in bits (tokens are bytes)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none") / math.log(2)


def token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy over the micro-batch's tokens."""
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x MLP. Attention is written out (no fused
    kernel) so the sharpness instrument can take its double backward on any device."""

    mask: torch.Tensor  # the causal mask, a buffer

    def __init__(self, d: int, heads: int, block: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)
        self.register_buffer("mask", torch.tril(torch.ones(block, block, dtype=torch.bool)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // self.heads))
        att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.ln2(x)))


class CharGPT(nn.Module):
    """Byte embeddings + learned positions, `layers` blocks, a final LayerNorm and a head tied to the embedding."""

    def __init__(self, block: int = 64, layers: int = 2, heads: int = 4, width: int = 64, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise BadInput(f"width {width} must be a multiple of heads {heads}", field="task.kwargs.width")
        self.block = block
        self.tok, self.pos = nn.Embedding(VOCAB, width), nn.Embedding(block, width)
        self.blocks = nn.Sequential(*[Block(width, heads, block, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.tok.weight
        for m in self.modules():  # GPT-2's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        return self.head(self.ln(self.blocks(x)))


@TASKS.register("charlm", "byte-level GPT (few layers) on Debian's fortunes text; val_loss, val_bpb (min)")
def charlm(block_size: int = 64, layers: int = 2, heads: int = 4, width: int = 64, dropout: float = 0.0,
           val_fraction: float = 0.1, eval_windows: int | None = None) -> Task:
    """block_size bytes per example; layers x heads x width the transformer; val_fraction of the corpus (its end)
    is validation text, of which the first `eval_windows` windows are scored (all when None: quick studies cap it)."""
    for key, v in (("block_size", block_size), ("layers", layers), ("heads", heads), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BadInput(f"got {v!r}: must be a positive integer", field=f"task.kwargs.{key}")
    if eval_windows is not None and (not isinstance(eval_windows, int) or eval_windows < 1):
        raise BadInput(f"got {eval_windows!r}: must be a positive integer or null", field="task.kwargs.eval_windows")
    if not 0.0 < val_fraction < 1.0:
        raise BadInput(f"got {val_fraction!r}: must be between 0 and 1", field="task.kwargs.val_fraction")

    def data(cfg) -> TaskData:
        files, n_train, _ = _sizes(cfg.data.path, val_fraction)
        raw = b"".join(f.read_bytes() for f in files)
        text = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        x_val, y_val = _windows(text[n_train:], block_size)
        return TaskData(train=_windows(text[:n_train], block_size), eval=(x_val[:eval_windows], y_val[:eval_windows]),
                        info={"vocab_size": VOCAB, "block_size": block_size, "corpus_bytes": len(raw)})

    def model(cfg, data: TaskData) -> nn.Module:
        return CharGPT(block_size, layers, heads, width, dropout)

    def count(cfg) -> int:
        _, n_train, _ = _sizes(cfg.data.path, val_fraction)
        return max(0, (n_train - 1) // block_size)

    return Task(data=data, model=model, loss=token_loss, metrics=(Metric("bpb", "min", bits_per_byte),),
                train_size=count, name="charlm")
