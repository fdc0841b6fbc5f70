"""The fast paths of the LLM stages give what the plain paths give: the shared instruction prefix (extraction
and SFT: same states, loss and gradients), merged adapters in extraction, and the bfloat16 choice (used
where the CPU has it, refused with a message where it does not)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from p2rec import P2RecError
from p2rec.llm import loading
from p2rec.llm.extract import extract_items
from p2rec.llm.sft import build_model, trainable_parameters
from tests.test_llm import run, sft_settings, stage_inputs, tiny_llm  # noqa: F401 (fixtures)

LISTS = [[3, 5, 7, 9, 11], [9], [2, 4], [30, 1, 6]]  # different lengths: right padding in the batch


def fp32_settings(mode: str = "soft", shared: bool = True, **over) -> dict:
    s = sft_settings(dtype="float32", shared_prefix=shared, **over)
    s["prompt"] = dict(s["prompt"], mode=mode)
    s["lora"] = dict(s["lora"], dropout=0.0)  # dropout masks are the one allowed difference
    return s


def twin_models(tiny_llm, table, mode: str):
    """The same seeded model twice: plain path and shared-prefix path."""
    models = []
    for shared in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(tiny_llm, fp32_settings(mode, shared), table, 4)
        models.append(model)
    # LoRA B starts at zero; give the adapters weight so that they matter for states and gradients
    torch.manual_seed(1)
    for p_plain, p_shared in zip(trainable_parameters(models[0]), trainable_parameters(models[1])):
        with torch.no_grad():
            noise = torch.randn_like(p_plain) * 0.05
            p_plain.add_(noise)
            p_shared.add_(noise)
    assert not models[0].shared_prefix and models[1].shared_prefix
    return models


@pytest.mark.parametrize("mode", ["soft", "text"])
def test_shared_prefix_gives_the_plain_hidden_states(stage_inputs, tiny_llm, mode):
    table = np.load(stage_inputs["table"])
    plain, shared = twin_models(tiny_llm, table, mode)
    batch = plain.template.batch(LISTS)
    with torch.no_grad():
        plain.eval(), shared.eval()
        h_plain, h_shared = plain.last_hidden(batch), shared.last_hidden(batch)
    assert h_plain.shape == h_shared.shape == (len(LISTS), 32)
    assert torch.allclose(h_plain, h_shared, atol=1e-5, rtol=1e-5)
    width, p = batch.token_ids.shape[1], len(plain.template.prefix)
    assert shared.computed_tokens(batch) == p + len(LISTS) * (width - p) < plain.computed_tokens(batch)


@pytest.mark.parametrize("mode", ["soft", "text"])
def test_shared_prefix_gives_the_plain_loss_and_gradients(stage_inputs, tiny_llm, mode):
    table = np.load(stage_inputs["table"])
    plain, shared = twin_models(tiny_llm, table, mode)
    batch = plain.template.batch(LISTS)
    target = torch.rand(len(LISTS), 4)
    grads = []
    for model in (plain, shared):
        model.train()
        params = trainable_parameters(model)
        for p in params:
            p.grad = None
        _, out = model(batch)
        loss = torch.nn.functional.mse_loss(out, target)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in params]))
    (loss_plain, g_plain), (loss_shared, g_shared) = grads
    assert loss_shared == pytest.approx(loss_plain, rel=1e-6)
    assert len(g_plain) == len(g_shared) > 10  # LoRA A/B of every projection, projection, head
    for a, b in zip(g_plain, g_shared):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # the adapters of the first layer's projections see the prefix: their gradient is not zero
    lora_a = [g for g, (name, _) in zip(g_plain, [(n, p) for n, p in plain.named_parameters() if p.requires_grad])
              if "layers.0." in name and "lora_A" in name]
    assert lora_a and all(g.abs().sum() > 0 for g in lora_a)


def test_sft_with_a_shared_prefix_follows_the_plain_run(stage_inputs, tiny_llm):
    losses = {}
    for shared in (False, True):
        run(stage_inputs, tiny_llm, out=f"shared{shared}", settings=fp32_settings("soft", shared))
        timing = json.loads((stage_inputs["dir"] / f"shared{shared}" / "timing.json").read_text())
        losses[shared] = [h["loss"] for h in timing["history"]]
        assert timing["shared_prefix"] is shared and timing["dtype"] == "float32"
        assert timing["tokens"] <= timing["padded_tokens"] and 0 <= timing["padding_fraction"] < 1
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert timing["computed_tokens"] < timing["padded_tokens"]


def test_extraction_with_shared_prefix_and_merged_adapters_equals_the_plain_path(stage_inputs, tiny_llm):
    d = stage_inputs["dir"]
    run(stage_inputs, tiny_llm, settings=fp32_settings("soft", True, epochs=1))
    out = {}
    for shared in (False, True):
        timing = extract_items(d / "out" / "adapter", stage_inputs["table"], tiny_llm,
                               {"dtype": "float32", "device": "cpu", "shared_prefix": shared},
                               d / f"h{shared}.npy", d / f"p{shared}.npy", d / f"t{shared}.json",
                               batch_size=8, progress=False)
        out[shared] = np.load(d / f"h{shared}.npy"), np.load(d / f"p{shared}.npy"), timing
    assert np.allclose(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    assert np.array_equal(out[True][1], out[False][1])
    timing = out[True][2]
    assert timing["shared_prefix"] and timing["adapters_merged"] and timing["computed_tokens"] < timing["tokens"]
    assert timing["padding_fraction"] == 0  # soft mode: every one-item prompt has the same length


def test_merged_extraction_matches_the_adapter_as_trained(stage_inputs, tiny_llm):
    """Merging W + BA must not change the state the fine-tuned model computes with its adapters apart."""
    d = stage_inputs["dir"]
    settings = fp32_settings("soft", False, epochs=1)
    run(stage_inputs, tiny_llm, settings=settings)
    table = np.load(stage_inputs["table"])
    model, _ = build_model(tiny_llm, settings, table, 4, adapter=d / "out" / "adapter")
    from p2rec.llm.sft import load_trained_modules

    load_trained_modules(model, d / "out" / "adapter")
    model.eval()
    with torch.no_grad():
        unmerged = model.last_hidden(model.template.batch([[i] for i in range(1, 31)])).numpy()
    extract_items(d / "out" / "adapter", stage_inputs["table"], tiny_llm, {"dtype": "float32", "device": "cpu"},
                  d / "h.npy", d / "p.npy", d / "t.json", progress=False)
    assert np.allclose(np.load(d / "h.npy")[1:], unmerged, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ bfloat16
def test_bfloat16_is_refused_with_a_message_where_the_cpu_lacks_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(loading, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(P2RecError, match=r"llm.dtype': bfloat16 on this CPU is emulated .*avx512_bf16, amx_bf16"):
        loading.resolve_dtype("bfloat16", cpu)
    assert loading.resolve_dtype("auto", cpu) == torch.float32
    assert loading.resolve_dtype("float32", cpu) == torch.float32
    assert loading.resolve_attention("auto", cpu, torch.float32) is None
    monkeypatch.setattr(loading, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16", "amx_tile"})
    assert loading.resolve_dtype("auto", cpu) == loading.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert loading.resolve_attention("auto", cpu, torch.bfloat16) == "eager"
    with pytest.raises(P2RecError, match="llm.attention': unknown attention 'flash'"):
        loading.resolve_attention("flash", cpu, torch.bfloat16)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: x\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert loading.cpu_flags(info) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert loading.cpu_flags(tmp_path / "missing") == set()


def test_sft_timing_records_the_precision_it_ran_in(stage_inputs, tiny_llm, monkeypatch):
    monkeypatch.setattr(loading, "cpu_flags", lambda: set())  # a CPU without bfloat16: auto is float32
    run(stage_inputs, tiny_llm, out="auto", settings=sft_settings(epochs=1))
    timing = json.loads((stage_inputs["dir"] / "auto" / "timing.json").read_text())
    assert timing["dtype"] == "float32" and timing["cpu_bf16_flags"] == []
    if loading.cpu_bf16_support():  # this CPU has it: auto takes bfloat16, the adapters stay float32
        monkeypatch.undo()
        run(stage_inputs, tiny_llm, out="bf16", settings=sft_settings(epochs=1))
        timing = json.loads((stage_inputs["dir"] / "bf16" / "timing.json").read_text())
        assert timing["dtype"] == "bfloat16" and timing["attention"] == "eager" and timing["cpu_bf16_flags"]
        state = torch.load(stage_inputs["dir"] / "bf16" / "adapter" / "p2rec_modules.pt", weights_only=True)
        assert state["head"]["weight"].dtype == torch.float32


# ------------------------------------------------------------------------------------------ bench llm
def test_bench_llm_runs_every_path_side_by_side_and_writes_its_table(stage_inputs, tiny_llm, tmp_path):
    from p2rec.cli import main as cli

    out = tmp_path / "bench" / "llm"
    args = ["bench", "llm", "--data", str(stage_inputs["data"]), "--model", tiny_llm, "--rounds", "1",
            "--sft-steps", "2", "--extract-items", "20", "--out", str(out),
            "--settings", json.dumps({"k": 4, "max_items": 5, "batch_size": 4, "extract_batch_size": 8})]
    with_bf16 = bool(loading.cpu_bf16_support())
    if with_bf16:
        args += ["--fidelity-steps", "0"]
    assert cli(args) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    paths = [row["path"] for row in result["sft"]]
    assert paths[0].endswith("(before)") and len(paths) == (4 if with_bf16 else 2)
    before, shared = result["extract"][0], result["extract"][1]
    assert before["speedup_vs_before"] == 1 and shared["shared_prefix"] and shared["merged_adapters"]
    assert shared["max_rel_diff_vs_before"] < 1e-5 and shared["parsed_agreement_vs_before"] == 1
    assert all(0 < row["mfu"] < 1 for row in result["sft"] + result["extract"])
    assert shared["computed_tokens_per_s"] < shared["prompt_tokens_per_s"]
    assert "## User-level SFT" in out.with_suffix(".md").read_text() and out.with_suffix(".csv").is_file()
    if with_bf16:
        fid = result["fidelity"]
        assert fid["steps"] == 3 and abs(fid["final_loss_rel_diff"]) < 0.05 and 0 <= fid["parsed_agreement"] <= 1


def test_bench_llm_fidelity_alone(stage_inputs, tiny_llm, tmp_path):
    from p2rec.cli import main as cli

    if not loading.cpu_bf16_support():  # the check compares float32 with bfloat16: refused without it
        assert cli(["bench", "llm", "--data", str(stage_inputs["data"]), "--model", tiny_llm, "--rounds", "0",
                    "--fidelity-steps", "2"]) == 2
        return
    out = tmp_path / "fid"
    assert cli(["bench", "llm", "--data", str(stage_inputs["data"]), "--model", tiny_llm, "--rounds", "0",
                "--fidelity-steps", "2", "--out", str(out),
                "--settings", json.dumps({"k": 4, "max_items": 5, "batch_size": 4})]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["rounds"] == 0 and "sft" not in result and result["fidelity"]["steps"] == 2
    assert "## Fidelity" in out.with_suffix(".md").read_text() and not out.with_suffix(".csv").exists()
