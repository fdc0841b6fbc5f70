"""Item side information: the items file (format, bad inputs), its preparation from attribute and MovieLens
files shaped like the real ones (built here, never copied), the categories they give, the text_init
baseline with a tiny encoder, and the workflow that joins them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from p2rec import P2RecError
from p2rec.data.item_sources import movie_title, prepare_items
from p2rec.data.items import format_items, read_items
from p2rec.llm.attribute_eval import attribute_evaluation, read_item_categories
from tests.conftest import REPO, run_snakemake


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else lambda t: path.write_text(t, encoding="utf-8"))(text)
    return path


# ------------------------------------------------------------------------------------------------ the items file
def test_read_items_accepts_header_bom_crlf_blank_lines_and_missing_items(tmp_path):
    path = write(tmp_path / "items.tsv", "\ufeffitem_id\ttext\r\n1\tRed lipstick\r\n\r\n3\t  Hair\tdryer  \r\n4\t\r\n")
    texts = read_items(path, 5)
    assert texts == ["", "Red lipstick", "", "Hair dryer", "", ""]
    # the prepared form reads back to the same list
    again = write(tmp_path / "again.tsv", format_items(texts))
    assert read_items(again, 5) == texts
    assert again.read_text().splitlines()[:2] == ["item_id\ttext", "1\tRed lipstick"]


@pytest.mark.parametrize("content, message", [
    ("1\ta\n7\tb\n", "items.tsv:2: item id 7 is outside 1..5"),
    ("1\ta\n0\tb\n", "items.tsv:2: item id 0 is outside 1..5"),
    ("1\ta\n\n1\tb\n", "items.tsv:3: duplicate item 1 (first on line 1)"),
    ("1\ta\n2 b\n", "items.tsv:2: expected 'item_id<TAB>text', found no tab"),
    ("1\ta\nx2\tb\n", "items.tsv:2: 'x2' is not an integer item id"),
    (b"1\ta\n2\t\xff\xfe\n", "items.tsv:2: not valid UTF-8 text"),
])
def test_read_items_refuses_bad_lines_naming_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "items.tsv", content)
    with pytest.raises(P2RecError, match="^" + str(tmp_path).replace("\\", "\\\\") + "/" + _escape(message)):
        read_items(path, 5)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_read_items_missing_file_and_directory(tmp_path):
    with pytest.raises(P2RecError, match="items file not found"):
        read_items(tmp_path / "nope.tsv", 3)
    with pytest.raises(P2RecError, match="is a directory"):
        read_items(tmp_path, 3)


def test_read_items_maps_raw_ids_through_the_item_map(tmp_path):
    path = write(tmp_path / "items.tsv", "500\tfive hundred\n7\tseven\n")
    assert read_items(path, 2, id_map={7: 1, 500: 2}) == ["", "seven", "five hundred"]
    with pytest.raises(P2RecError, match="items.tsv:2: item id 7 is not an item of the prepared data"):
        read_items(path, 2, id_map={500: 1})


# ------------------------------------------------------------------------------------------------ preparation
def prepared_folder(root: Path, items: int, truth: dict | None = None, item_map: dict | None = None) -> Path:
    folder = root / "prepared"
    write(folder / "stats.json", json.dumps({"items": items}))
    write(folder / "truth.tsv", "item,category\n" + "".join(f"{i},{c}\n" for i, c in (truth or {}).items()))
    if item_map:
        write(folder / "item_map.csv", "raw_item_id,item_id\n" + "".join(f"{r},{i}\n" for r, i in item_map.items()))
    return folder


def run_prepare(root: Path, name: str, entry: dict, prepared: Path):
    out_items, out_cats = root / "out" / "items.tsv", root / "out" / "item_categories.csv"
    info = prepare_items(name, entry, root / "data", prepared, out_items, out_cats)
    return info, out_items, out_cats


def amazon_files(root: Path, attributes: dict | str | None = None) -> dict:
    """Shaped like S3-Rec's Beauty_item2attributes.json / attribute_id2name.json (brand first, then categories)."""
    names = {"1": "Makeup", "2": "Face", "3": "Maybelline", "4": "Skin Care", "5": "Creams, Gels &amp; Lotions",
             "6": "", "7": "Hair Care"}
    attrs = attributes if attributes is not None else {"1": [3, 1, 2], "2": [1, 2], "3": [6, 4, 5], "4": [3, 4, 7]}
    write(root / "data/beauty/attrs.json", attrs if isinstance(attrs, str) else json.dumps(attrs))
    write(root / "data/beauty/names.json", json.dumps(names))
    return {"format": "amazon-attributes", "attributes": "beauty/attrs.json", "names": "beauty/names.json"}


def test_amazon_attributes_give_brand_and_categories_and_the_top_category(tmp_path):
    spec = amazon_files(tmp_path)
    info, items, cats = run_prepare(tmp_path, "beauty", {"source": "sequences", "items_from": spec},
                                    prepared_folder(tmp_path, 5))
    texts = read_items(items, 5)
    assert texts[1] == "brand: Maybelline; categories: Makeup, Face"
    assert texts[2] == "categories: Makeup, Face"
    assert texts[3] == "categories: Skin Care, Creams, Gels & Lotions"  # empty name dropped, entity decoded
    assert texts[4] == "brand: Maybelline; categories: Skin Care, Hair Care"
    assert texts[5] == ""  # not described: empty text
    # one category per item: the first after the brand (the top of Amazon's category path)
    assert read_item_categories(cats) == {1: "Makeup", 2: "Makeup", 3: "Skin Care", 4: "Skin Care"}
    assert info["items_with_text"] == 4 and info["categories"] == 2


def test_yelp_attributes_choose_the_most_common_category_or_another_rule(tmp_path):
    names = {"1": "Restaurants", "2": "Mexican", "3": "Bars", "4": "Nightlife"}
    write(tmp_path / "data/yelp/attrs.json", json.dumps({"1": [2, 1], "2": [1, 3], "3": [3, 4], "4": []}))
    write(tmp_path / "data/yelp/names.json", json.dumps(names))
    spec = {"format": "yelp-attributes", "attributes": "yelp/attrs.json", "names": "yelp/names.json"}
    _, items, cats = run_prepare(tmp_path, "yelp", {"source": "sequences", "items_from": spec},
                                 prepared_folder(tmp_path, 4))
    assert read_items(items, 4)[1:] == ["categories: Mexican, Restaurants", "categories: Restaurants, Bars",
                                         "categories: Bars, Nightlife", ""]
    # Restaurants and Bars are shared by 2 items each, Mexican and Nightlife by 1; ties: alphabetical
    assert read_item_categories(cats) == {1: "Restaurants", 2: "Bars", 3: "Bars"}
    _, _, cats = run_prepare(tmp_path, "yelp", {"source": "sequences", "items_from": {**spec, "category": "first"}},
                             prepared_folder(tmp_path, 4))
    assert read_item_categories(cats) == {1: "Mexican", 2: "Restaurants", 3: "Bars"}


def test_movielens_titles_years_genres_through_the_item_ids(tmp_path):
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Matrix, The (1999)::Action|Sci-Fi\n" \
             "3::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n"
    write(tmp_path / "data/ml/movies.dat", movies.encode("latin-1"))  # GroupLens ships Latin-1
    write(tmp_path / "data/ml/ids.json", json.dumps({"1": 2, "2": 3, "3": 1}))
    spec = {"format": "movielens", "movies": "ml/movies.dat", "item_ids": "ml/ids.json"}
    _, items, cats = run_prepare(tmp_path, "ml", {"source": "sequences", "items_from": spec}, prepared_folder(tmp_path, 3))
    assert read_items(items, 3)[1:] == ["The Matrix (1999); genres: Action, Sci-Fi",
                                        "Cité des enfants perdus, La (1995); genres: Adventure, Sci-Fi",
                                        "Toy Story (1995); genres: Animation, Children's, Comedy"]
    assert read_item_categories(cats) == {1: "Action", 2: "Adventure", 3: "Animation"}
    assert movie_title("American President, The (1995)") == "The American President (1995)"


def test_renumbered_dataset_maps_source_ids_through_item_map(tmp_path):
    spec = amazon_files(tmp_path, {"10": [3, 1, 2], "30": [3, 2, 4]})
    prepared = prepared_folder(tmp_path, 2, item_map={30: 1, 10: 2})
    _, items, cats = run_prepare(tmp_path, "beauty", {"source": "sequences", "items_from": spec}, prepared)
    assert read_items(items, 2)[1:] == ["brand: Maybelline; categories: Face, Skin Care",
                                        "brand: Maybelline; categories: Makeup, Face"]
    assert read_item_categories(cats) == {1: "Face", 2: "Makeup"}
    write(tmp_path / "data/own.tsv", "10\tten\n30\tthirty\n")
    _, items, _ = run_prepare(tmp_path, "beauty", {"source": "sequences", "items": "own.tsv"}, prepared)
    assert read_items(items, 2)[1:] == ["thirty", "ten"]


def test_synthetic_text_comes_from_the_planted_categories(tmp_path):
    info, items, cats = run_prepare(tmp_path, "synthetic", {"source": "synthetic"},
                                    prepared_folder(tmp_path, 3, truth={1: 0, 2: 2, 3: 0}))
    assert read_items(items, 3)[1:] == ["an item of category 0", "an item of category 2", "an item of category 0"]
    assert read_item_categories(cats) == {}  # the planted truth is scored as truth.tsv already


@pytest.mark.parametrize("attributes, entry_edit, message", [
    ({"1": [1], "9": [4]}, {}, "attrs.json: item id 9 is outside 1..5"),
    ({"1": [1], "2": [99]}, {}, "attrs.json: item '2': attribute id 99 has no name"),
    ('{"1": [1],\n "2": [4]', {}, "attrs.json:2: invalid JSON"),
    ({"x": [1]}, {}, "attrs.json: key 'x' is not an integer item id"),
    ({"1": "Makeup"}, {}, "attrs.json: item '1': expected a list of integer attribute ids"),
    ({"1": [1]}, {"attributes": "beauty/missing.json"}, "catalog.beauty.items_from.attributes': file"),
    ({"1": [1]}, {"category": "best"}, "catalog.beauty.items_from.category': unknown rule 'best'"),
    ({"1": [1]}, {"names": None}, "catalog.beauty.items_from.names': format 'amazon-attributes' needs"),
])
def test_bad_attribute_files_are_refused_and_nothing_is_written(tmp_path, attributes, entry_edit, message):
    spec = {**amazon_files(tmp_path, attributes), **entry_edit}
    with pytest.raises(P2RecError, match=_escape(message)):
        run_prepare(tmp_path, "beauty", {"source": "sequences", "items_from": spec}, prepared_folder(tmp_path, 5))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bad_items_file_through_the_catalog_and_no_source(tmp_path):
    write(tmp_path / "data/own.tsv", "1\ta\n1\tb\n")
    with pytest.raises(P2RecError, match=r"own.tsv:2: duplicate item 1 \(first on line 1\)"):
        run_prepare(tmp_path, "d", {"source": "sequences", "items": "own.tsv"}, prepared_folder(tmp_path, 3))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    with pytest.raises(P2RecError, match="dataset 'd' has no item text: set config key 'catalog.d.items'"):
        run_prepare(tmp_path, "d", {"source": "sequences"}, prepared_folder(tmp_path, 3))
    with pytest.raises(P2RecError, match="config key 'catalog.d.items': file .* not found"):
        run_prepare(tmp_path, "d", {"source": "sequences", "items": "gone.tsv"}, prepared_folder(tmp_path, 3))


AMAZON_REVIEWS = REPO / "tests" / "fixtures" / "raw" / "amazon_reviews_5.json"  # 5-core keeps B00P1..B00P5 as items 1..5


def amazon_raw(root: Path, metadata: str, **entry_keys) -> tuple[dict, Path]:
    """A dataset prepared from the Amazon review fixture, with a metadata file in raw_dir."""
    from p2rec.data.prepare import prepare_dataset

    write(root / "raw" / "reviews.json", AMAZON_REVIEWS.read_bytes())
    write(root / "raw" / "meta.json", metadata)
    entry = {"source": "amazon-2014", "file": "reviews.json",
             "items_from": {"format": "amazon-metadata", "metadata": "meta.json"}, **entry_keys}
    prepare_dataset("beauty-raw", entry, root / "data", root / "raw", root / "prepared")
    return entry, root / "prepared"


AMAZON_META = (
    "{'asin': 'B00P1', 'title': 'Rose Cream', 'brand': 'Acme', 'categories': [['Beauty', 'Skin Care', 'Face']]}\n"
    '{"asin": "B00P2", "categories": [["Beauty", "Hair Care"]]}\n'
    "{'asin': 'B00P9', 'title': 'not in the data'}\n"
    "{'asin': 'B00P6', 'title': 'dropped by the 5-core filter', 'categories': [['Beauty', 'Tools']]}\n"
    "{'asin': 'B00P3', 'title': 'Nail Polish', 'categories': [['Beauty', 'Makeup', 'Nails'], ['Beauty', 'Nail Care']]}\n"
)


def test_amazon_metadata_titles_joined_by_asin_to_data_prepared_from_reviews(tmp_path):
    entry, prepared = amazon_raw(tmp_path, AMAZON_META)
    info = prepare_items("beauty-raw", entry, tmp_path / "data", prepared, tmp_path / "out/items.tsv",
                         tmp_path / "out/cats.csv", raw_dir=tmp_path / "raw")
    texts = read_items(tmp_path / "out/items.tsv", 5)
    # by hand: the review fixture numbers B00Pn as item n; 'Beauty' is every product's root and says nothing
    assert texts[1:] == ["Rose Cream; brand: Acme; categories: Skin Care, Face", "categories: Hair Care",
                         "Nail Polish; categories: Makeup, Nails, Nail Care", "", ""]
    assert (tmp_path / "out/cats.csv").read_text() == "item,category\n1,Skin Care\n2,Hair Care\n3,Makeup\n"
    assert info["items_with_text"] == 3 and info["categories"] == 3


@pytest.mark.parametrize("metadata, entry_edit, message", [
    (AMAZON_META + "{'asin': 'B00P1', 'title': 'again'}\n", {}, r"meta.json:6: duplicate asin 'B00P1' \(first on line 1\)"),
    ("{'title': 'no asin'}\n", {}, r"meta.json:1: field 'asin' missing"),
    ("{'asin': 'B00P1', 'categories': 'Beauty'}\n", {}, r"meta.json:1: field 'categories' must be a list"),
    ("{'asin': 'B00P1', 'title': \n", {}, r"meta.json:1: not a JSON object"),
    (AMAZON_META, {"items_from": {"format": "amazon-metadata", "metadata": "gone.json"}},
     r"catalog.beauty-raw.items_from.metadata': file .*gone.json' not found \(relative to raw_dir"),
    (AMAZON_META, {"core": 1}, r"sequences.txt: the review file .* no longer gives these sequences"),
])
def test_amazon_metadata_bad_inputs_name_file_and_line_and_write_nothing(tmp_path, metadata, entry_edit, message):
    entry, prepared = amazon_raw(tmp_path, metadata)
    with pytest.raises(P2RecError, match=message):
        prepare_items("beauty-raw", {**entry, **entry_edit}, tmp_path / "data", prepared, tmp_path / "out/items.tsv",
                      tmp_path / "out/cats.csv", raw_dir=tmp_path / "raw")
    assert not (tmp_path / "out").exists()


def test_amazon_metadata_needs_data_prepared_from_the_review_file(tmp_path):
    spec = {"format": "amazon-metadata", "metadata": "meta.json"}
    write(tmp_path / "raw/meta.json", AMAZON_META)
    with pytest.raises(P2RecError, match=r"'amazon-metadata' joins by ASIN and needs a dataset prepared from the "
                                         r"Amazon review file \(source 'amazon-2014'\), not 'sequences'"):
        prepare_items("b", {"source": "sequences", "items_from": spec}, tmp_path / "data", prepared_folder(tmp_path, 5),
                      tmp_path / "out/items.tsv", tmp_path / "out/cats.csv", raw_dir=tmp_path / "raw")


def test_movielens_bad_lines_name_the_line(tmp_path):
    write(tmp_path / "data/ml/movies.dat", "1::Toy Story (1995)::Comedy\n2::Heat (1995)\n")
    write(tmp_path / "data/ml/ids.json", json.dumps({"1": 1}))
    spec = {"format": "movielens", "movies": "ml/movies.dat", "item_ids": "ml/ids.json"}
    with pytest.raises(P2RecError, match=r"movies.dat:2: expected MovieID::Title::Genres, found 2 field"):
        run_prepare(tmp_path, "ml", {"source": "sequences", "items_from": spec}, prepared_folder(tmp_path, 1))
    write(tmp_path / "data/ml/movies.dat", "1::Toy Story (1995)::Comedy\n")
    write(tmp_path / "data/ml/ids.json", json.dumps({"1": 5}))
    with pytest.raises(P2RecError, match=r"ids.json: item '1': movie 5 is not in"):
        run_prepare(tmp_path, "ml", {"source": "sequences", "items_from": spec}, prepared_folder(tmp_path, 1))


# ------------------------------------------------------------------------------------------------ categories
def test_attribute_evaluation_hand_checkable():
    # items 1..6; real categories a a b b c c (item 6 has none)
    real = {1: "a", 2: "a", 3: "b", 4: "b", 5: "c"}
    kmeans = np.array([-1, 0, 0, 1, 1, 2, 2])   # the same partition as the real one on items 1..5
    parsed = np.array([-1, 3, 3, 3, 3, 3, 0])   # one category for items 1..5: no information
    result = attribute_evaluation(kmeans, parsed, real)
    rows = {r["comparison"]: r for r in result["rows"]}
    assert rows["kmeans_vs_attributes"]["items"] == 5
    assert rows["kmeans_vs_attributes"]["ari"] == pytest.approx(1.0)
    assert rows["kmeans_vs_attributes"]["nmi"] == pytest.approx(1.0)
    assert rows["parsed_vs_attributes"]["ari"] == pytest.approx(0.0)
    assert rows["parsed_vs_attributes"]["nmi"] == pytest.approx(0.0)
    # a split of one category: ARI of {a,a,b,b,c} vs {0,1,2,2,3} by hand. Pairs within the truth: 2 (aa, bb);
    # within the clustering: 1 (22); both: 1 (bb). Expected index = 2 * 1 / C(5,2) = 0.2, max = 1.5
    result = attribute_evaluation(np.array([-1, 0, 1, 2, 2, 3]), np.array([-1, 0, 1, 2, 2, 3]), real)
    assert result["rows"][0]["ari"] == pytest.approx((1 - 0.2) / (1.5 - 0.2))
    assert result["attribute_categories_used"] == 3


def test_attribute_eval_rows_join_the_categories_table(tmp_path):
    from p2rec.cli import main

    np.save(tmp_path / "categories.npy", np.array([-1, 0, 0, 1, 1]))
    np.save(tmp_path / "parsed.npy", np.array([-1, 1, 1, 0, 0]))
    write(tmp_path / "cats.csv", 'item,category\n1,x\n2,x\n3,"y, z"\n4,"y, z"\n')
    assert main(["attribute-eval", "--categories", str(tmp_path / "categories.npy"), "--parsed",
                 str(tmp_path / "parsed.npy"), "--item-categories", str(tmp_path / "cats.csv"),
                 "--label", "beauty/p2rec", "--out", str(tmp_path / "attribute_eval.json")]) == 0
    assert main(["parse-table", "--inputs", str(tmp_path / "attribute_eval.json"), "--out", str(tmp_path / "t.csv")]) == 0
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[1:] == ["beauty,p2rec,kmeans_vs_attributes,4,1.000000,1.000000",
                        "beauty,p2rec,parsed_vs_attributes,4,1.000000,1.000000"]


def test_attribute_eval_files_only_for_datasets_with_items_from():
    from p2rec.workflow.config import validate_config
    from p2rec.workflow.targets import attribute_eval_files

    config = validate_config({**yaml.safe_load((REPO / "config.yaml").read_text()),
                              "datasets": ["synthetic", "beauty"], "variants": ["none", "p2rec", "text_init"]})
    assert [f.split("/", 2)[-1] for f in attribute_eval_files(config)] == ["llm/shared/beauty/p2rec/attribute_eval.json"]


# ------------------------------------------------------------------------------------------------ lineage
def test_item_text_never_changes_the_data_identity_but_is_in_text_init_lineage():
    from p2rec.workflow.config import validate_config
    from p2rec.workflow.experiment import run_lineage

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    with_text = validate_config(base)
    without = validate_config({**base, "catalog": {**base["catalog"], "beauty": {
        k: v for k, v in base["catalog"]["beauty"].items() if k != "items_from"}}})
    other_rule = json.loads(json.dumps(with_text))
    other_rule["catalog"]["beauty"]["items_from"]["category"] = "rarest"
    for variant in ("none", "cf_init", "p2rec"):
        assert run_lineage(with_text, "beauty", "sasrec", variant, 1) == run_lineage(without, "beauty", "sasrec", variant, 1)
    a = run_lineage(with_text, "beauty", "sasrec", "text_init", 1)
    b = run_lineage(other_rule, "beauty", "sasrec", "text_init", 1)
    assert a["lineage"] != b["lineage"] and a["data_version"] == b["data_version"]
    assert {"items", "text_init", "reduce"} <= set(a["code_versions"])


# ------------------------------------------------------------------------------------------------ text_init
@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from p2rec.llm.tiny import build_encoder_folder

    return build_encoder_folder(tmp_path_factory.mktemp("enc") / "encoder")


def test_embed_texts_mean_pools_normalises_and_keeps_order(tiny_encoder):
    from p2rec.baselines.text_init import embed_texts, load_encoder

    model, tok, dev = load_encoder(str(tiny_encoder), "cpu")
    texts = ["a much longer item text than the others, with words", "short", "", "medium length text"]
    one = embed_texts(texts, model, tok, dev, max_length=32, normalize=True, batch_size=1)
    many = embed_texts(texts, model, tok, dev, max_length=32, normalize=True, batch_size=3)
    assert one.shape == (4, 32) and np.allclose(np.linalg.norm(one[[0, 1, 3]], axis=1), 1, atol=1e-5)
    assert np.all(one[2] == 0)  # no text: a zero row
    np.testing.assert_allclose(one, many, atol=1e-5)  # padding is masked out of the mean
    raw = embed_texts(texts[1:2], model, tok, dev, max_length=32, normalize=False)
    import torch

    with torch.no_grad():
        states = model(**tok(texts[1:2], return_tensors="pt")).last_hidden_state[0]
    np.testing.assert_allclose(raw[0], states.mean(0).numpy(), atol=1e-5)


def test_text_embeddings_file_and_encoder_errors(tmp_path, tiny_encoder):
    from p2rec.baselines.text_init import load_encoder, text_embeddings

    items = write(tmp_path / "items.tsv", "item_id\ttext\n1\tred\n2\t\n3\tblue shoes\n")
    info = text_embeddings(items, 3, {"encoder": str(tiny_encoder), "max_length": 16, "normalize": True},
                           tmp_path / "emb.npy", tmp_path / "timing.json")
    table = np.load(tmp_path / "emb.npy")
    assert table.shape == (4, 32) and np.all(table[0] == 0) and info["items_with_text"] == 2
    with pytest.raises(P2RecError, match="config key 'text_init.encoder': model folder './nope' does not exist"):
        load_encoder("./nope")
    with pytest.raises(P2RecError, match="is not a model folder"):
        load_encoder(str(tmp_path))
    empty = write(tmp_path / "empty.tsv", "item_id\ttext\n1\t\n")
    with pytest.raises(P2RecError, match="empty.tsv: no item has text; text_init has nothing to embed"):
        text_embeddings(empty, 2, {"encoder": str(tiny_encoder), "max_length": 16, "normalize": True},
                        tmp_path / "none.npy")
    assert not (tmp_path / "none.npy").exists()


def test_packaged_encoder_is_located_without_download():
    from p2rec.baselines.text_init import packaged_encoder_folder

    try:
        folder = packaged_encoder_folder()
    except P2RecError as err:
        pytest.skip(str(err))
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 384 and any(folder.glob("*.safetensors"))


# ------------------------------------------------------------------------------------------------ workflow
def test_text_init_runs_in_the_synthetic_workflow(tmp_path, tiny_encoder):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["catalog"]["synthetic"]["synthetic"] = {"seed": 3, "users": 60, "items": 40, "categories": 4}
    config.update(datasets=["synthetic"], backbones=["sasrec"], variants=["none", "text_init"], seeds=[1],
                  train={"epochs": 2, "patience": 2, "batch_size": 32, "hidden": 16},
                  text_init={"encoder": str(tiny_encoder), "max_length": 16})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp_path / "work/main"
    n_items = json.loads((work / "data/synthetic/stats.json").read_text())["items"]
    texts = read_items(work / "data/synthetic/items.tsv", n_items)
    truth = dict(line.split(",") for line in (work / "data/synthetic/truth.tsv").read_text().splitlines()[1:])
    assert all(texts[int(i)] == f"an item of category {c}" for i, c in truth.items())
    table = np.load(work / "text_init/synthetic/item_init_d16.npy")
    assert table.shape == (n_items + 1, 16) and np.all(table[0] == 0)
    assert table[1:].std() == pytest.approx(0.02, rel=1e-3)
    run = work / "runs/synthetic/sasrec/text_init/seed1"
    assert json.loads((run / "metrics.json").read_text())["status"] == "ok"
    assert json.loads((run / "config.json").read_text())["item_init"].endswith("text_init/synthetic/item_init_d16.npy")
    provenance = json.loads((run / "provenance.json").read_text())
    assert {"items", "text_init", "reduce"} <= set(provenance["code_versions"])
    # an encoder setting reruns the embedding, the reduction and the text_init run only
    config["text_init"]["max_length"] = 12
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--quiet", "rules")
    jobs = {l.split()[0]: int(l.split()[1]) for l in proc.stdout.splitlines()
            if len(l.split()) == 2 and l.split()[1].isdigit() and l.split()[0] not in ("total", "job")}
    assert jobs.get("text_init_embed") == 1 and jobs.get("train_backbone") == 1, jobs
    assert not {"prepare_dataset", "prepare_items"} & set(jobs), jobs


# ------------------------------------------------------------------------------------------------ real files
@pytest.mark.realdata
def test_the_catalog_entries_prepare_item_text_from_the_standard_files(tmp_path):
    """The configured items_from of beauty, yelp and ml-1m on the standard files (read in place, never copied)."""
    from tests.conftest import require_standard_data

    data_dir = require_standard_data()
    catalog = yaml.safe_load((REPO / "config.yaml").read_text())["catalog"]
    expected = {"beauty": (12101, 6), "yelp": (20033, 21), "ml-1m": (3416, 18)}
    for name, (n_items, at_least) in expected.items():
        prepared = tmp_path / name
        write(prepared / "stats.json", json.dumps({"items": n_items}))
        write(prepared / "truth.tsv", "item,category\n")
        info = prepare_items(name, catalog[name], data_dir, prepared, prepared / "items.tsv", prepared / "cats.csv")
        texts = read_items(prepared / "items.tsv", n_items)
        assert info["items_with_text"] >= n_items - 1 and len(texts) == n_items + 1
        assert len(set(read_item_categories(prepared / "cats.csv").values())) >= at_least
    assert read_items(tmp_path / "ml-1m/items.tsv", 3416)[130] == "The Matrix (1999); genres: Action, Sci-Fi, Thriller"


@pytest.mark.slow
def test_the_packaged_minilm_embeds_without_download():
    from p2rec.baselines.text_init import embed_texts, load_encoder

    try:
        model, tok, dev = load_encoder("packaged", "cpu")
    except P2RecError as err:
        pytest.skip(str(err))
    emb = embed_texts(["a cat sits on the mat", "a kitten rests on a rug", "the stock market fell"], model, tok, dev)
    assert emb.shape == (3, 384)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.5 > 0.2 > sims[0, 2]
