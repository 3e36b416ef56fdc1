"""EMB/dist (Eq. 1) on a hand-built embedding table, the re-weighting coefficient (Eq. 6) and bands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.loader import resolve_model_path
from raysem.semantics.embedding import AnswerEmbedder, clip_distance, distance_band, reweight_coefficient

# Token ids of the embedded model's tokenizer (checked in test_token_ids_are_the_ones_the_table_uses).
PARIS, LONDON, SP_LONDON, NEW, YORK, RED = 38634, 21253, 4528, 5529, 2863, 455


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def embedder(tokenizer):
    table = torch.zeros(len(tokenizer), 2)
    table[PARIS] = torch.tensor([1.0, 0.0])
    table[LONDON] = torch.tensor([0.0, 1.0])
    table[SP_LONDON] = torch.tensor([1.0, 1.0])
    table[NEW] = torch.tensor([3.0, 4.0])
    table[YORK] = torch.tensor([1.0, 0.0])
    table[RED] = torch.tensor([-1.0, 0.0])
    return AnswerEmbedder(table, tokenizer)


def test_token_ids_are_the_ones_the_table_uses(tokenizer):
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    assert ids("Paris") == [PARIS] and ids("London") == [LONDON] and ids("red") == [RED]
    assert ids("Paris London") == [PARIS, SP_LONDON]
    assert ids("New York") == [NEW, YORK]


def test_emb_is_the_mean_of_input_embedding_rows(embedder):
    emb, empty = embedder.embed(["Paris", "Paris London", "New York"])
    assert emb.tolist() == [[1.0, 0.0], [1.0, 0.5], [2.0, 2.0]]
    assert not empty.any()


def test_distance_is_one_minus_cosine(embedder):
    answers = ["Paris", "Paris London", "New York", "New York", "red", "London"]
    targets = ["London", "Paris", "Paris", "London", "Paris", "London"]
    dist = embedder.distance(answers, targets)
    expected = [
        1.0,  # orthogonal rows
        1 - 1 / math.sqrt(1.25),  # cos([1, .5], [1, 0]) = 1/√1.25
        1 - 1 / math.sqrt(2),  # cos([2, 2], [1, 0])
        1 - 1 / math.sqrt(2),  # cos([2, 2], [0, 1])
        2.0,  # opposite rows: the raw value is kept, unclipped
        0.0,
    ]
    assert dist == pytest.approx(expected, abs=1e-12)
    assert dist.dtype == np.float64


def test_empty_answers_have_no_embedding_and_are_flagged(embedder):
    emb, empty = embedder.embed(["", "   ", "Paris"])
    assert empty.tolist() == [True, True, False]
    assert emb[:2].abs().sum().item() == 0.0
    dist = embedder.distance(["", "Paris", "London"], ["Paris", "", "Paris"])
    assert math.isnan(dist[0]) and math.isnan(dist[1]) and dist[2] == pytest.approx(1.0)
    assert int(np.isnan(dist).sum()) == 2


def test_distance_needs_one_target_per_answer(embedder):
    with pytest.raises(ValueError, match="2 answers but 1 targets"):
        embedder.distance(["Paris", "London"], ["Paris"])


def test_from_model_copy_snapshots_the_embeddings(tiny):
    live = AnswerEmbedder.from_model(tiny)
    snapshot = AnswerEmbedder.from_model(tiny, copy=True)
    before = snapshot.table.clone()
    with torch.no_grad():
        tiny.model.get_input_embeddings().weight.add_(1.0)
    assert torch.equal(snapshot.table, before)
    assert torch.equal(live.table, tiny.model.get_input_embeddings().weight)


@pytest.mark.parametrize(
    "dist, expected",
    [
        (0.0, 1.0),
        (0.5, 0.0),
        (1.0, 1.0),
        (0.25, 1 - math.cos(-math.pi / 4)),
        (-0.2, 1.0),  # clipped to 0
        (1.3, 1.0),  # clipped to 1
        (math.nan, 1.0),  # undefined (empty y_old) counts as the farthest
    ],
)
def test_reweight_coefficient(dist, expected):
    assert reweight_coefficient(dist) == pytest.approx(expected, abs=1e-12)


def test_clip_distance():
    assert clip_distance(-0.2) == 0.0
    assert clip_distance(1.3) == 1.0
    assert clip_distance(0.4) == 0.4
    assert math.isnan(clip_distance(math.nan))


@pytest.mark.parametrize(
    "dist, band",
    [
        (0.05, "none"),
        (0.1, "short"),
        (0.29, "short"),
        (0.3, "medium"),
        (0.59, "medium"),
        (0.6, "long"),
        (1.0, "long"),
        (1.2, "none"),
        (math.nan, "none"),
    ],
)
def test_distance_band(dist, band):
    assert distance_band(dist) == band
