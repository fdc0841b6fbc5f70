"""The LLM stages without Snakemake: loading, prompt splicing, categories and g_u, SFT samplers, budget,
extrapolation, resume, extraction, reduction and bad inputs. A tiny 2-layer Llama keeps them fast."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from p2rec import P2RecError
from p2rec.data.sequences import format_sequences
from p2rec.data.split import LeaveOneOut
from p2rec.llm import categories as cat
from p2rec.llm import sft
from p2rec.llm.extract import extract_items
from p2rec.llm.loading import check_causal_config, decoder_of, load_causal_lm
from p2rec.llm.prompt import PreferenceModel, PromptTemplate, SoftItemEncoder
from p2rec.llm.reduce import reduce_file, reduce_table
from p2rec.llm.tiny import build_encoder_folder, build_tiny_llm

K = 4
D_CF = 8


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> str:
    return str(build_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny"))


def sft_settings(**over) -> dict:
    s = {"model": "tiny", "dtype": "auto", "device": "cpu", "k": K, "max_items": 5,
         "prompt": {"mode": "soft", "instruction": "A user interacted with these items, in order:",
                    "response": "\nThe user's preferences:"},
         "lora": {"r": 4, "alpha": 8, "dropout": 0.1,
                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
         "lr": 1e-3, "weight_decay": 0.0, "epochs": 2, "batch_size": 4, "seed": 0, "loss": "mse",
         "instance": {"max_samples": None, "sample_seed": 0}}
    for key, value in over.items():
        s[key] = value
    return s


@pytest.fixture
def stage_inputs(tmp_path):
    """A small dataset (users' last two items are held out) + a stage-0 table + categories + g_u."""
    rng = np.random.default_rng(1)
    num_items = 30
    users = np.arange(1, 13)
    seqs = [rng.choice(np.arange(1, num_items + 1), size=rng.integers(4, 9), replace=False) for _ in users]
    seqs[0][-1] = num_items  # make sure the largest id occurs
    data = tmp_path / "sequences.txt"
    data.write_text(format_sequences(users, seqs))
    table = rng.normal(size=(num_items + 1, D_CF)).astype(np.float32)
    table[0] = 0
    np.save(tmp_path / "table.npy", table)
    cats, _ = cat.kmeans_categories(table, K, seed=0, restarts=2)
    np.save(tmp_path / "categories.npy", cats)
    train = [s[:-2] for s in seqs]
    np.save(tmp_path / "g_u.npy", cat.prior_preferences(train, cats, K, 5))
    return {"dir": tmp_path, "data": data, "table": tmp_path / "table.npy", "categories": tmp_path / "categories.npy",
            "g_u": tmp_path / "g_u.npy", "seqs": seqs, "train": train, "num_items": num_items}


def run(stage_inputs, tiny_llm, mode="user", out="out", **kw):
    settings = kw.pop("settings", sft_settings())
    return sft.run_sft(mode, stage_inputs["data"], stage_inputs["table"], stage_inputs["categories"], tiny_llm, settings,
                       stage_inputs["dir"] / out, g_u_path=stage_inputs["g_u"], progress=False, **kw)


# ------------------------------------------------------------------------------------------ loading
def test_loads_a_causal_lm_from_a_folder(tiny_llm):
    model, tokenizer, device = load_causal_lm(tiny_llm, "float32", "cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert device.type == "cpu" and next(model.parameters()).dtype == torch.float32
    assert decoder_of(model).__class__.__name__ == "LlamaModel"
    assert len(tokenizer("item_12")["input_ids"]) > 0


def test_missing_folder_and_unknown_id_are_clear_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network wait in the test
    with pytest.raises(P2RecError, match=r"llm.model': model folder '\./nope/model' does not exist"):
        load_causal_lm("./nope/model")
    with pytest.raises(P2RecError, match=r"llm.model': cannot load Hugging Face model id .*'no-such-org/no-such-model'"):
        load_causal_lm("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(P2RecError, match="not a model folder"):
        load_causal_lm(str(tmp_path / "empty"))


def test_non_causal_model_is_rejected(tmp_path):
    folder = build_encoder_folder(tmp_path / "bert")
    with pytest.raises(P2RecError, match=r"is not a causal language model \(BertModel\)"):
        load_causal_lm(str(folder))
    from transformers import T5Config

    with pytest.raises(P2RecError, match="not a causal language model"):
        check_causal_config(T5Config(), "t5")


# ------------------------------------------------------------------------------------------ prompt
def test_soft_tokens_are_spliced_at_the_item_slots(tiny_llm):
    model, tokenizer, _ = load_causal_lm(tiny_llm, "float32", "cpu")
    template = PromptTemplate(tokenizer, "A user interacted with these items, in order:", "\nThe user's preferences:")
    table = np.random.default_rng(0).normal(size=(10, D_CF)).astype(np.float32)
    soft = SoftItemEncoder(table, model.config.hidden_size)
    pm = PreferenceModel(model, decoder_of(model), template, soft, K)
    batch = template.batch([[3, 5, 7], [9]])
    p, s = len(template.prefix), len(template.suffix)
    assert batch.lengths == [p + 3 + s, p + 1 + s]
    assert batch.soft_mask[0].nonzero().flatten().tolist() == [p, p + 1, p + 2]
    assert batch.item_ids[0, p:p + 3].tolist() == [3, 5, 7] and batch.item_ids[1, p].item() == 9
    assert batch.attention_mask[1].sum().item() == p + 1 + s and batch.last_index.tolist() == [p + 3 + s - 1, p + s]
    with torch.no_grad():
        embeds = pm.embed(batch)
        token_emb = model.get_input_embeddings()(batch.token_ids)
        expected = soft.proj(torch.as_tensor(table[[3, 5, 7]]))
        assert torch.allclose(embeds[0, p:p + 3], expected)
        assert torch.equal(embeds[0, :p], token_emb[0, :p]) and torch.equal(embeds[0, p + 3:], token_emb[0, p + 3:])
        # right padding never changes a prompt's last hidden state
        pm.eval()
        alone = pm.last_hidden(template.batch([[9]]))
        assert torch.allclose(pm.last_hidden(batch)[1], alone[0], atol=1e-5)
    # the projection is trainable, the item table is not
    assert soft.proj.weight.requires_grad and not soft.table.requires_grad


def test_text_mode_writes_item_ids_as_tokens(tiny_llm):
    _, tokenizer, _ = load_causal_lm(tiny_llm, "auto", "cpu")
    template = PromptTemplate(tokenizer, "Items:", " Answer:", mode="text")
    batch = template.batch([[12, 7]])
    text = tokenizer.decode(batch.token_ids[0, : batch.lengths[0]])
    assert "item_12 item_7" in text and not batch.soft_mask.any()
    with pytest.raises(P2RecError, match="llm.prompt.mode"):
        PromptTemplate(tokenizer, "x", "y", mode="emoji")


# ------------------------------------------------------------------------------------------ categories, g_u
def split_of(seqs) -> LeaveOneOut:
    return LeaveOneOut(np.arange(len(seqs)), [s[:-2] for s in seqs], np.array([s[-2] for s in seqs]),
                       np.array([s[-1] for s in seqs]), int(max(s.max() for s in seqs)))


def test_g_u_and_samples_use_only_training_items():
    # items 1..6 are the training items; 7..10 only ever appear as validation/test targets
    seqs = [np.array([1, 2, 3, 7, 8]), np.array([4, 5, 1, 2, 6, 9, 10]), np.array([6, 3, 7, 9])]
    cats = np.array([-1, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3])  # category 3 = held-out items only
    split = split_of(seqs)
    g = cat.prior_preferences(split.train, cats, 4, max_items=3)
    assert np.allclose(g.sum(1), 1) and np.all(g[:, 3] == 0)
    assert np.allclose(g[1], [2 / 3, 0, 1 / 3, 0])  # the last 3 training items of user 1: 1, 2, 6
    held_out = {7, 8, 9, 10}
    for samples in (sft.user_samples(split.train, 3), sft.instance_samples(split.train, 3)):
        for j in range(len(samples)):
            assert not held_out & set(samples.items(split.train, j).tolist())
    inst = sft.instance_samples(split.train, 3)
    assert not held_out & {sft.instance_target(split.train, inst, j) for j in range(len(inst))}
    # changing every held-out item changes nothing the training stages see
    other = [np.concatenate([s[:-2], [s[-2] % 6 + 1, s[-1] % 6 + 1]]) for s in seqs]
    split2 = split_of(other)
    assert np.array_equal(cat.prior_preferences(split2.train, cats, 4, 3), g)
    a, b = sft.instance_samples(split.train, 3), sft.instance_samples(split2.train, 3)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.end, b.end)


def test_g_u_window_is_the_last_training_items():
    cats = np.array([-1, 0, 1, 2, 3])
    g = cat.prior_preferences([np.array([1, 1, 2, 3, 4])], cats, 4, max_items=2)
    assert g[0].tolist() == [0, 0, 0.5, 0.5]


def test_kmeans_is_seeded_and_normalised():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5))
    rows = np.concatenate([c * rng.uniform(0.5, 5, size=(20, 1)) + 0.01 * rng.normal(size=(20, 5)) for c in centers])
    table = np.vstack([np.zeros((1, 5)), rows]).astype(np.float32)
    a, summary = cat.kmeans_categories(table, 3, seed=4, restarts=3)
    b, _ = cat.kmeans_categories(table, 3, seed=4, restarts=3)
    assert np.array_equal(a, b) and a[0] == -1 and summary["sizes"] == [20, 20, 20]
    # the scale of a row does not matter (L2-normalised): each planted direction is one cluster
    assert all(len(set(a[1 + 20 * c: 21 + 20 * c])) == 1 for c in range(3))


def test_k_larger_than_items_and_bad_tables_fail_clearly(tmp_path):
    table = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with pytest.raises(P2RecError, match=r"'llm.k': 8 categories requested but the item table has only 5 items"):
        cat.kmeans_categories(table, 8)
    np.save(tmp_path / "bad_shape.npy", np.zeros((5, 4, 2), np.float32))
    with pytest.raises(P2RecError, match="bad_shape.npy: stage-0 item table has shape"):
        cat.load_item_table(tmp_path / "bad_shape.npy", what="stage-0 item table")
    np.save(tmp_path / "rows.npy", table)
    with pytest.raises(P2RecError, match=r"rows.npy: item table has 6 rows, expected 8"):
        cat.load_item_table(tmp_path / "rows.npy", num_items=7)
    nan = table.copy()
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(P2RecError, match=r"nan.npy: item table has NaN or infinite values in 1 row\(s\) \(first item ids: \[3\]\)"):
        cat.load_item_table(tmp_path / "nan.npy")


def test_categories_stage_writes_nothing_on_bad_input(tmp_path, stage_inputs):
    from p2rec.cli import main

    out = tmp_path / "cats"
    settings = json.dumps({"k": 99, "kmeans_seed": 0, "kmeans_restarts": 1, "max_items": 5})
    assert main(["categories", "--data", str(stage_inputs["data"]), "--item-table", str(stage_inputs["table"]),
                 "--settings", settings, "--out-dir", str(out)]) == 2
    assert not out.exists() or not any(out.iterdir())
    nan = np.load(stage_inputs["table"])
    nan[2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    settings = json.dumps({"k": 3, "kmeans_seed": 0, "kmeans_restarts": 1, "max_items": 5})
    assert main(["categories", "--data", str(stage_inputs["data"]), "--item-table", str(tmp_path / "nan.npy"),
                 "--settings", settings, "--out-dir", str(out)]) == 2
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------------ instance sampler, budget
def test_instance_sampler_yields_exactly_the_training_prefixes():
    train = [np.array([5, 6, 7, 8]), np.array([9]), np.array([1, 2]), np.array([], dtype=np.int64)]
    samples = sft.instance_samples(train, max_items=2)
    got = [(tuple(samples.items(train, j).tolist()), sft.instance_target(train, samples, j)) for j in range(len(samples))]
    assert got == [((5,), 6), ((5, 6), 7), ((6, 7), 8), ((1,), 2)]  # window of 2 on the 3-item prefix
    assert len(samples) == sft.instance_count(train) == 4
    assert len(sft.user_samples(train, 2)) == 3  # one per user with a training item


def test_budget_is_seeded_and_honoured():
    a = sft.budget_indices(1000, 100, seed=3)
    assert len(a) == 100 == len(set(a.tolist())) and np.array_equal(a, sft.budget_indices(1000, 100, seed=3))
    assert not np.array_equal(a, sft.budget_indices(1000, 100, seed=4))
    assert len(sft.budget_indices(50, 100, 0)) == 50 and len(sft.budget_indices(50, None, 0)) == 50


def test_extrapolation_arithmetic():
    # 200 samples / 5000 tokens in 10 s -> 500 tokens/s; full epoch 4000 samples / 120000 tokens
    e = sft.extrapolate(200, 5000, 10.0, 4000, 120000)
    assert e["wall_s"] == pytest.approx(240.0) and e["wall_s_by_samples"] == pytest.approx(200.0)
    assert e["samples"] == 4000 and e["tokens"] == 120000
    with pytest.raises(P2RecError):
        sft.extrapolate(0, 0, 0.0, 10, 10)


def test_instance_sft_honours_the_budget_and_labels_extrapolation(stage_inputs, tiny_llm):
    settings = sft_settings(epochs=1, instance={"max_samples": 7, "sample_seed": 1})
    timing = run(stage_inputs, tiny_llm, mode="instance", settings=settings)
    full = sft.instance_count(stage_inputs["train"])
    assert timing["samples"] == 7 and timing["extrapolated"] is True and timing["full_epoch"]["extrapolated"] is True
    assert timing["full_epoch"]["samples"] == full
    tokens_per_s = timing["tokens"] / timing["train_s"]
    assert timing["full_epoch"]["wall_s"] == pytest.approx(timing["full_epoch"]["tokens"] / tokens_per_s)
    out = stage_inputs["dir"] / "out"
    assert (out / "adapter" / "adapter_model.safetensors").exists() and not (out / "checkpoint.pt").exists()


def test_user_sft_one_sample_per_user_per_epoch(stage_inputs, tiny_llm):
    timing = run(stage_inputs, tiny_llm, settings=sft_settings(epochs=2, loss="kl"))
    users = len(stage_inputs["train"])
    assert timing["samples"] == 2 * users and timing["samples_per_epoch"] == users and timing["extrapolated"] is False
    assert timing["tokens"] > 0 and timing["tokens_per_s"] > 0 and timing["peak_memory_mb"] > 0
    assert {"wall_s", "device", "torch", "transformers", "peft"} <= set(timing)
    assert json.loads((stage_inputs["dir"] / "out" / "timing.json").read_text())["samples"] == 2 * users


# ------------------------------------------------------------------------------------------ resume
class Killed(Exception):
    pass


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter_model.safetensors")
    modules = torch.load(folder / sft.MODULES_FILE, weights_only=True)
    weights.update({f"{m}.{k}": v for m, state in modules.items() for k, v in state.items()})
    return weights


def test_killed_run_resumes_from_its_last_checkpoint(stage_inputs, tiny_llm):
    settings = sft_settings(epochs=2, batch_size=3)  # 12 users -> 4 steps per epoch, 8 in all
    reference = run(stage_inputs, tiny_llm, out="ref", settings=settings, checkpoint_every=2)

    def kill_at_5(step):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        run(stage_inputs, tiny_llm, out="killed", settings=settings, checkpoint_every=2, on_step=kill_at_5)
    out = stage_inputs["dir"] / "killed"
    assert (out / "checkpoint.pt").exists() and not (out / "timing.json").exists() and not (out / "adapter").exists()
    steps = []
    resumed = run(stage_inputs, tiny_llm, out="killed", settings=settings, checkpoint_every=2, on_step=steps.append)
    assert resumed["resumed_from_step"] == 4 and steps == [5, 6, 7, 8]  # continued, not restarted
    assert resumed["samples"] == reference["samples"] and resumed["sessions"] == 2
    ref, got = adapter_tensors(stage_inputs["dir"] / "ref" / "adapter"), adapter_tensors(out / "adapter")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.allclose(ref[key], got[key], atol=1e-6), key
    assert not (out / "checkpoint.pt").exists()


def test_checkpoint_of_other_settings_is_not_resumed(stage_inputs, tiny_llm):
    settings = sft_settings(epochs=1, batch_size=3)

    def kill(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        run(stage_inputs, tiny_llm, settings=settings, checkpoint_every=1, on_step=kill)
    timing = run(stage_inputs, tiny_llm, settings=sft_settings(epochs=1, batch_size=3, lr=5e-4))
    assert timing["resumed_from_step"] is None and timing["sessions"] == 1


# ------------------------------------------------------------------------------------------ extraction, reduction
def test_extraction_parses_every_item_and_reduction_rescales(stage_inputs, tiny_llm):
    run(stage_inputs, tiny_llm, settings=sft_settings(epochs=1))
    d = stage_inputs["dir"]
    timing = extract_items(d / "out" / "adapter", stage_inputs["table"], tiny_llm,
                           {"dtype": "auto", "device": "cpu"}, d / "h.npy", d / "p.npy", d / "t.json",
                           batch_size=7, progress=False)
    hidden, parsed = np.load(d / "h.npy"), np.load(d / "p.npy")
    n = stage_inputs["num_items"]
    assert hidden.shape == (n + 1, 32) and np.all(hidden[0] == 0) and np.all(np.abs(hidden[1:]).sum(1) > 0)
    assert parsed[0] == -1 and parsed[1:].min() >= 0 and parsed[1:].max() < K and timing["items"] == n
    # batch size changes nothing; parsed = head argmax of the same state
    extract_items(d / "out" / "adapter", stage_inputs["table"], tiny_llm, {"dtype": "auto", "device": "cpu"},
                  d / "h2.npy", d / "p2.npy", d / "t2.json", batch_size=64, progress=False)
    assert np.allclose(np.load(d / "h2.npy"), hidden, atol=1e-5) and np.array_equal(np.load(d / "p2.npy"), parsed)
    info = reduce_file(d / "h.npy", d / "init.npy", hidden=6, init_std=0.02, num_items=n)
    init = np.load(d / "init.npy")
    assert init.shape == (n + 1, 6) and init.dtype == np.float32 and np.all(init[0] == 0)
    assert init[1:].std() == pytest.approx(0.02, rel=1e-4) and 0 < info["explained_variance"] <= 1


def test_reduce_rejects_bad_embeddings_and_writes_nothing(tmp_path):
    good = np.random.default_rng(0).normal(size=(11, 6)).astype(np.float32)
    with pytest.raises(P2RecError, match="cannot reduce 6-dimensional embeddings of 10 items to hidden size 8"):
        reduce_table(good, 8, 0.02)
    np.save(tmp_path / "wrong.npy", good)
    with pytest.raises(P2RecError, match=r"wrong.npy: item embeddings has 11 rows, expected 13"):
        reduce_file(tmp_path / "wrong.npy", tmp_path / "out.npy", 4, 0.02, num_items=12)
    bad = good.copy()
    bad[4, 0] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(P2RecError, match="inf.npy: item embeddings has NaN or infinite values"):
        reduce_file(tmp_path / "inf.npy", tmp_path / "out.npy", 4, 0.02)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf.npy", "wrong.npy"]


def test_sft_rejects_mismatched_inputs_and_writes_nothing(stage_inputs, tiny_llm):
    np.save(stage_inputs["dir"] / "short.npy", np.zeros((5, D_CF), np.float32))
    with pytest.raises(P2RecError, match=r"short.npy: stage-0 item table has 5 rows, expected 31"):
        sft.run_sft("user", stage_inputs["data"], stage_inputs["dir"] / "short.npy", stage_inputs["categories"],
                    tiny_llm, sft_settings(), stage_inputs["dir"] / "bad", g_u_path=stage_inputs["g_u"], progress=False)
    with pytest.raises(P2RecError, match="llm.model': model folder './missing/llm' does not exist"):
        sft.run_sft("user", stage_inputs["data"], stage_inputs["table"], stage_inputs["categories"],
                    "./missing/llm", sft_settings(), stage_inputs["dir"] / "bad", g_u_path=stage_inputs["g_u"],
                    progress=False)
    assert not (stage_inputs["dir"] / "bad").exists() or not any((stage_inputs["dir"] / "bad").iterdir())


# ------------------------------------------------------------------------------------------ settings
def test_llm_settings_hold_only_what_each_stage_reads():
    import yaml

    from p2rec.workflow.config import validate_config
    from p2rec.llm import settings as st
    from tests.conftest import REPO

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    before = (st.categories_settings(config, "synthetic"), st.sft_settings(config, "synthetic", "user"),
              st.extract_settings(config, "synthetic"), st.pretrain_settings(config, "synthetic"))
    changed = dict(config, train=dict(config["train"], lr=0.5, hidden=32), eval=dict(config["eval"], ks=[1]),
                   backbone_params={"sasrec": {"num_layers": 3}})
    after = (st.categories_settings(changed, "synthetic"), st.sft_settings(changed, "synthetic", "user"),
             st.extract_settings(changed, "synthetic"), st.pretrain_settings(changed, "synthetic"))
    assert before == after
    with_k = dict(config, llm=dict(config["llm"], k=7))
    assert st.categories_settings(with_k, "synthetic")["k"] == 7 and st.sft_settings(with_k, "synthetic", "user")["k"] == 7
    assert st.extract_settings(with_k, "synthetic") == before[2]
    # per-dataset overrides, checked against the schema
    over = dict(config, llm=dict(config["llm"], dataset_overrides={"synthetic": {"instance": {"max_samples": 9}}}))
    assert st.sft_settings(over, "synthetic", "instance")["instance"] == {"max_samples": 9, "sample_seed": 0}
    # a dataset whose override sets no budget gets the default one (as many instances as users, resolved by sft)
    assert st.sft_settings(over, "beauty", "instance")["instance"]["max_samples"] == st.USERS_BUDGET
    for overrides, message in [({"synthetic": {"kk": 3}}, r"dataset_overrides.synthetic': Additional properties are not allowed \('kk'"),
                               ({"synthetic": {"lora": {"r": "8"}}}, r"dataset_overrides.synthetic.lora.r': '8' is not of type 'integer'"),
                               ({"synthtic": {}}, r"dataset_overrides.synthtic': unknown dataset 'synthtic'")]:
        bad = dict(config, llm=dict(config["llm"], dataset_overrides=overrides))
        with pytest.raises(P2RecError, match=message):
            st.llm_config(bad, "synthetic")


@pytest.mark.slow
def test_packaged_smollm2_loads_and_runs(tmp_path):
    """The real packaged model: converted once (reused from P2REC_CONVERTED_LLM if set), loaded, one forward."""
    from p2rec.llm.loading import convert_packaged, is_converted

    folder = Path(os.environ.get("P2REC_CONVERTED_LLM", tmp_path / "smollm2"))
    if not is_converted(folder):
        convert_packaged(folder)
    model, tokenizer, _ = load_causal_lm(str(folder), "auto", "cpu")
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    table = np.random.default_rng(0).normal(size=(5, D_CF)).astype(np.float32)
    template = PromptTemplate(tokenizer, "A user interacted with these items, in order:", "\nThe user's preferences:")
    soft = SoftItemEncoder(table, 576)
    soft.match_scale(model.get_input_embeddings().weight)
    pm = PreferenceModel(model, decoder_of(model), template, soft, K)
    with torch.no_grad():
        h, logits = pm(template.batch([[1, 2], [3]]))
    assert h.shape == (2, 576) and logits.shape == (2, K) and torch.isfinite(h).all()
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        nxt = model(**ids).logits[0, -1].argmax().item()
    assert "Paris" in tokenizer.decode([nxt])  # the dequantised weights still know something


def test_stages_never_see_held_out_items(tmp_path, tiny_llm, monkeypatch):
    """Two datasets that differ only in their validation/test items: the categories stage and both SFT
    tasks must see exactly the same inputs and targets, and never a held-out item."""
    from p2rec.cli import main

    rng = np.random.default_rng(5)
    train = [rng.choice(np.arange(1, 21), size=rng.integers(2, 7), replace=False) for _ in range(10)]
    train[0][0] = 20  # ids 1..20 are training items; 21..30 only ever held out
    held_a = [rng.choice(np.arange(21, 31), size=2, replace=False) for _ in train]
    held_b = [rng.choice(np.arange(21, 31), size=2, replace=False) for _ in train]
    for name, held in (("a", held_a), ("b", held_b)):
        seqs = [np.concatenate([t, h]) for t, h in zip(train, held)]
        seqs[0] = np.concatenate([seqs[0][:-1], [30]])  # same number of items in both files
        (tmp_path / f"{name}.txt").write_text(format_sequences(np.arange(1, 11), seqs))
    table = rng.normal(size=(31, D_CF)).astype(np.float32)
    np.save(tmp_path / "table.npy", table)
    settings = json.dumps({"k": 3, "kmeans_seed": 0, "kmeans_restarts": 2, "max_items": 4})
    for name in "ab":
        assert main(["categories", "--data", str(tmp_path / f"{name}.txt"), "--item-table", str(tmp_path / "table.npy"),
                     "--settings", settings, "--out-dir", str(tmp_path / f"cat_{name}")]) == 0
    cats = np.load(tmp_path / "cat_a" / "categories.npy")
    g_a, g_b = np.load(tmp_path / "cat_a" / "g_u.npy"), np.load(tmp_path / "cat_b" / "g_u.npy")
    assert np.array_equal(cats, np.load(tmp_path / "cat_b" / "categories.npy")) and np.array_equal(g_a, g_b)
    assert np.allclose(g_a, cat.prior_preferences(train, cats, 3, 4))
    # SFT: held-out items get a category of their own, so a leaked target would show up as category 3
    own = np.where(np.arange(31) > 20, 3, cats)
    own[0] = -1
    np.save(tmp_path / "own.npy", own)
    np.save(tmp_path / "g.npy", np.zeros((10, 4), np.float32) + 0.25)
    seen_items, seen_targets = [], []
    original_batch, original_ce = PromptTemplate.batch, sft.F.cross_entropy

    def spy_batch(self, item_lists):
        seen_items.append([list(map(int, items)) for items in item_lists])
        return original_batch(self, item_lists)

    def spy_ce(logits, target, *a, **kw):
        seen_targets.append(sorted(target.tolist()))
        return original_ce(logits, target, *a, **kw)

    monkeypatch.setattr(PromptTemplate, "batch", spy_batch)
    monkeypatch.setattr(sft.F, "cross_entropy", spy_ce)
    runs = {}
    for name in "ab":
        for mode in ("user", "instance"):
            seen_items.clear(), seen_targets.clear()
            sft.run_sft(mode, tmp_path / f"{name}.txt", tmp_path / "table.npy", tmp_path / "own.npy", tiny_llm,
                        sft_settings(epochs=1, k=4, max_items=4), tmp_path / f"{mode}_{name}", g_u_path=tmp_path / "g.npy",
                        progress=False)
            runs[name, mode] = (sorted(map(sorted, (x for b in seen_items for x in b))), sorted(seen_targets))
            assert all(i <= 20 for b in seen_items for items in b for i in items)
            assert all(t != 3 for ts in seen_targets for t in ts)
    assert runs["a", "user"] == runs["b", "user"] and runs["a", "instance"] == runs["b", "instance"]
    # the instance targets are the categories of the training next items, all of them
    expected = sorted(int(own[t[i]]) for t in train for i in range(1, len(t)))
    assert sorted(x for ts in runs["a", "instance"][1] for x in ts) == expected


def test_parse_evaluation_against_kmeans_and_truth(tmp_path):
    kmeans = np.array([-1, 0, 0, 1, 1, 2, 2])
    parsed = np.array([-1, 5, 5, 3, 3, 4, 4])  # the same partition under other names
    truth = tmp_path / "truth.tsv"
    truth.write_text("item,category\n1,a\n2,a\n3,b\n4,b\n5,b\n")  # item 6 has no truth label
    result = cat.parse_evaluation(kmeans, parsed, cat.read_truth(truth))
    rows = {r["comparison"]: r for r in result["rows"]}
    assert rows["parsed_vs_kmeans"]["ari"] == pytest.approx(1.0) and rows["parsed_vs_kmeans"]["items"] == 6
    assert rows["kmeans_vs_truth"]["items"] == 5 and rows["kmeans_vs_truth"]["ari"] < 1
    assert rows["kmeans_vs_truth"]["ari"] == pytest.approx(rows["parsed_vs_truth"]["ari"])
    empty = tmp_path / "none.tsv"
    empty.write_text("item,category\n")
    assert [r["comparison"] for r in cat.parse_evaluation(kmeans, parsed, cat.read_truth(empty))["rows"]] == \
        ["parsed_vs_kmeans"]


def test_side_by_side_bench_reports_both_modes_and_the_ratios(stage_inputs, tiny_llm):
    from p2rec.bench.sft import bench_sft

    out = bench_sft(stage_inputs["data"], tiny_llm, sft_settings(), rounds=2, steps=1, progress=False)
    train = stage_inputs["train"]
    assert out["user"]["samples"] == len(train) and out["instance"]["samples"] == sft.instance_count(train)
    assert out["theoretical_token_ratio"] == pytest.approx(out["instance"]["tokens"] / out["user"]["tokens"])
    assert out["sample_ratio"] == pytest.approx(sft.instance_count(train) / len(train))
    assert len(out["user"]["rounds"]) == 2 and out["user"]["median_tokens_per_s"] > 0 and out["random_inputs"]
    assert out["measured_cost_ratio_extrapolated"] == pytest.approx(
        out["instance"]["full_epoch_s_extrapolated"] / out["user"]["full_epoch_s_extrapolated"])


def test_bench_sft_and_its_table_from_the_cli(stage_inputs, tiny_llm, tmp_path):
    from p2rec.cli import main

    path = tmp_path / "tiny.json"
    assert main(["bench", "sft", "--data", str(stage_inputs["data"]), "--model", tiny_llm, "--settings",
                 json.dumps(sft_settings()), "--rounds", "1", "--steps", "1", "--out", str(path)]) == 0
    out = json.loads(path.read_text())
    assert out["rounds"] == 1 and out["user"]["median_tokens_per_s"] > 0 and out["random_inputs"]
    subprocess.run([sys.executable, "-m", "p2rec", "bench", "sft-table", "--inputs", str(path), "--out",
                    str(tmp_path / "ratios")], check=True)
    rows = list(csv.DictReader((tmp_path / "ratios.csv").open()))
    assert [r["dataset"] for r in rows] == ["tiny"] and rows[0]["extrapolated"] == "True"
    assert float(rows[0]["measured_cost_ratio"]) == pytest.approx(out["measured_cost_ratio_extrapolated"], abs=0.005)
    assert float(rows[0]["theoretical_token_ratio"]) == pytest.approx(
        out["instance"]["tokens"] / out["user"]["tokens"], abs=0.005)
    assert "extrapolated" in (tmp_path / "ratios.md").read_text()
    del out["instance"]
    path.write_text(json.dumps(out))
    bad = subprocess.run([sys.executable, "-m", "p2rec", "bench", "sft-table", "--inputs", str(path), "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "'tiny'" in bad.stderr and "instance" in bad.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_text_id_mode_trains_and_extracts_without_a_projection(stage_inputs, tiny_llm):
    prompt = {"mode": "text", "instruction": "Items:", "response": " Answer:"}
    timing = run(stage_inputs, tiny_llm, settings=sft_settings(epochs=1, prompt=prompt))
    adapter = stage_inputs["dir"] / "out" / "adapter"
    assert set(torch.load(adapter / sft.MODULES_FILE, weights_only=True)) == {"head"}
    assert timing["prompt"]["mode"] == "text" and timing["tokens"] > timing["samples"] * 4
    d = stage_inputs["dir"]
    extract_items(adapter, stage_inputs["table"], tiny_llm, {"dtype": "auto", "device": "cpu"}, d / "h.npy",
                  d / "p.npy", d / "t.json", progress=False)
    assert np.load(d / "h.npy").shape == (stage_inputs["num_items"] + 1, 32)
