"""LoRA fine-tuning of the LLM: user-level (P2Rec) and instance-level (the comparator), METHOD.md 4.

user      one sample per user: the last ``max_items`` training items -> head output, MSE to g_u (or KL);
          with ``min_window``, also one random sub-window of each user's window (below)
instance  one sample per training prefix s_1..s_t (t >= 1) -> the category of s_{t+1}, K-way CE; where a
          full epoch does not fit, a seeded sample of ``instance.max_samples`` instances per epoch, and
          the full-epoch cost extrapolated from the measured throughput (labelled ``extrapolated``)

Sub-windows (``llm.min_window``, METHOD.md 9; unset = none, the samples of the paper): for every user
whose window (its last ``max_items`` training items, W of them) is longer than ``min_window``, one
contiguous sub-window is added to the epoch: its length L uniform in ``min_window .. W - 1``, then its
start uniform among the W - L + 1 positions inside the window. They are drawn once per run from
``llm.seed`` (their own random stream; the same sub-windows in every epoch), after the full windows, so an
epoch has ``users + users with W > min_window`` samples. A sub-window's target is derived from its own
items as g_u is from the full window (``window_preference``, the arithmetic of
p2rec.llm.categories.prior_preferences: the share of its items in each category), so a one-item window's
target is its item's category.

Both read only the training split. Trainable: LoRA adapters (peft), the soft-token projection, the head.
Progress (samples, loss, tokens/s, ETA) via tqdm; a checkpoint every ``checkpoint_every`` optimiser steps
(adapter, projection, head, optimiser, sampler position, RNG state) lets a killed run resume where it was.
A checkpoint written under other settings or inputs is ignored, never resumed.

Data-parallel: started by torchrun (``WORLD_SIZE`` > 1 in the environment), each process takes a disjoint
slice of every global batch (the same batches, in the same order, as one process), the gradients of the
trainable parameters are summed across processes weighted by slice size (so the step follows the mean
over the whole global batch, even when the slices are uneven), and only rank 0 writes checkpoints,
the adapter and ``timing.json``. One process (no ``WORLD_SIZE``, or 1) is the plain path.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from p2rec import P2RecError
from p2rec.data.sequences import read_sequences
from p2rec.data.split import leave_one_out
from p2rec.io import atomic_dir, atomic_path, sha256_file, write_json
from p2rec.llm.categories import load_categories, load_item_table, prior_preferences
from p2rec.llm.loading import decoder_of, library_versions, load_causal_lm, peak_memory_mb, precision_record
from p2rec.llm.prompt import PreferenceModel, PromptTemplate, SoftItemEncoder, prompt_needs_items

MODULES_FILE = "p2rec_modules.pt"
TEMPLATE_FILE = "p2rec_prompt.json"


# ----------------------------------------------------------------------------------------------- samples
@dataclass
class Samples:
    """Training samples as index arrays: sample j shows ``train[user[j]][:end[j]][-max_items:]``, or
    ``train[user[j]][start[j]:end[j]]`` where ``start`` is given (sub-windows)."""
    user: np.ndarray  # row of the user in the split
    end: np.ndarray  # prefix length shown (user-level: the whole training sequence)
    max_items: int
    start: np.ndarray | None = None  # first index shown; None = the last max_items before end

    def __len__(self) -> int:
        return len(self.user)

    def items(self, train: list[np.ndarray], j: int) -> np.ndarray:
        end = int(self.end[j])
        start = max(0, end - self.max_items) if self.start is None else int(self.start[j])
        return train[int(self.user[j])][start:end]


def user_samples(train: list[np.ndarray], max_items: int) -> Samples:
    """One sample per user with at least one training item: the last ``max_items`` of them."""
    users = np.array([u for u, s in enumerate(train) if len(s) >= 1], dtype=np.int64)
    ends = np.array([len(train[u]) for u in users], dtype=np.int64)
    return Samples(users, ends, max_items)


#: the random stream of the sub-windows (beside the batch order's [seed, epoch] streams)
SUBWINDOW_STREAM = 0x5357


def subwindow_samples(train: list[np.ndarray], max_items: int, min_window: int, seed: int) -> Samples:
    """One random contiguous sub-window per user whose window (last ``max_items`` training items) is longer
    than ``min_window``: length uniform in min_window .. W - 1, start uniform inside the window (seeded)."""
    if min_window < 1:
        raise P2RecError(f"config key 'llm.min_window': must be >= 1, got {min_window}")
    rng = np.random.default_rng([int(seed), SUBWINDOW_STREAM])
    users, starts, ends = [], [], []
    for u, seq in enumerate(train):
        lo, hi = max(0, len(seq) - max_items), len(seq)  # the user's window: train[u][lo:hi]
        width = hi - lo
        if width <= min_window:
            continue
        length = int(rng.integers(min_window, width))  # min_window .. width - 1
        start = lo + int(rng.integers(0, width - length + 1))
        users.append(u)
        starts.append(start)
        ends.append(start + length)
    as_array = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
    return Samples(as_array(users), as_array(ends), max_items, as_array(starts))


def user_level_samples(train: list[np.ndarray], max_items: int, min_window: int | None = None,
                       seed: int = 0) -> tuple[Samples, int]:
    """The user-level epoch: every user's window, then (``min_window`` set) the sub-windows. Returns the
    samples and how many of them are sub-windows (the last ones)."""
    full = user_samples(train, max_items)
    if min_window is None:
        return full, 0
    sub = subwindow_samples(train, max_items, int(min_window), seed)
    starts = np.concatenate([np.maximum(full.end - max_items, 0), sub.start])
    return Samples(np.concatenate([full.user, sub.user]), np.concatenate([full.end, sub.end]), max_items,
                   starts), len(sub)


def instance_count(train: list[np.ndarray]) -> int:
    """sum over users of (training length - 1): the instances of one full instance-level epoch."""
    return int(sum(max(len(s) - 1, 0) for s in train))


def instance_samples(train: list[np.ndarray], max_items: int) -> Samples:
    """Every training prefix s_1..s_t with a training next item s_{t+1} (t = 1 .. len - 1)."""
    users, ends = [], []
    for u, seq in enumerate(train):
        n = len(seq) - 1
        if n > 0:
            users.append(np.full(n, u, dtype=np.int64))
            ends.append(np.arange(1, len(seq), dtype=np.int64))
    if not users:
        return Samples(np.zeros(0, np.int64), np.zeros(0, np.int64), max_items)
    return Samples(np.concatenate(users), np.concatenate(ends), max_items)


def window_preference(window: np.ndarray, categories: np.ndarray, k: int) -> np.ndarray:
    """The category shares of a window's items, float32 [k]: g_u (``prior_preferences``) of a window alone."""
    window = np.asarray(window, dtype=np.int64)
    if len(window) == 0:
        raise P2RecError("a sub-window with no items")
    return prior_preferences([window], categories, k, len(window))[0]


def instance_target(train: list[np.ndarray], samples: Samples, j: int) -> int:
    """The next training item after the prefix of sample ``j``."""
    return int(train[int(samples.user[j])][int(samples.end[j])])


def budget_indices(total: int, max_samples: int | None, seed: int) -> np.ndarray:
    """All instances, or a seeded sample of ``max_samples`` of them without replacement (sorted)."""
    if max_samples is None or max_samples >= total:
        return np.arange(total, dtype=np.int64)
    if max_samples < 1:
        raise P2RecError(f"config key 'llm.instance.max_samples': must be >= 1, got {max_samples}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=max_samples, replace=False)).astype(np.int64)


def subset(samples: Samples, idx: np.ndarray) -> Samples:
    return Samples(samples.user[idx], samples.end[idx], samples.max_items,
                   None if samples.start is None else samples.start[idx])


def extrapolate(measured_samples: int, measured_tokens: int, seconds: float, full_samples: int,
                full_tokens: int) -> dict:
    """Full-epoch cost from measured throughput: by tokens (primary) and by samples."""
    if measured_samples <= 0 or seconds <= 0:
        raise P2RecError("cannot extrapolate from an empty measurement")
    tokens_per_s = measured_tokens / seconds
    return {
        "samples": full_samples,
        "tokens": full_tokens,
        "wall_s": full_tokens / tokens_per_s,
        "wall_s_by_samples": full_samples * seconds / measured_samples,
        "basis": f"measured {tokens_per_s:.1f} tokens/s over {measured_samples} samples",
    }


def make_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length prompts (sorted inside windows of 50 batches, then the batch
    order shuffled): each batch is padded only to its longest prompt."""
    order = rng.permutation(len(lengths))
    window = 50 * batch_size
    parts = np.array_split(order, max(1, -(-len(order) // window)))
    order = np.concatenate([w[np.argsort(lengths[w], kind="stable")] for w in parts]) if len(order) else order
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ----------------------------------------------------------------------------------------------- model
def lora_config(settings: dict):
    from peft import LoraConfig

    lora = settings["lora"]
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"], bias="none")


def build_model(model_path: str, settings: dict, item_table: np.ndarray | None, k: int, adapter: str | Path | None = None,
                item_texts: list[str] | None = None):
    """The LLM with LoRA (new, or loaded from ``adapter``), the soft-token projection and the head.
    ``item_texts`` (indexed by item id) feed the text prompt modes."""
    from peft import PeftModel, get_peft_model

    llm, tokenizer, device = load_causal_lm(model_path, settings["dtype"], settings["device"],
                                            settings.get("attention", "auto"))
    decoder = decoder_of(llm)
    prompt = settings["prompt"]
    template = PromptTemplate(tokenizer, prompt["instruction"], prompt["response"], prompt["mode"],
                              item_texts=item_texts, text_tokens=prompt.get("text_tokens"))
    for p in llm.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if adapter is None:
            try:
                peft_model = get_peft_model(llm, lora_config(settings))
            except ValueError as err:
                raise P2RecError(f"config key 'llm.lora.target_modules': {str(err).splitlines()[0]} (use "
                                 f"'all-linear' for architectures without Llama-style projection names)") from None
        else:
            peft_model = PeftModel.from_pretrained(llm, str(adapter), is_trainable=False)
    soft = None
    if template.uses_soft:
        if item_table is None:
            raise P2RecError(f"prompt mode '{template.mode}' needs the stage-0 item table")
        soft = SoftItemEncoder(item_table, llm.config.hidden_size)
        soft.match_scale(decoder.get_input_embeddings().weight)
    model = PreferenceModel(peft_model, decoder, template, soft, k, settings.get("shared_prefix", False))
    for module in model.trainable_modules().values():
        module.to(device=device, dtype=torch.float32)
    return model, device


def trainable_parameters(model: PreferenceModel) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _modules_state(model: PreferenceModel) -> dict:
    return {name: {k: v.detach().cpu() for k, v in m.state_dict().items()} for name, m in model.trainable_modules().items()}


def save_trained(model: PreferenceModel, out: Path, settings: dict, extra: dict) -> None:
    """The adapter folder: peft adapter + projection and head weights + the prompt template."""
    with atomic_dir(out) as tmp:
        model.llm.save_pretrained(str(tmp))
        torch.save(_modules_state(model), tmp / MODULES_FILE)
        write_json(tmp / TEMPLATE_FILE, {**model.template.describe(), "k": model.head.out_features,
                                         "max_items": settings["max_items"], "settings": settings, **extra})


def load_trained_modules(model: PreferenceModel, adapter: Path) -> None:
    state = torch.load(adapter / MODULES_FILE, map_location="cpu", weights_only=True)
    for name, module in model.trainable_modules().items():
        if name not in state:
            raise P2RecError(f"{adapter / MODULES_FILE}: no weights for '{name}' (prompt mode changed?)")
        module.load_state_dict(state[name])


# ----------------------------------------------------------------------------------------------- training
def _fingerprint(settings: dict, inputs: list[Path]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in inputs:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def progress_options() -> dict:
    """tqdm options: live on a terminal; into a log file (a workflow job), a line every 30 s at most."""
    import sys

    return {} if sys.stderr.isatty() else {"mininterval": 30.0, "ascii": True}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lora_state(model: PreferenceModel) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model.llm).items()}


def _load_lora_state(model: PreferenceModel, state: dict) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model.llm, state)


def sft_loss(out: torch.Tensor, target: torch.Tensor, mode: str, loss: str = "mse") -> torch.Tensor:
    """user: head output vs g_u (MSE, or KL(g_u || softmax)); instance: K-way cross-entropy."""
    if mode == "instance":
        return F.cross_entropy(out, target)
    if loss == "kl":
        return F.kl_div(F.log_softmax(out, -1), target, reduction="batchmean")
    if loss == "mse":
        return F.mse_loss(out, target)
    raise P2RecError(f"config key 'llm.loss': unknown loss '{loss}' (mse, kl)")


def train_step(model: PreferenceModel, optimizer, batch, target: torch.Tensor, mode: str, loss: str = "mse") -> float:
    optimizer.zero_grad(set_to_none=True)
    _, out = model(batch)
    value = sft_loss(out, target, mode, loss)
    if not torch.isfinite(value):
        raise P2RecError(f"SFT loss became {value.item()}; lower llm.lr")
    value.backward()
    optimizer.step()
    return float(value.item())


@dataclass
class Distributed:
    """This process's place in a torchrun job."""
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed | None:
    """The torchrun process layout from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; None for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Distributed(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def _start_process_group(ddp: Distributed, device_setting: str) -> str:
    """Join the process group (nccl on CUDA, gloo on the CPU); the device this rank uses."""
    import torch.distributed as dist

    on_cuda = torch.cuda.is_available() and (device_setting == "auto" or device_setting.startswith("cuda"))
    device = f"cuda:{ddp.local_rank}" if on_cuda else device_setting
    if on_cuda:
        torch.cuda.set_device(ddp.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return device


def shard(idx: np.ndarray, ddp: Distributed | None) -> np.ndarray:
    """This rank's contiguous slice of a global batch (slice sizes differ by at most one)."""
    return idx if ddp is None else np.array_split(idx, ddp.world)[ddp.rank]


def shared_train_step(model: PreferenceModel, optimizer, params: list[torch.nn.Parameter], batch, target,
                      n_global: int, mode: str, loss: str, device: torch.device) -> tuple[float, int, int]:
    """One data-parallel step on this rank's slice (``batch`` None for an empty slice).

    The local mean loss is scaled by n_local / n_global before backward, so the summed gradient over
    the ranks is the gradient of the mean over the global batch. Returns the global mean loss and the
    global real / padded token counts (the same on every rank)."""
    import torch.distributed as dist

    optimizer.zero_grad(set_to_none=True)
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, tokens, padded tokens
    if batch is not None:
        n_local = int(target.shape[0])
        _, out = model(batch)
        value = sft_loss(out, target, mode, loss)
        (value * (n_local / n_global)).backward()
        stats[0] = value.detach().double() * n_local
        stats[1], stats[2] = batch.tokens, batch.token_ids.numel()
    dist.all_reduce(stats)
    global_loss = float(stats[0].item()) / n_global
    if not np.isfinite(global_loss):
        raise P2RecError(f"SFT loss became {global_loss}; lower llm.lr")
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
    optimizer.step()
    return global_loss, int(stats[1].item()), int(stats[2].item())


def run_sft(mode: str, data_path: str | Path, item_table_path: str | Path, categories_path: str | Path,
            model_path: str, settings: dict, out_dir: str | Path, g_u_path: str | Path | None = None,
            checkpoint_every: int = 100, threads: int = 0, progress: bool = True,
            on_step: Callable[[int], None] | None = None, items_path: str | Path | None = None) -> dict:
    """Fine-tune; write ``out_dir/adapter/`` and ``out_dir/timing.json``; return the timing record.

    ``items_path``: the dataset's items file, read where the prompt mode shows item texts (``soft+text``
    needs it; ``text`` without it writes every item as ``item_<id>``); ignored in ``soft`` mode.
    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this; rank 0 writes the outputs."""
    ddp = distributed_from_env()
    try:
        return _run_sft(mode, data_path, item_table_path, categories_path, model_path, settings, out_dir, g_u_path,
                        checkpoint_every, threads, progress, on_step, ddp, items_path)
    finally:
        if ddp is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def read_item_texts(items_path: str | Path | None, prompt_mode: str, num_items: int) -> tuple[list[str] | None, str | None]:
    """The item texts a prompt mode shows (None where it shows none, or no file is given) and the file's
    sha256 (recorded with the adapter, so that extraction uses the texts the fine-tuning saw)."""
    if prompt_mode == "soft+text" and items_path is None:
        raise P2RecError("config key 'llm.prompt.mode': 'soft+text' shows item texts: give the dataset's items file "
                         "(--items data/<dataset>/items.tsv)")
    if items_path is None or not prompt_needs_items(prompt_mode):
        return None, None
    from p2rec.data.items import read_items

    return read_items(items_path, num_items), sha256_file(items_path)


def _run_sft(mode, data_path, item_table_path, categories_path, model_path, settings, out_dir, g_u_path,
             checkpoint_every, threads, progress, on_step, ddp: Distributed | None, items_path=None) -> dict:
    started = time.perf_counter()
    main = ddp is None or ddp.main
    out_dir = Path(out_dir)
    if mode not in ("user", "instance"):
        raise P2RecError(f"unknown SFT mode '{mode}' (user, instance)")
    if threads:
        # several processes on one machine share its cores
        torch.set_num_threads(threads if ddp is None else max(1, threads // ddp.world))
    data = read_sequences(data_path)
    split = leave_one_out(data)
    train = split.train  # the only part of the data this stage reads
    table = load_item_table(item_table_path, data.num_items, "stage-0 item table")
    categories = load_categories(categories_path, data.num_items)
    k = int(settings["k"])
    if categories.max() >= k:
        raise P2RecError(f"{categories_path}: category ids up to {categories.max()} but llm.k = {k}")
    max_items = int(settings["max_items"])
    inputs = [Path(data_path), Path(item_table_path), Path(categories_path)]
    item_texts, items_sha = read_item_texts(items_path, settings["prompt"]["mode"], data.num_items)
    if item_texts is not None:
        inputs.append(Path(items_path))
    min_window = settings.get("min_window") if mode == "user" else None
    if min_window is not None and not 1 <= int(min_window) <= max_items:
        raise P2RecError(f"config key 'llm.min_window': {min_window} is outside 1..llm.max_items ({max_items})")
    subwindows = 0

    if mode == "user":
        samples, subwindows = user_level_samples(train, max_items, min_window, int(settings["seed"]))
        if g_u_path is None:
            raise P2RecError("user-level SFT needs g_u (--g-u)")
        if not Path(g_u_path).exists():
            raise P2RecError(f"{g_u_path}: g_u file not found")
        g_u = np.load(g_u_path, allow_pickle=False)
        if g_u.shape != (len(train), k) or not np.isfinite(g_u).all():
            raise P2RecError(f"{g_u_path}: g_u has shape {g_u.shape} (or non-finite values), expected "
                             f"({len(train)}, {k}) finite")
        # one target per sample: g_u of the user's window; a sub-window's from its own items
        targets_user = torch.as_tensor(g_u, dtype=torch.float32)[torch.as_tensor(samples.user)]
        if subwindows:
            first = len(samples) - subwindows
            # sub-windows are never longer than max_items, so g_u's arithmetic over them is their own shares
            sub = prior_preferences([samples.items(train, j) for j in range(first, len(samples))], categories, k,
                                    max_items)
            targets_user = torch.cat([targets_user[:first], torch.as_tensor(sub)])
        inputs.append(Path(g_u_path))
        full = samples
        chosen = samples
    else:
        full = instance_samples(train, max_items)
        budget = settings["instance"]
        chosen = subset(full, budget_indices(len(full), budget.get("max_samples"), budget.get("sample_seed", 0)))
        targets_inst = torch.as_tensor(
            categories[[instance_target(train, chosen, j) for j in range(len(chosen))]], dtype=torch.long)
    if len(chosen) == 0:
        raise P2RecError(f"{data_path}: no {mode}-level training samples (every user has too few training items)")

    torch.manual_seed(int(settings["seed"]))
    np.random.seed(int(settings["seed"]) % 2**32)
    load_t0 = time.perf_counter()
    if ddp is None:
        model, device = build_model(model_path, settings, table, k, item_texts=item_texts)
    else:
        device_name = _start_process_group(ddp, settings["device"])
        model, device = build_model(model_path, dict(settings, device=device_name), table, k, item_texts=item_texts)
    load_s = time.perf_counter() - load_t0
    template = model.template
    lengths = np.array([template.length(chosen.items(train, j)) for j in range(len(chosen))], dtype=np.int64)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=settings["lr"], weight_decay=settings["weight_decay"])

    epochs = int(settings["epochs"])
    fingerprint = _fingerprint(settings, inputs)
    checkpoint = out_dir / "checkpoint.pt"
    state = {"epoch": 0, "batch": 0, "step": 0, "samples": 0, "tokens": 0, "padded_tokens": 0, "computed_tokens": 0,
             "train_s": 0.0,
             "wall_s_before": 0.0, "sessions": 0, "history": [], "loss_sum": 0.0, "loss_n": 0}
    resumed_from = None
    ckpt = None
    if checkpoint.exists():
        try:
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
        except Exception as err:
            raise P2RecError(f"{checkpoint}: unreadable checkpoint ({type(err).__name__}: {err}); delete it to start over") from None
    if ddp is not None:
        import torch.distributed as dist

        dist.barrier()  # every rank has read the checkpoint before rank 0 may delete it
    if ckpt is not None:
        if ckpt.get("fingerprint") != fingerprint:
            if main:
                print(f"{checkpoint}: written under other settings or inputs; starting over", flush=True)
                checkpoint.unlink()
        else:
            _load_lora_state(model, ckpt["lora"])
            for name, module in model.trainable_modules().items():
                module.load_state_dict(ckpt["modules"][name])
            optimizer.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
            torch.set_rng_state(ckpt["rng"]["cpu"])
            if device.type == "cuda" and "cuda" in ckpt["rng"]:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
            resumed_from = state["step"]
            if main:  # always in the job log, as backbone training does
                print(f"resuming from {checkpoint} at step {state['step']} (epoch {state['epoch'] + 1}, "
                      f"batch {state['batch']})", file=sys.stderr, flush=True)
    state["sessions"] += 1
    params = trainable_parameters(model)
    if ddp is not None:
        for p in params:  # the same start on every rank (the seeded set-up already makes it so)
            dist.broadcast(p.data, 0)

    def save_checkpoint():
        if not main:
            return
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        with atomic_path(checkpoint) as tmp:
            torch.save({"fingerprint": fingerprint, "lora": _lora_state(model), "modules": _modules_state(model),
                        "optimizer": optimizer.state_dict(), "rng": rng,
                        # wall time of earlier sessions plus this one so far (the work the checkpoint keeps)
                        "state": dict(state, wall_s_before=state["wall_s_before"] + time.perf_counter() - started)},
                       tmp)

    model.train()
    bar = tqdm(total=epochs * len(chosen), initial=state["samples"], unit="sample", disable=not progress or not main,
               desc=f"{mode}-level SFT", smoothing=0.05, **progress_options())
    while state["epoch"] < epochs:
        epoch = state["epoch"]
        batches = make_batches(lengths, settings["batch_size"], np.random.default_rng([int(settings["seed"]), epoch]))
        while state["batch"] < len(batches):
            idx = batches[state["batch"]]
            mine = shard(idx, ddp)
            if len(mine):
                item_lists = [chosen.items(train, int(j)) for j in mine]
                batch = template.batch(item_lists).to(device)
                target = targets_user[mine] if mode == "user" else targets_inst[mine]
            else:  # a global batch smaller than the number of ranks
                batch, target = None, None
            t0 = time.perf_counter()
            if ddp is None:
                loss = train_step(model, optimizer, batch, target.to(device), mode, settings.get("loss", "mse"))
                tokens, padded = batch.tokens, batch.padded_tokens
            else:
                loss, tokens, padded = shared_train_step(
                    model, optimizer, params, batch, None if target is None else target.to(device), len(idx), mode,
                    settings.get("loss", "mse"), device)
            _sync(device)
            state["train_s"] += time.perf_counter() - t0
            state["step"] += 1
            state["batch"] += 1
            state["samples"] += len(idx)
            state["tokens"] += tokens
            state["padded_tokens"] += padded
            if batch is not None:  # this rank's decoder positions (with the shared prefix, run once per batch)
                state["computed_tokens"] = state.get("computed_tokens", 0) + model.computed_tokens(batch)
            state["loss_sum"] += loss * len(idx)
            state["loss_n"] += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{state['tokens'] / max(state['train_s'], 1e-9):.0f}")
            if state["step"] % checkpoint_every == 0:
                save_checkpoint()
            if on_step is not None:
                on_step(state["step"])
        state["history"].append({"epoch": epoch + 1, "loss": state["loss_sum"] / max(state["loss_n"], 1),
                                 "train_s": state["train_s"]})
        state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_n=0)
        if epoch + 1 < epochs:
            save_checkpoint()
    bar.close()

    full_tokens = int(sum(template.length(full.items(train, j)) for j in range(len(full))))
    per_epoch_samples = len(chosen)
    sampled = len(chosen) < len(full)
    tokens_per_s = state["tokens"] / max(state["train_s"], 1e-9)
    timing = {
        "stage": f"sft-{mode}", "mode": mode, "samples": state["samples"], "tokens": state["tokens"],
        "padded_tokens": state["padded_tokens"], "computed_tokens": state.get("computed_tokens"),
        "padding_fraction": 1 - state["tokens"] / max(state["padded_tokens"], 1),
        "shared_prefix": model.shared_prefix, "epochs": epochs, "samples_per_epoch": per_epoch_samples,
        "steps": state["step"], "train_s": state["train_s"], "tokens_per_s": tokens_per_s,
        "samples_per_s": state["samples"] / max(state["train_s"], 1e-9),
        "s_per_sample": state["train_s"] / max(state["samples"], 1), "model_load_s": load_s,
        "full_epoch": {"samples": len(full), "tokens": full_tokens},
        "extrapolated": sampled,
        "users": len(train), "k": k, "max_items": max_items, "model": settings["model"], "model_path": str(model_path),
        "prompt": template.describe(), "prompt_mode": template.mode,
        "tokens_per_sample": state["tokens"] / max(state["samples"], 1), "device": str(device), **precision_record(model.llm, device),
        "peak_memory_mb": peak_memory_mb(device), "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_rss",
        "resumed_from_step": resumed_from, "history": state["history"], **library_versions(device),
    }
    if ddp is not None:  # samples and tokens above are summed over the ranks
        timing["world_size"] = ddp.world
    if min_window is not None:
        timing.update(min_window=int(min_window), subwindows_per_epoch=subwindows)
    if sampled:
        timing["full_epoch"] = {**extrapolate(per_epoch_samples * epochs, state["tokens"], state["train_s"],
                                              len(full), full_tokens), "extrapolated": True}
    else:
        timing["full_epoch"]["wall_s"] = state["train_s"] / epochs
        timing["full_epoch"]["extrapolated"] = False
    if main:
        extra = {"users": len(train), "samples_per_epoch": per_epoch_samples}
        if prompt_needs_items(template.mode):  # the texts extraction must show (None: items written as item_<id>)
            extra["items_sha256"] = items_sha
        save_trained(model, out_dir / "adapter", settings, extra)
    timing["wall_s"] = state["wall_s_before"] + time.perf_counter() - started
    timing["sessions"] = state["sessions"]
    if main:
        write_json(out_dir / "timing.json", timing)
        checkpoint.unlink(missing_ok=True)
    if ddp is not None:
        dist.barrier()  # no rank leaves before rank 0 has written the outputs
    return timing
