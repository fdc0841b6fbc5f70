"""Stage 'prepare-items': a dataset's item text (``items.tsv``) and attribute categories (``item_categories.csv``).

Where the text comes from is declared in the dataset's catalog entry (docs/data.md, "Item text"):

* ``items``: a file ``item_id<TAB>text`` under ``data_dir``, validated by :func:`p2rec.data.items.read_items`;
* ``items_from``: the side information of a source, turned into text and one category per item:
  ``amazon-attributes`` (``<name>_item2attributes.json`` + ``attribute_id2name.json``: brand and category
  names), ``yelp-attributes`` (the same files: Yelp categories), ``movielens`` (``movies.dat``: title, year,
  genres, joined through ``item2movieid.json``), ``amazon-metadata`` (a dataset prepared from the Amazon review
  file: titles, brands and category paths from the 2014 metadata file, joined by ASIN, see ``p2rec.data.raw_items``);
* neither, for a ``synthetic`` dataset: text derived from the planted categories ("an item of category 3").

Ids are those of the prepared sequences; where preparation renumbered them (``item_map.csv`` beside
``sequences.txt``) the source's ids are mapped through it. An item the source does not describe gets
empty text. Nothing is written unless everything was read and checked.
"""
from __future__ import annotations

import collections
import html
import json
import re
from pathlib import Path

from p2rec import P2RecError
from p2rec.data.items import clean_text, format_items, read_item_map, read_items
from p2rec.io import read_json, write_text

#: catalog keys that declare item text; they never enter the identity of the sequence data (a run's lineage
#: and the prepare rule's params): adding item text to a dataset does not make its runs stale
ITEM_KEYS = ("items", "items_from")
FORMATS = ("amazon-attributes", "yelp-attributes", "movielens", "amazon-metadata")
#: an item's single category where the source gives several (docs/data.md): the first one listed (after the
#: brand, for Amazon: the top of the category path), the one shared by most items, or by fewest
CATEGORY_RULES = ("first", "most_common", "rarest")
DEFAULT_CATEGORY = {"amazon-attributes": "first", "yelp-attributes": "most_common", "movielens": "first",
                    "amazon-metadata": "first"}
CATEGORIES_HEADER = "item,category"


def has_item_text(entry: dict) -> bool:
    """Whether a catalog entry declares item text (or, synthetic, gets it from its planted categories)."""
    return bool(entry.get("items") or entry.get("items_from")) or entry.get("source") == "synthetic"


def items_entry(entry: dict) -> dict:
    """What ``prepare-items`` reads of a catalog entry: its source and its item keys (for ``amazon-metadata``,
    which rebuilds the ASIN map from the review file, the whole entry)."""
    if (entry.get("items_from") or {}).get("format") == "amazon-metadata":
        return dict(entry)
    return {"source": entry["source"], **{k: entry[k] for k in ITEM_KEYS if k in entry}}


def item_settings(entry: dict) -> dict:
    """What of a catalog entry shapes the item text (a rule param and part of a text variant's lineage)."""
    return {k: entry[k] for k in ITEM_KEYS if entry.get(k)} or {"source": entry.get("source")}


def _data_path(value: str, data_dir: str | Path, key: str, base: str = "data_dir") -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = Path(data_dir) / path
    if not path.exists():
        raise P2RecError(f"config key '{key}': file '{path}' not found (relative to {base} '{data_dir}')")
    if not path.is_file():
        raise P2RecError(f"config key '{key}': '{path}' is not a regular file")
    return path


def _json_object(path: Path, key: str) -> dict:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise P2RecError(f"{path}: not valid UTF-8 text (byte {err.start}); config key '{key}'") from None
    except OSError as err:
        raise P2RecError(f"{path}: cannot read ({err.strerror or err}); config key '{key}'") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise P2RecError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno}); config key '{key}'") from None
    if not isinstance(obj, dict):
        raise P2RecError(f"{path}: expected a JSON object {{id: ...}}, found {type(obj).__name__}; config key '{key}'")
    return obj


def _int_key(path: Path, key: str, what: str) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise P2RecError(f"{path}: key {key!r} is not an integer {what}") from None


def _attributes(spec: dict, data_dir, name: str) -> tuple[dict[int, list[str]], Path]:
    """``{item id: [attribute name, ...]}`` in the order the file lists them."""
    base = f"catalog.{name}.items_from"
    attr_path = _data_path(spec["attributes"], data_dir, f"{base}.attributes")
    names_path = _data_path(spec["names"], data_dir, f"{base}.names")
    names_raw = _json_object(names_path, f"{base}.names")
    names = {}
    for key, value in names_raw.items():
        if not isinstance(value, str):
            raise P2RecError(f"{names_path}: attribute {key!r}: expected a name (string), found {value!r}")
        names[_int_key(names_path, key, "attribute id")] = clean_text(html.unescape(value))
    out: dict[int, list[str]] = {}
    for key, ids in _json_object(attr_path, f"{base}.attributes").items():
        item = _int_key(attr_path, key, "item id")
        if not isinstance(ids, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in ids):
            raise P2RecError(f"{attr_path}: item {key!r}: expected a list of integer attribute ids, found {ids!r:.80}")
        missing = [a for a in ids if a not in names]
        if missing:
            raise P2RecError(f"{attr_path}: item {key!r}: attribute id {missing[0]} has no name in {names_path}")
        out[item] = [names[a] for a in ids if names[a]]  # an empty name (Beauty has one) says nothing
    return out, attr_path


def _pick(cats: list[str], rule: str, freq: collections.Counter) -> str | None:
    if not cats:
        return None
    if rule == "first":
        return cats[0]
    if rule == "most_common":  # ties: the name first in alphabetical order, so the choice is reproducible
        return min(cats, key=lambda c: (-freq[c], c))
    return min(cats, key=lambda c: (freq[c], c))


def _choose(cats: dict[int, list[str]], rule: str) -> dict[int, str]:
    freq = collections.Counter(c for values in cats.values() for c in set(values))
    chosen = {item: _pick(values, rule, freq) for item, values in cats.items()}
    return {item: c for item, c in chosen.items() if c is not None}


def from_amazon_attributes(spec: dict, data_dir, name: str) -> tuple[dict[int, str], dict[int, str], Path]:
    """Amazon (S3-Rec's ``item2attributes``): each item's brand, if any, then its category names.

    The files do not mark which attribute is the brand: S3-Rec lists the brand first, then the category
    path(s), so an attribute that is listed first somewhere and never at a later position is a brand."""
    attrs, path = _attributes(spec, data_dir, name)
    later = {a for values in attrs.values() for a in values[1:]}
    texts, cats = {}, {}
    for item, values in attrs.items():
        brand = values[0] if values and values[0] not in later else None
        categories = values[1:] if brand else values
        parts = ([f"brand: {brand}"] if brand else []) + ([f"categories: {', '.join(categories)}"] if categories else [])
        texts[item] = "; ".join(parts)
        cats[item] = categories
    return texts, _choose(cats, spec.get("category") or DEFAULT_CATEGORY["amazon-attributes"]), path


def from_yelp_attributes(spec: dict, data_dir, name: str) -> tuple[dict[int, str], dict[int, str], Path]:
    """Yelp (S3-Rec's ``item2attributes``): the business's category names."""
    attrs, path = _attributes(spec, data_dir, name)
    texts = {item: f"categories: {', '.join(values)}" if values else "" for item, values in attrs.items()}
    return texts, _choose(attrs, spec.get("category") or DEFAULT_CATEGORY["yelp-attributes"]), path


_ARTICLE = re.compile(r"^(?P<title>.*), (?P<article>The|A|An) (?P<year>\(\d{4}\))$")


def movie_title(title: str) -> str:
    """MovieLens writes 'American President, The (1995)': put the article back in front."""
    match = _ARTICLE.match(title)
    return f"{match['article']} {match['title']} {match['year']}" if match else title


def from_movielens(spec: dict, data_dir, name: str) -> tuple[dict[int, str], dict[int, str], Path]:
    """MovieLens-1M ``movies.dat`` (``MovieID::Title (Year)::Genre|Genre``, Latin-1 as GroupLens ships it; UTF-8
    is accepted too) joined to item ids through ``item_ids`` (JSON ``{item id: movie id}``)."""
    base = f"catalog.{name}.items_from"
    movies_path = _data_path(spec["movies"], data_dir, f"{base}.movies")
    ids_path = _data_path(spec["item_ids"], data_dir, f"{base}.item_ids")
    raw = movies_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # every byte is a Latin-1 character: never fails
    movies: dict[int, tuple[str, list[str], int]] = {}
    for line_no, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split("::")
        if len(fields) != 3:
            raise P2RecError(f"{movies_path}:{line_no}: expected MovieID::Title::Genres, found {len(fields)} "
                             f"field(s) ({line[:80]!r})")
        try:
            movie = int(fields[0])
        except ValueError:
            raise P2RecError(f"{movies_path}:{line_no}: {fields[0]!r} is not an integer movie id") from None
        if movie in movies:
            raise P2RecError(f"{movies_path}:{line_no}: duplicate movie {movie} (first on line {movies[movie][2]})")
        genres = [g.strip() for g in fields[2].split("|") if g.strip()]
        movies[movie] = (movie_title(clean_text(fields[1])), genres, line_no)
    texts, cats = {}, {}
    for key, movie in _json_object(ids_path, f"{base}.item_ids").items():
        item = _int_key(ids_path, key, "item id")
        if not isinstance(movie, int) or isinstance(movie, bool):
            raise P2RecError(f"{ids_path}: item {key!r}: expected an integer movie id, found {movie!r}")
        if movie not in movies:
            raise P2RecError(f"{ids_path}: item {key!r}: movie {movie} is not in {movies_path}")
        title, genres, _ = movies[movie]
        texts[item] = f"{title}; genres: {', '.join(genres)}" if genres else title
        cats[item] = genres
    return texts, _choose(cats, spec.get("category") or DEFAULT_CATEGORY["movielens"]), ids_path


def from_amazon_metadata(spec: dict, entry: dict, raw_dir, name: str, prepared: Path
                         ) -> tuple[dict[int, str], dict[int, str], Path]:
    """A dataset prepared from the Amazon 2014 review file: each item's title, brand and category path from the
    metadata file (``metadata``, relative to raw_dir like the review file), keyed by prepared item id.

    The root of the category paths (the dataset's own category, e.g. 'Beauty', which every product lists) says
    nothing and is left out; the first name after it is the item's category under the default rule."""
    from p2rec.data.raw_items import amazon_item_ids, read_amazon_metadata

    key = f"catalog.{name}.items_from.metadata"
    path = _data_path(spec["metadata"], raw_dir, key, base="raw_dir")
    ids = amazon_item_ids(entry, raw_dir, name, prepared / "sequences.txt")
    meta = read_amazon_metadata(path, set(ids))
    # the root: names every product that lists categories lists (a product without any does not clear it)
    listed = [set(m["categories"]) for m in meta.values() if m["categories"]]
    roots = set.intersection(*listed) if listed else set()
    texts, cats = {}, {}
    for asin, m in meta.items():
        categories = [c for c in dict.fromkeys(m["categories"]) if c not in roots]
        parts = ([m["title"]] if m["title"] else []) + ([f"brand: {m['brand']}"] if m["brand"] else []) \
            + ([f"categories: {', '.join(categories)}"] if categories else [])
        texts[ids[asin]] = "; ".join(parts)
        cats[ids[asin]] = categories
    return texts, _choose(cats, spec.get("category") or DEFAULT_CATEGORY["amazon-metadata"]), path


SOURCES = {"amazon-attributes": from_amazon_attributes, "yelp-attributes": from_yelp_attributes,
           "movielens": from_movielens}
#: the files each format reads (catalog.<name>.items_from.<key>; relative to data_dir, amazon-metadata's to raw_dir)
FORMAT_FILES = {"amazon-attributes": ("attributes", "names"), "yelp-attributes": ("attributes", "names"),
                "movielens": ("movies", "item_ids"), "amazon-metadata": ("metadata",)}


def _to_items(values: dict[int, str], num_items: int, id_map: dict[int, int] | None, path: Path) -> dict[int, str]:
    """Source ids -> item ids of the prepared data (through the item map where ids were renumbered)."""
    out = {}
    for raw, value in values.items():
        item = id_map.get(raw) if id_map is not None else raw
        if item is None:  # the source describes an item the prepared data does not have
            raise P2RecError(f"{path}: item id {raw} is not an item of the prepared data (not in its item map)")
        if not 1 <= item <= num_items:
            raise P2RecError(f"{path}: item id {raw} is outside 1..{num_items} (the items of the prepared sequences)")
        out[item] = value
    return out


def read_prepared_truth(path: Path) -> dict[int, str]:
    rows: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            item, _, cat = line.partition(",")
            rows[int(item)] = cat.strip()
    return rows


def prepare_items(name: str, entry: dict, data_dir: str | Path, prepared: str | Path, out_items: str | Path,
                  out_categories: str | Path, raw_dir: str | Path = "raw") -> dict:
    """Write the prepared ``items.tsv`` and ``item_categories.csv`` of one dataset; returns a summary.

    ``prepared`` is the dataset's prepared folder (``stats.json``, ``truth.tsv``, ``item_map.csv``, and
    ``sequences.txt``, which ``amazon-metadata`` checks its rebuilt ASIN map against)."""
    prepared = Path(prepared)
    try:
        stats = read_json(prepared / "stats.json")
        num_items = int(stats["items"])
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise P2RecError(f"{prepared / 'stats.json'}: cannot read the number of items ({err})") from None
    map_path = prepared / "item_map.csv"
    id_map = read_item_map(map_path) if map_path.exists() else None
    categories: dict[int, str] = {}
    if entry.get("items") and entry.get("items_from"):
        raise P2RecError(f"config key 'catalog.{name}': set either 'items' or 'items_from', not both")
    if entry.get("items"):
        path = _data_path(entry["items"], data_dir, f"catalog.{name}.items")
        texts = read_items(path, num_items, id_map=id_map)
        source = str(path)
    elif entry.get("items_from"):
        spec = entry["items_from"]
        fmt = spec.get("format")
        if fmt not in FORMATS:
            raise P2RecError(f"config key 'catalog.{name}.items_from.format': unknown format {fmt!r} "
                             f"(known: {', '.join(FORMATS)})")
        missing = [k for k in FORMAT_FILES[fmt] if not spec.get(k)]
        if missing:
            raise P2RecError(f"config key 'catalog.{name}.items_from.{missing[0]}': format '{fmt}' needs "
                             f"{' and '.join(FORMAT_FILES[fmt])}")
        rule = spec.get("category")
        if rule is not None and rule not in CATEGORY_RULES:
            raise P2RecError(f"config key 'catalog.{name}.items_from.category': unknown rule {rule!r} "
                             f"(known: {', '.join(CATEGORY_RULES)})")
        if fmt == "amazon-metadata":  # keyed by prepared item id already (joined by ASIN)
            by_source, cats_by_source, path = from_amazon_metadata(spec, entry, raw_dir, name, prepared)
            id_map = None
        else:
            by_source, cats_by_source, path = SOURCES[fmt](spec, data_dir, name)
        texts = [""] * (num_items + 1)
        for item, text in _to_items(by_source, num_items, id_map, path).items():
            texts[item] = clean_text(text)
        categories = _to_items(cats_by_source, num_items, id_map, path)
        source = fmt
    elif entry.get("source") == "synthetic":
        truth = read_prepared_truth(prepared / "truth.tsv")
        texts = [""] * (num_items + 1)
        for item, cat in truth.items():
            if 1 <= item <= num_items:
                texts[item] = f"an item of category {cat}"
        source = "synthetic (planted categories)"
    else:
        raise P2RecError(f"dataset '{name}' has no item text: set config key 'catalog.{name}.items' (a file "
                         f"item_id<TAB>text under data_dir) or 'catalog.{name}.items_from' (docs/data.md)")
    # everything is read and checked: only now write (each file through a temporary name)
    write_text(out_items, format_items(texts))
    write_text(out_categories, CATEGORIES_HEADER + "\n"
               + "".join(f"{i},{_csv_field(categories[i])}\n" for i in sorted(categories)))
    with_text = sum(1 for t in texts[1:] if t)
    return {"dataset": name, "source": source, "items": num_items, "items_with_text": with_text,
            "items_with_category": len(categories), "categories": len(set(categories.values())),
            "renumbered": id_map is not None}


def _csv_field(value: str) -> str:
    """A category name as one CSV field (names such as 'Creams, Gels & Lotions' hold commas)."""
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value
