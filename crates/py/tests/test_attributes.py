"""Attributes from Python: add_splats(..., attributes=...) from dicts of numpy arrays and lists, pandas
or pyarrow when installed; retrieve(..., filter=...) single and batch (ragged rows padded with NO_ID,
-inf); hits with their attributes; upsert; and the typed errors for bad attributes and filters."""

import json

import numpy as np
import pytest

import m2m

DIM = 16
N = 600


def vectors(n, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((10, DIM)).astype(np.float32)
    return (centres[rng.integers(0, 10, n)] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32)


def attributes(n):
    ids = np.arange(n)
    return {
        "label": (ids % 5).astype(np.int32),  # converted to int64
        "score": ids / 10.0,
        "flag": ids % 2 == 0,
        "tenant": [None if i % 7 == 0 else f"t{i % 3}" for i in range(n)],
        "tags": [["a"] if i % 2 else ["a", "b"] for i in range(n)],
        "doc": [{"n": int(i)} for i in range(n)],
    }


@pytest.fixture(scope="module")
def engine():
    e = m2m.create_m2m(dim=DIM, seed=3)
    ids = e.add_splats(vectors(N), attributes=attributes(N))
    assert list(ids) == list(range(N))
    e.build_index()
    return e


def test_schema_is_inferred_from_the_columns(engine):
    types = {f["name"]: f["type"] for f in engine.schema["fields"]}
    assert types == {
        "label": "label",
        "score": "float",
        "flag": "bool",
        "tenant": "keyword",
        "tags": "tags",
        "doc": "payload",
    }


def test_filtered_retrieval_only_returns_matches_and_exact_is_the_filtered_truth(engine):
    data = vectors(N)
    q = data[11]
    f = {"and": [{"eq": {"field": "label", "value": 2}}, {"range": {"field": "score", "gte": 10}}]}
    ok = {i for i in range(N) if i % 5 == 2 and i / 10.0 >= 10}
    for lod in (0, 1, 2, 3):
        hits = engine.retrieve(q, 10, lod, f)
        assert len(hits.ids) > 0
        assert set(int(i) for i in hits.ids) <= ok, lod
    # The exact filtered truth: every row's exact score, kept where the filter holds.
    everything = engine.retrieve(q, N, 3)
    truth = [int(i) for i in everything.ids if int(i) in ok][:10]
    assert [int(i) for i in engine.retrieve(q, 10, "exact", f).ids] == truth
    # Its text form works too.
    assert [int(i) for i in engine.retrieve(q, 10, 3, json.dumps(f)).ids] == truth


def test_a_batch_with_few_matches_is_padded(engine):
    data = vectors(N)
    # Three rows match: every query's row has 3 hits then padding.
    f = {"in": {"field": "score", "values": [0.5, 1.0, 59.9]}}
    hits = engine.retrieve(data[:4], 10, 3, f)
    assert hits.ids.shape == (4, 10) and hits.ids.dtype == np.uint64
    for row_ids, row_scores in zip(hits.ids, hits.scores):
        assert sorted(int(i) for i in row_ids[:3]) == [5, 10, 599]
        assert all(int(i) == m2m.NO_ID for i in row_ids[3:])
        assert np.all(np.isneginf(row_scores[3:])) and np.all(np.isfinite(row_scores[:3]))
    assert np.all(np.isnan(hits.kappa[:, 3:]))
    # No match at all: every row is padding.
    none = engine.retrieve(data[:2], 5, 2, {"eq": {"field": "label", "value": 99}})
    assert none.ids.shape == (2, 5) and all(int(i) == m2m.NO_ID for i in none.ids.reshape(-1))


def test_hits_carry_their_attributes(engine):
    data = vectors(N)
    hits = engine.retrieve(data[8], 5, 3, {"eq": {"field": "tenant", "value": "t2"}}, with_attributes=True)
    assert isinstance(hits, m2m.AttributedHits)
    for i, id_ in enumerate(hits.ids):
        id_ = int(id_)
        assert hits.attributes["tenant"][i] == "t2"
        assert hits.attributes["label"][i] == id_ % 5
        assert hits.attributes["tags"][i] == (["a"] if id_ % 2 else ["a", "b"])
        assert json.loads(hits.attributes["doc"][i]) == {"n": id_}
    batch = engine.retrieve(data[:3], 4, 3, {"in": {"field": "score", "values": [0.5, 1.0]}}, with_attributes=True)
    assert len(batch.attributes["label"]) == 3 and all(len(r) == 4 for r in batch.attributes["label"])
    # Padded hits have no attributes.
    assert all(r[2:] == [None, None] for r in batch.attributes["label"])
    assert engine.attributes([14, 10**9])["tenant"] == [None, None]


@pytest.mark.parametrize(
    "bad, what",
    [
        ({"eq": {"field": "colour", "value": 1}}, "colour"),
        ({"eq": {"field": "label", "value": "x"}}, "label"),
        ({"range": {"field": "tenant", "gte": 1}}, "tenant"),
        ({"eq": {"field": "label"}}, "filter"),
        ({"range": {"field": "score", "gte": float("nan")}}, "filter"),
        ([1, 2], "dict"),
    ],
)
def test_bad_filters_are_invalid_input(engine, bad, what):
    with pytest.raises(m2m.InvalidInputError, match=what):
        engine.retrieve(vectors(1)[0], 5, 2, bad)


@pytest.mark.parametrize("k", [0, -1, -(2**70), 2.5, True, "3", None])
def test_k_below_one_or_not_an_integer_is_invalid_input(engine, k):
    # k = -1 reached the native module as a built-in OverflowError; 2.5 as a TypeError.
    q = vectors(1)[0]
    if k is None:  # the default k (10) is fine
        assert len(engine.retrieve(q, k).ids) == 10
        return
    with pytest.raises(m2m.InvalidInputError, match="k must"):
        engine.retrieve(q, k)
    with pytest.raises(m2m.InvalidInputError, match="k must"):
        engine.retrieve_batch(vectors(2), k, 2, {"eq": {"field": "label", "value": 2}})


def test_filters_nested_thousands_deep_are_invalid_input(engine):
    deep = {"is_null": {"field": "label"}}
    for _ in range(5000):
        deep = {"not": deep}
    with pytest.raises(m2m.InvalidInputError):
        engine.retrieve(vectors(1)[0], 5, 2, deep)


@pytest.mark.parametrize(
    "bad, what",
    [
        ({"label": ["x"] * 4}, "label"),  # a keyword in the label field
        ({"colour": np.arange(4)}, "colour"),  # not in the schema
        ({"label": np.arange(3)}, "label"),  # three values for four rows
        ({"score": [1.0, float("nan"), 2.0, 3.0]}, "score"),
        ({"tenant": ["a", 1, "b", "c"]}, "tenant"),  # a str column with an int
        ({"tenant": ["a", "\ud800", "b", "c"]}, "UTF-8"),  # a lone surrogate is not UTF-8
        ({"tags": [["a"], ["b", 2], [], None]}, "tags"),
        ({"label": np.array([1, 2, 3, 2**63], dtype=np.uint64)}, "label"),
        ({"label": [1, 2, 3, 2**70]}, "label"),
        ({"label": np.zeros((4, 2), dtype=np.int64)}, "label"),
        # A string is not a column: it was split into one row per character and stored.
        ({"tenant": "abcd"}, "tenant"),
        ({"tenant": np.str_("abcd")}, "tenant"),
        ({"tenant": np.array("abcd")}, "tenant"),
        ({"doc": b"abcd"}, "doc"),
        ({"label": 3}, "label"),
    ],
)
def test_bad_attributes_are_invalid_input_and_store_nothing(engine, bad, what):
    before = len(engine)
    with pytest.raises(m2m.InvalidInputError, match=what):
        engine.add_splats(vectors(4, seed=9), attributes=bad)
    assert len(engine) == before


def test_an_all_none_column_is_refused_unless_the_schema_has_the_field():
    # It was left out of the inferred schema without a word, so a later add with values failed as an
    # unknown field.
    e = m2m.create_m2m(dim=DIM)
    with pytest.raises(m2m.InvalidInputError, match="note"):
        e.add_splats(vectors(4), attributes={"label": [1, 2, 3, 4], "note": [None] * 4})
    assert len(e) == 0 and e.schema is None
    e.add_splats(vectors(4), attributes={"label": [1, 2, 3, 4], "note": ["a", None, "b", None]})
    # The field exists now: a batch where it is all None gives nulls.
    ids = e.add_splats(vectors(2, seed=1), attributes={"label": [5, 6], "note": [None, None]})
    assert e.attributes(ids)["note"] == [None, None]
    assert e.attributes(ids)["label"] == [5, 6]


def test_upsert_replaces_vector_and_attributes(tmp_path):
    path = tmp_path / "db"
    e = m2m.create_m2m(m2m.M2MConfig(dim=DIM, data_dir=path, durable=False))
    data = vectors(300, seed=5)
    e.add_splats(data, attributes={"label": np.arange(300) % 3})
    e.build_index()
    new = vectors(2, seed=77)
    e.upsert(new, [7, 1000], attributes={"label": [9, 9]})
    assert len(e) == 301
    for row, id_ in zip(new, [7, 1000]):
        hits = e.retrieve(row, 1, 2)
        assert int(hits.ids[0]) == id_ and hits.scores[0] > 0.999
    assert e.attributes([7, 1000])["label"] == [9, 9]
    with pytest.raises(m2m.InvalidInputError):
        e.upsert(new[:1], [7], attributes={"label": ["x"]})
    assert e.attributes([7])["label"] == [9]
    e.close()
    e = m2m.open_m2m(path)
    assert [int(i) for i in e.retrieve(new[0], 1, 2, {"eq": {"field": "label", "value": 9}}).ids] == [7]
    e.close()


def test_pandas_and_pyarrow_tables_when_installed():
    pd = pytest.importorskip("pandas")
    e = m2m.create_m2m(dim=DIM)
    frame = pd.DataFrame({"label": [1, 2, 3], "name": ["a", "b", None]})
    e.add_splats(vectors(3), attributes=frame)
    assert e.attributes([0, 1, 2]) == {"label": [1, 2, 3], "name": ["a", "b", None]}


def test_the_lake_streams_labels_and_only_the_rows_a_filter_matches():
    # Python had neither: batches carried no label column and export_to_dataloader took no filter.
    e = m2m.create_m2m(dim=DIM, seed=3)
    labels = [None if i % 10 == 9 else i % 3 for i in range(N)]
    e.add_splats(vectors(N), attributes={"label": labels, "score": np.arange(N) / 10.0})
    seen = {}
    for batch in e.export_to_dataloader(batch_size=64):
        ids = np.asarray(batch["ids"]).view(np.uint64)
        for i, l, m in zip(ids, np.asarray(batch["labels"]), np.asarray(batch["label_mask"])):
            seen[int(i)] = int(l) if m else None
    assert seen == {i: labels[i] for i in range(N)}
    f = {"and": [{"eq": {"field": "label", "value": 1}}, {"range": {"field": "score", "lt": 40}}]}
    want = {i for i in range(N) if labels[i] == 1 and i / 10.0 < 40}
    ds = e.export_to_dataloader(batch_size=16, filter=f, epochs=2)
    got = []
    batches = 0
    for batch in ds:
        batches += 1
        got.extend(int(i) for i in np.asarray(batch["ids"]).view(np.uint64))
        assert (np.asarray(batch["labels"]) == 1).all() and np.asarray(batch["label_mask"]).all()
    assert sorted(got) == sorted(list(want) * 2)
    assert len(ds) == batches == 2 * -(-len(want) // 16)
    with pytest.raises(m2m.InvalidInputError, match="colour"):
        list(e.export_to_dataloader(batch_size=16, filter={"eq": {"field": "colour", "value": 1}}))
    with pytest.raises(m2m.InvalidInputError, match="filter"):
        e.export_to_dataloader(batch_size=16, filter=[1])
