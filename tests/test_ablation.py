"""The ablations of P2Rec (METHOD.md sections 8 and 9): the prompt modes (soft, soft+text, text), user-level
sub-windows (llm.min_window), and LLM variants declared in the variant catalog with their own llm overrides
(own folder, own settings, own lineage; p2rec and instance unchanged)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml

from p2rec import P2RecError
from p2rec.data.split import LeaveOneOut
from p2rec.llm import sft
from p2rec.llm import settings as st
from p2rec.llm.extract import extract_items
from p2rec.llm.loading import load_causal_lm
from p2rec.llm.prompt import PromptTemplate
from p2rec.llm.sft import build_model, trainable_parameters
from p2rec.workflow.config import validate_config
from p2rec.workflow.experiment import pipeline_config, run_lineage
from tests.conftest import REPO, run_snakemake
from tests.test_llm import K, run, sft_settings, stage_inputs, tiny_llm  # noqa: F401 (fixtures)

INSTRUCTION, RESPONSE = "Items:", " Answer:"
#: item texts of the 30 items of ``stage_inputs`` (index = item id): some have none, some are long
TEXTS = [""] + [("" if i % 4 == 0 else f"Red lipstick number {i}" + (" with a very long name" * 3 if i % 7 == 0 else ""))
                for i in range(1, 31)]
LISTS = [[3, 5, 7, 9, 11], [9], [4, 8], [30, 1, 6], [28]]  # different lengths: right padding in the batch


def ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def tokenizer(tiny_llm):
    return load_causal_lm(tiny_llm, "float32", "cpu")[1]


def write_items(path, texts):
    path.write_text("item_id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts) if i > 0), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ prompt modes
def test_soft_mode_builds_the_sequence_it_always_built(tokenizer):
    template = PromptTemplate(tokenizer, INSTRUCTION, RESPONSE, "soft", item_texts=TEXTS, text_tokens=3)
    prefix = list(tokenizer(INSTRUCTION, add_special_tokens=True)["input_ids"])
    suffix = ids(tokenizer, RESPONSE)
    batch = template.batch([[3, 5, 7], [9]])
    # the soft sequence: the instruction, one slot (id 0) per item, the response marker; texts are not shown
    assert batch.token_ids[0].tolist() == prefix + [0, 0, 0] + suffix
    assert batch.item_ids[0].tolist() == [0] * len(prefix) + [3, 5, 7] + [0] * len(suffix)
    assert batch.token_ids[1].tolist() == prefix + [0] + suffix + [0, 0]  # right-padded
    assert batch.lengths == [len(prefix) + 3 + len(suffix), len(prefix) + 1 + len(suffix)]
    assert template.describe() == {"mode": "soft", "instruction": INSTRUCTION, "response": RESPONSE,
                                   "prefix_tokens": len(prefix), "suffix_tokens": len(suffix)}
    assert template.length([3, 5, 7]) == batch.lengths[0]


def test_soft_plus_text_puts_each_items_text_after_its_soft_token(tokenizer):
    template = PromptTemplate(tokenizer, INSTRUCTION, RESPONSE, "soft+text", item_texts=TEXTS, text_tokens=3)
    prefix, suffix = list(tokenizer(INSTRUCTION, add_special_tokens=True)["input_ids"]), ids(tokenizer, RESPONSE)
    red = ids(tokenizer, " Red lipstick number 1")[:3]  # the budget: the first 3 tokens of " <text>"
    assert tokenizer.decode(red) == " Re"  # the tiny tokenizer spells short words out: hand-checkable
    batch = template.batch([[1, 4, 2]])  # item 4 has no text: its soft token alone
    two = ids(tokenizer, " Red lipstick number 2")[:3]
    assert batch.token_ids[0].tolist() == prefix + [0] + red + [0] + [0] + two + suffix
    assert batch.item_ids[0].tolist() == [0] * len(prefix) + [1, 0, 0, 0, 4, 2, 0, 0, 0] + [0] * len(suffix)
    assert batch.soft_mask[0].nonzero().flatten().tolist() == [len(prefix), len(prefix) + 4, len(prefix) + 5]
    assert batch.lengths[0] == template.length([1, 4, 2]) == len(prefix) + 3 + 6 + len(suffix)
    assert template.describe()["text_tokens"] == 3 and template.uses_soft
    # the budget caps long texts; a larger one shows more of them
    wide = PromptTemplate(tokenizer, INSTRUCTION, RESPONSE, "soft+text", item_texts=TEXTS, text_tokens=1000)
    assert wide.item_text_ids(7) == ids(tokenizer, " " + TEXTS[7]) and len(wide.item_text_ids(7)) > 40
    with pytest.raises(P2RecError, match="'soft\\+text' shows item texts"):
        PromptTemplate(tokenizer, INSTRUCTION, RESPONSE, "soft+text")
    with pytest.raises(P2RecError, match="item id 31 has no entry in the item texts"):
        template.batch([[31]])


def test_text_mode_writes_the_text_and_falls_back_to_item_ids(tokenizer):
    template = PromptTemplate(tokenizer, INSTRUCTION, RESPONSE, "text", item_texts=TEXTS, text_tokens=3)
    batch = template.batch([[1, 4]])
    text = tokenizer.decode(batch.token_ids[0, : batch.lengths[0]], skip_special_tokens=True)
    assert text == "Items: Re; item_4 Answer:"  # item 1's text (3 tokens) and the separator; item 4 has none
    assert not batch.soft_mask.any() and not template.uses_soft
    # without item texts, text mode is what it always was: item_<id> tokens
    plain = PromptTemplate(tokenizer, INSTRUCTION, RESPONSE, "text")
    b = plain.batch([[12, 7]])
    assert tokenizer.decode(b.token_ids[0, : b.lengths[0]], skip_special_tokens=True) == "Items: item_12 item_7 Answer:"
    assert b.lengths[0] == plain.length([12, 7])


# ------------------------------------------------------------------------------------------ shared prefix, every mode
def fp32_settings(mode: str, shared: bool, **over) -> dict:
    s = sft_settings(dtype="float32", shared_prefix=shared, **over)
    s["prompt"] = {"mode": mode, "instruction": INSTRUCTION, "response": RESPONSE, "text_tokens": 4}
    s["lora"] = dict(s["lora"], dropout=0.0)
    return s


@pytest.mark.parametrize("mode", ["soft", "soft+text", "text"])
def test_shared_prefix_gives_the_whole_prompt_states_in_every_mode(stage_inputs, tiny_llm, mode):
    table = np.load(stage_inputs["table"])
    models = []
    for shared in (False, True):
        torch.manual_seed(0)
        model, _ = build_model(tiny_llm, fp32_settings(mode, shared), table, K, item_texts=TEXTS)
        models.append(model)
    torch.manual_seed(1)
    for a, b in zip(trainable_parameters(models[0]), trainable_parameters(models[1])):
        with torch.no_grad():
            noise = torch.randn_like(a) * 0.05
            a.add_(noise), b.add_(noise)
    plain, shared = models
    batch = plain.template.batch(LISTS)
    assert len(set(batch.lengths)) > 2  # prompts of different lengths, padded to the longest
    with torch.no_grad():
        plain.eval(), shared.eval()
        h_plain, h_shared = plain.last_hidden(batch), shared.last_hidden(batch)
        alone = torch.cat([plain.last_hidden(plain.template.batch([items])) for items in LISTS])
    assert torch.allclose(h_plain, h_shared, atol=1e-5, rtol=1e-5)
    assert torch.allclose(h_plain, alone, atol=1e-5, rtol=1e-5)  # padding changes nothing
    width, p = batch.token_ids.shape[1], len(plain.template.prefix)
    assert shared.computed_tokens(batch) == p + len(LISTS) * (width - p)
    assert plain.computed_tokens(batch) == batch.padded_tokens == len(LISTS) * width
    assert batch.tokens == sum(plain.template.length(items) for items in LISTS)


@pytest.mark.parametrize("mode", ["soft+text", "text"])
def test_extraction_in_a_text_mode_equals_the_whole_prompt_path(stage_inputs, tiny_llm, mode):
    d = stage_inputs["dir"]
    items = write_items(d / "items.tsv", TEXTS)
    timing = run(stage_inputs, tiny_llm, settings=fp32_settings(mode, True, epochs=1), items_path=items)
    assert timing["prompt_mode"] == mode and timing["tokens_per_sample"] == pytest.approx(
        timing["tokens"] / timing["samples"])
    adapter = d / "out" / "adapter"
    meta = json.loads((adapter / sft.TEMPLATE_FILE).read_text())
    assert meta["mode"] == mode and meta["items_sha256"] and meta["text_tokens"] == 4
    out = {}
    for shared in (False, True):
        t = extract_items(adapter, stage_inputs["table"], tiny_llm,
                          {"dtype": "float32", "device": "cpu", "shared_prefix": shared},
                          d / f"h{shared}.npy", d / f"p{shared}.npy", d / f"t{shared}.json", batch_size=8,
                          progress=False, items_path=items)
        out[shared] = np.load(d / f"h{shared}.npy"), np.load(d / f"p{shared}.npy"), t
    assert np.allclose(out[True][0], out[False][0], atol=1e-5, rtol=1e-5)
    assert np.array_equal(out[True][1], out[False][1])
    t = out[True][2]
    assert t["prompt_mode"] == mode and t["padding_fraction"] > 0 and t["computed_tokens"] < t["padded_tokens"]
    assert t["tokens"] > t["items"] * 10  # texts: several tokens per item
    # one batch for all items gives the same states (batches sorted by length; padding changes nothing)
    extract_items(adapter, stage_inputs["table"], tiny_llm, {"dtype": "float32", "device": "cpu", "shared_prefix": True},
                  d / "h_all.npy", d / "p_all.npy", d / "t_all.json", batch_size=64, progress=False, items_path=items)
    assert np.allclose(np.load(d / "h_all.npy"), out[True][0], atol=1e-5, rtol=1e-5)
    # extraction shows the texts the fine-tuning saw: no file, or another file, is refused
    with pytest.raises(P2RecError, match="extraction needs the same items file"):
        extract_items(adapter, stage_inputs["table"], tiny_llm, {"dtype": "float32", "device": "cpu"},
                      d / "x.npy", d / "y.npy", d / "z.json", progress=False)
    other = write_items(d / "other.tsv", [""] + ["blue"] * 30)
    with pytest.raises(P2RecError, match="other.tsv: not the items file"):
        extract_items(adapter, stage_inputs["table"], tiny_llm, {"dtype": "float32", "device": "cpu"},
                      d / "x.npy", d / "y.npy", d / "z.json", progress=False, items_path=other)


def test_soft_plus_text_sft_needs_the_items_file(stage_inputs, tiny_llm):
    with pytest.raises(P2RecError, match="'soft\\+text' shows item texts: give the dataset's items file"):
        run(stage_inputs, tiny_llm, settings=fp32_settings("soft+text", True, epochs=1))


# ------------------------------------------------------------------------------------------ sub-windows
def split_of(seqs) -> LeaveOneOut:
    return LeaveOneOut(np.arange(len(seqs)), [s[:-2] for s in seqs], np.array([s[-2] for s in seqs]),
                       np.array([s[-1] for s in seqs]), int(max(s.max() for s in seqs)))


def test_subwindows_lie_inside_each_users_training_window():
    rng = np.random.default_rng(2)
    # training items 1..50; 51..60 only ever held out (validation and test)
    seqs = [np.concatenate([rng.choice(np.arange(1, 51), size=rng.integers(1, 30), replace=False),
                            rng.choice(np.arange(51, 61), size=2, replace=False)]) for _ in range(200)]
    split = split_of(seqs)
    max_items = 8
    for min_window in (1, 3, 8):
        sub = sft.subwindow_samples(split.train, max_items, min_window, seed=0)
        eligible = [u for u, s in enumerate(split.train) if min(len(s), max_items) > min_window]
        assert sub.user.tolist() == eligible  # one per user whose window is longer than min_window
        for j in range(len(sub)):
            train = split.train[int(sub.user[j])]
            window = train[-max_items:]
            shown = sub.items(split.train, j)
            assert min_window <= len(shown) < len(window)  # strictly shorter than the whole window
            assert int(sub.start[j]) >= len(train) - len(window) and int(sub.end[j]) <= len(train)
            assert shown.max() <= 50 and not {51, 52, 53, 54, 55, 56, 57, 58, 59, 60} & set(shown.tolist())
        again = sft.subwindow_samples(split.train, max_items, min_window, seed=0)
        assert np.array_equal(again.start, sub.start) and np.array_equal(again.end, sub.end)  # seeded
    lengths = [len(sft.subwindow_samples(split.train, max_items, 1, seed=s).items(split.train, 0)) for s in range(30)]
    assert len(set(lengths)) > 3  # lengths are drawn, not fixed
    # held-out items can be anything: the sub-windows do not change
    other = split_of([np.concatenate([s[:-2], [59, 60]]) for s in seqs])
    a, b = sft.subwindow_samples(split.train, 8, 1, 0), sft.subwindow_samples(other.train, 8, 1, 0)
    assert np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end) and np.array_equal(a.user, b.user)


def test_subwindow_target_is_derived_from_its_items_like_g_u():
    from p2rec.llm.categories import prior_preferences

    cats = np.array([-1, 0, 1, 1, 2, 3, 3])
    train = [np.array([1, 2, 3, 4, 5, 6])]
    g = prior_preferences(train, cats, 4, max_items=6)
    assert np.array_equal(sft.window_preference(train[0], cats, 4), g[0])  # the whole window: g_u itself
    assert sft.window_preference(np.array([5]), cats, 4).tolist() == [0, 0, 0, 1]  # one item: its category
    assert sft.window_preference(np.array([2, 3, 4]), cats, 4).tolist() == pytest.approx([0, 2 / 3, 1 / 3, 0])


def spy_training(monkeypatch):
    """Record the item lists and targets of every SFT step."""
    seen = []
    original = sft.sft_loss

    def spy(out, target, mode, loss="mse"):
        seen.append(target.detach().clone())
        return original(out, target, mode, loss)

    batches = []
    original_batch = PromptTemplate.batch

    def spy_batch(self, item_lists):
        batches.append([list(map(int, x)) for x in item_lists])
        return original_batch(self, item_lists)

    monkeypatch.setattr(sft, "sft_loss", spy)
    monkeypatch.setattr(PromptTemplate, "batch", spy_batch)
    return batches, seen


def test_min_window_unset_gives_exactly_todays_samples(stage_inputs, tiny_llm, monkeypatch):
    batches, targets = spy_training(monkeypatch)
    settings = sft_settings(epochs=2, batch_size=5)
    timing = run(stage_inputs, tiny_llm, out="unset", settings=settings)
    train, g_u = stage_inputs["train"], np.load(stage_inputs["g_u"])
    # what the user-level epoch was before sub-windows existed: the users' windows, batched by length
    full = sft.user_samples(train, 5)
    # soft prompts: fixed tokens + one per item, so the item count orders them as the prompt length does
    lengths = np.array([len(full.items(train, j)) for j in range(len(full))])
    expected_items, expected_targets = [], []
    for epoch in range(2):
        rng = np.random.default_rng([0, epoch])
        for idx in sft.make_batches(lengths, 5, rng):
            expected_items.append([full.items(train, int(j)).tolist() for j in idx])
            expected_targets.append(g_u[full.user[idx]])
    assert batches == expected_items
    assert all(np.array_equal(t.numpy(), e) for t, e in zip(targets, expected_targets))
    assert timing["samples"] == 2 * len(train) and "min_window" not in timing
    # an explicit null is the same run
    batches.clear(), targets.clear()
    run(stage_inputs, tiny_llm, out="null", settings=dict(settings, min_window=None))
    assert batches == expected_items
    same, b = sft.user_level_samples(train, 5, None, 0)
    assert b == 0 and np.array_equal(same.user, full.user) and np.array_equal(same.end, full.end) and same.start is None


def test_min_window_adds_subwindows_of_training_items_only(tmp_path, tiny_llm, monkeypatch):
    from p2rec.data.sequences import format_sequences
    from p2rec.llm import categories as cat

    rng = np.random.default_rng(5)
    train = [rng.choice(np.arange(1, 21), size=rng.integers(2, 9), replace=False) for _ in range(10)]
    train[0][0] = 20
    seqs = [np.concatenate([t, rng.choice(np.arange(21, 31), size=2, replace=False)]) for t in train]
    seqs[0] = np.concatenate([seqs[0][:-1], [30]])
    (tmp_path / "d.txt").write_text(format_sequences(np.arange(1, 11), seqs))
    table = rng.normal(size=(31, 8)).astype(np.float32)
    np.save(tmp_path / "table.npy", table)
    cats = np.where(np.arange(31) > 20, 3, np.arange(31) % 3)  # held-out items: a category of their own
    cats[0] = -1
    np.save(tmp_path / "cats.npy", cats)
    np.save(tmp_path / "g.npy", cat.prior_preferences(train, cats, 4, 4))
    batches, targets = spy_training(monkeypatch)
    timing = sft.run_sft("user", tmp_path / "d.txt", tmp_path / "table.npy", tmp_path / "cats.npy", tiny_llm,
                         sft_settings(epochs=1, k=4, max_items=4, min_window=1), tmp_path / "out",
                         g_u_path=tmp_path / "g.npy", progress=False)
    eligible = sum(min(len(t), 4) > 1 for t in train)
    assert timing["samples"] == timing["samples_per_epoch"] == 10 + eligible
    assert timing["subwindows_per_epoch"] == eligible and timing["min_window"] == 1
    shown = [items for b in batches for items in b]
    assert all(1 <= i <= 20 for items in shown for i in items)  # never a validation or test item
    assert sorted(map(len, shown)).count(1) >= 1 or eligible == 0
    all_targets = torch.cat(targets)
    assert torch.all(all_targets[:, 3] == 0)  # no target ever counts a held-out item's category
    # each sample's target is the category share of exactly the items it shows
    for items, target in zip(shown, all_targets):
        assert target.tolist() == pytest.approx(sft.window_preference(np.array(items), cats, 4).tolist())


# ------------------------------------------------------------------------------------------ variants by configuration
ABLATION = {
    "p2rec_softtext": {"sft": "user", "llm": {"prompt": {"mode": "soft+text"}},
                       "item_init": "llm/{pipeline}/{dataset}/p2rec_softtext/item_init_d{hidden}.npy",
                       "lineage": ["pretrain", "categories", "items", "sft", "extract", "reduce"]},
    "p2rec_k8": {"sft": "user", "llm": {"k": 8, "epochs": 3},
                 "item_init": "llm/{pipeline}/{dataset}/p2rec_k8/item_init_d{hidden}.npy",
                 "lineage": ["pretrain", "categories", "sft", "extract", "reduce"]},
    "p2rec_minwin1": {"sft": "user", "llm": {"min_window": 1, "seed": 5},
                      "item_init": "llm/{pipeline}/{dataset}/p2rec_minwin1/item_init_d{hidden}.npy",
                      "lineage": ["pretrain", "categories", "sft", "extract", "reduce"]},
}


def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def with_ablation(config: dict, **entries) -> dict:
    out = copy.deepcopy(config)
    out["variant_catalog"].update(copy.deepcopy(entries or ABLATION))
    out["variants"] = list(out["variants"]) + list(entries or ABLATION)
    return validate_config(out)


def test_an_ablation_variant_has_its_own_settings_folder_and_lineage_and_p2recs_stay(tmp_path):
    plain = validate_config(base_config())
    config = with_ablation(base_config())
    d = "synthetic"
    for v in ("p2rec", "instance"):  # the built-in variants: the same settings and lineage as without ablations
        mode = st.SFT_MODE[v]
        assert st.variant_sft_settings(config, d, v) == st.sft_settings(plain, d, mode)
        assert st.extract_settings(config, d, v) == st.extract_settings(plain, d)
        assert st.categories_folder(config, d, v) == "categories"
        for backbone in ("sasrec", "gru4rec"):
            assert run_lineage(config, d, backbone, v, 1) == run_lineage(plain, d, backbone, v, 1)
    p2rec = st.variant_sft_settings(config, d, "p2rec")
    assert "min_window" not in p2rec and "text_tokens" not in p2rec["prompt"] and p2rec["prompt"]["mode"] == "soft"
    text = st.variant_sft_settings(config, d, "p2rec_softtext")
    assert text == {**p2rec, "prompt": {**p2rec["prompt"], "mode": "soft+text", "text_tokens": 32}}
    assert st.needs_items(config, d, "p2rec_softtext") and not st.needs_items(config, d, "p2rec")
    assert st.variant_sft_settings(config, d, "p2rec_minwin1")["min_window"] == 1
    k8 = st.variant_sft_settings(config, d, "p2rec_k8")
    assert (k8["k"], k8["epochs"]) == (8, 3)
    # k gives the variant its own categories; the folder name says which, and round-trips to the settings
    assert st.categories_folder(config, d, "p2rec_k8") == "categories_k8"
    assert st.categories_folder_settings(config, d, "categories_k8") == st.categories_settings(config, d, "p2rec_k8")
    assert st.categories_folder(config, d, "p2rec_softtext") == "categories"
    with pytest.raises(P2RecError, match="not a categories folder name"):
        st.categories_folder_settings(config, d, "categories_kk8")
    lineages = {v: run_lineage(config, d, "sasrec", v, 1)["lineage"] for v in ("p2rec", *ABLATION)}
    assert len(set(lineages.values())) == 4
    upstream = run_lineage(config, d, "sasrec", "p2rec_k8", 1)
    assert upstream["lineage"] != run_lineage(plain, d, "sasrec", "p2rec", 1)["lineage"]
    assert st.llm_variant_names(config) == ["p2rec", "instance", *ABLATION]
    from p2rec.workflow.targets import item_init_file, llm_variants

    assert llm_variants(config) == ["p2rec", "instance", *ABLATION]
    assert item_init_file(config, d, "sasrec", "p2rec_k8", 1).endswith("llm/shared/synthetic/p2rec_k8/item_init_d64.npy")
    # pipeline seeds: the run seed seeds every variant's stages; a variant's own seed does not undo it
    seeded = pipeline_config(dict(config, pipeline_seeds=True), "seed2")
    assert st.variant_sft_settings(seeded, d, "p2rec_minwin1")["seed"] == 2
    assert st.categories_folder(seeded, d, "p2rec_k8") == "categories_k8"
    assert st.variant_sft_settings(config, d, "p2rec_minwin1")["seed"] == 5


@pytest.mark.parametrize("entry, message", [
    ({"llm": {"kk": 3}}, r"variant_catalog.bad.llm': Additional properties are not allowed \('kk'"),
    ({"llm": {"prompt": {"mode": "soft+txt"}}}, r"variant_catalog.bad.llm.prompt.mode': 'soft\+txt' is not one of"),
    ({"llm": {"lora": {"r": "8"}}}, r"variant_catalog.bad.llm.lora.r': '8' is not of type 'integer'"),
    ({"llm": {"min_window": 0}}, r"variant_catalog.bad.llm.min_window': 0 is less than the minimum of 1"),
    ({"llm": {"threads": 2}}, r"variant_catalog.bad.llm.threads': set per experiment \(llm.threads\)"),
    ({"llm": {"dataset_overrides": {}}}, r"variant_catalog.bad.llm.dataset_overrides': set per experiment"),
    ({"llm": {"min_window": 30}}, r"variant_catalog.bad.llm.min_window': 30 is more than llm.max_items \(20\)"),
    ({"llm": "soft"}, r"variant_catalog.bad.llm': 'soft' is not of type 'object'"),
    ({"item_init": "llm/{pipeline}/{dataset}/p2rec/item_init_d{hidden}.npy"},
     r"variant_catalog.bad.item_init': an LLM variant's table is its own reduction"),
    ({"lineage": ["pretrain", "reduce"]}, r"variant_catalog.bad.lineage': .* missing categories, sft, extract"),
    ({"llm": {"prompt": {"mode": "text"}}}, r"variant_catalog.bad.lineage': prompt mode 'text' shows the item text; "
                                            r"name the 'items' stage"),
])
def test_a_bad_variant_entry_is_a_clear_error_naming_the_key(entry, message):
    good = {"sft": "user", "item_init": "llm/{pipeline}/{dataset}/bad/item_init_d{hidden}.npy",
            "lineage": ["pretrain", "categories", "sft", "extract", "reduce"]}
    config = base_config()
    config["variant_catalog"]["bad"] = {**good, **entry}
    with pytest.raises(P2RecError, match=message):
        config = validate_config(config)
        st.check_variant_catalog(config)
        st.variant_sft_settings(config, "synthetic", "bad")


def test_llm_overrides_on_a_variant_without_fine_tuning_are_refused():
    config = base_config()
    config["variant_catalog"]["cf_init"]["llm"] = {"k": 8}
    with pytest.raises(P2RecError, match=r"variant_catalog.cf_init.llm': only an LLM variant takes llm overrides"):
        st.check_variant_catalog(validate_config(config))
    config = base_config()
    config["variant_catalog"]["x"] = {"sft": "users"}
    with pytest.raises(P2RecError, match=r"variant_catalog.x.sft': 'users' is not one of \['user', 'instance'\]"):
        validate_config(config)


def test_the_workflow_plans_an_ablation_variant_in_its_own_folder(tmp_path):
    config = with_ablation(base_config())
    config.update(backbones=["sasrec"], variants=["p2rec", *ABLATION])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for v in ("p2rec", *ABLATION):
        assert f"work/main/llm/shared/synthetic/{v}/adapter" in out and f"runs/synthetic/sasrec/{v}/seed1" in out
    sft_jobs = [block for block in out.split("\n\n") if "rule llm_sft:" in block]
    assert len(sft_jobs) == 4
    by_variant = {v: next(b for b in sft_jobs if f"synthetic/{v}/adapter" in b) for v in ("p2rec", *ABLATION)}
    assert "--items work/main/data/synthetic/items.tsv" in by_variant["p2rec_softtext"]
    assert "--items" not in by_variant["p2rec"] and "items.tsv" not in by_variant["p2rec"]
    assert "categories_k8/categories.npy" in by_variant["p2rec_k8"] and '"k": 8' in by_variant["p2rec_k8"]
    assert '"min_window": 1' in by_variant["p2rec_minwin1"]
    categories = [b for b in out.split("\n\n") if "rule llm_categories:" in b]
    assert sorted("categories_k8" in b for b in categories) == [False, True]
    assert any('"k": 8' in b for b in categories)
    # a bad override fails the dry run with a message naming the key
    config["variant_catalog"]["p2rec_k8"]["llm"]["kk"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", timeout=300)
    assert proc.returncode != 0 and "variant_catalog.p2rec_k8.llm': Additional properties" in proc.stdout + proc.stderr


def test_the_efficiency_table_shows_the_prompt_mode_and_tokens_per_sample(tmp_path):
    from p2rec.report.efficiency import sft_timing_records

    rows = []
    for variant, mode, tokens in (("p2rec", "soft", 270), ("p2rec_softtext", "soft+text", 2700)):
        path = tmp_path / "llm" / "toy" / variant / "timing.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"samples": 10, "tokens": tokens, "wall_s": 5.0, "train_s": 4.0, "prompt_mode": mode,
                                    "tokens_per_sample": tokens / 10}))
        rows.append(path)
    records = {r["variant"]: r for r in sft_timing_records(rows)}
    assert records["p2rec_softtext"]["prompt_mode"] == "soft+text" and records["p2rec_softtext"]["tokens_per_sample"] == 270
    assert records["p2rec"]["wall_s"] == 5.0
    from p2rec.report.efficiency import render_efficiency
    import pandas as pd

    text = render_efficiency(pd.DataFrame(), pd.DataFrame(list(records.values())))
    header = next(line for line in text.splitlines() if line.startswith("| dataset"))
    assert "prompt" in header and "tokens/sample" in header and "wall s" in header
    assert "soft+text" in text
