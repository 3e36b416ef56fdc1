"""Dataset loaders: real files, hand-written fixtures, malformed input, name resolution and the ``data show`` CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raysem.cli.data import data_app
from raysem.data import datasets
from raysem.data.datasets import IncompleteRecordWarning, SkippedRecordWarning, load_facts
from raysem.data.facts import DatasetError

from conftest import SHARED_DATA

FIXTURES = Path(__file__).parents[1] / "fixtures"
SHARED = SHARED_DATA
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real dataset copies not found at {SHARED} (set RAYSEM_DATA)"
)

ZSRE_RECORD = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": " unmanned aircraft",
    "answers": ["uniform", "uniforms"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
    "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
}
CF_MEND_RECORD = {
    "case_id": 0,
    "prompt": "The mother tongue of Danielle Darrieux is",
    "target_new": "English",
    "subject": "Danielle Darrieux",
    "ground_truth": "French",
    "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
    "locality_prompt": "Michel Rocard is a native speaker of",
    "locality_ground_truth": "French",
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAYSEM_DATA", raising=False)


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def zsre_records(n: int = 3) -> list[dict]:
    return [dict(copy.deepcopy(ZSRE_RECORD), subject=f"S{i}") for i in range(n)]


# ------------------------------------------------------------------ real files


@needs_shared
@pytest.mark.parametrize(
    ("relpath", "count", "fmt"),
    [
        ("zsre/zsre_mend_eval_1037.json", 1037, "zsre-mend"),
        ("counterfact/counterfact-edit.json", 10000, "counterfact-mend"),
        ("counterfact/counterfact-val.json", 1919, "counterfact-mend"),
    ],
)
def test_real_files_load_completely(relpath, count, fmt):
    path = SHARED / relpath
    facts = load_facts(path)
    assert len(facts) == count
    assert facts.format == fmt
    assert facts.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len({f.id for f in facts.facts}) == count
    assert all(f.target and f.target == f.target.strip() for f in facts.facts)


@needs_shared
def test_zsre_train_file_has_two_empty_targets_that_fail_loudly():
    path = SHARED / "zsre/zsre_mend_train_1000.json"
    raw = json.loads(path.read_text())
    empty = [i for i, r in enumerate(raw) if not r["alt"].strip()]
    assert len(raw) == 1000 and empty
    with pytest.raises(DatasetError) as err:
        load_facts(path)
    assert str(path) in str(err.value) and f"record {empty[0]}:" in str(err.value) and "'alt'" in str(err.value)
    with pytest.warns(SkippedRecordWarning) as caught:
        facts = load_facts(path, skip_invalid=True)
    assert len(facts) + len(empty) == 1000
    message = str(caught[0].message)
    assert all(f"record {i}:" in message for i in empty)


@needs_shared
def test_zsre_mapping_matches_the_raw_record():
    path = SHARED / "zsre/zsre_mend_eval_1037.json"
    raw = json.loads(path.read_text())
    facts = load_facts(path).facts
    for i in (0, 26, 1036):
        r, f = raw[i], facts[i]
        assert f.id == f"zsre_mend_eval_1037:{i}"
        assert (f.prompt, f.target, f.true_answer, f.subject) == (
            r["src"],
            r["alt"].strip(),
            r["answers"][0],
            r["subject"],
        )
        assert f.rephrasings == (r["rephrase"],)
        assert f.locality[0].prompt == r["loc"].removeprefix("nq question: ")
        assert f.locality[0].answer == r["loc_ans"]
        assert f.portability[0].prompt == r["portability"]["New Question"]
        assert f.portability[0].answer == r["portability"]["New Answer"]
        assert f.split == "eval"


@needs_shared
def test_counterfact_mapping_matches_the_raw_record():
    path = SHARED / "counterfact/counterfact-val.json"
    r = json.loads(path.read_text())[5]
    f = load_facts(path).facts[5]
    assert f.id == f"counterfact-val:{r['case_id']}"
    assert (f.prompt, f.target, f.true_answer) == (r["prompt"], r["target_new"], r["ground_truth"])
    assert f.rephrasings == (r["rephrase_prompt"].strip(),)
    assert (f.locality[0].prompt, f.locality[0].answer) == (r["locality_prompt"], r["locality_ground_truth"])


@needs_shared
def test_names_resolve_to_the_shared_copies():
    zsre = load_facts("zsre", limit=4)
    assert zsre.name == "zsre" and len(zsre) == 4 and zsre.facts[0].id == "zsre:0"
    assert zsre.sha256 == hashlib.sha256((SHARED / "zsre/zsre_mend_eval_1037.json").read_bytes()).hexdigest()
    cf = load_facts("counterfact")
    assert cf.format == "counterfact-mend" and len(cf) == 10000


# ------------------------------------------------------------------ fixtures


def test_rome_fixture_mapping():
    raw = json.loads((FIXTURES / "counterfact_rome_small.json").read_text())
    facts = load_facts(FIXTURES / "counterfact_rome_small.json")
    assert facts.format == "counterfact-rome" and len(facts) == 3
    f = facts.facts[0]
    assert f.id == "counterfact_rome_small:0"
    assert f.prompt == "The mother tongue of Danielle Darrieux is"
    assert (f.target, f.true_answer, f.subject, f.relation) == ("English", "French", "Danielle Darrieux", "P103")
    assert f.rephrasings == tuple(raw[0]["paraphrase_prompts"])
    assert [p.prompt for p in f.locality] == raw[0]["neighborhood_prompts"]
    assert {p.answer for p in f.locality} == {"French"}
    assert facts.facts[1].prompt == "Edwin of Northumbria is a professional"
    assert facts.facts[2].id == "counterfact_rome_small:7"
    assert facts.facts[2].prompt == "Mount Erebus, which is located in"


def test_knowedit_fixture_mapping():
    facts = load_facts(FIXTURES / "knowedit_small.json").facts
    zsre, wiki_cf, recent = facts
    assert load_facts(FIXTURES / "knowedit_small.json").format == "knowedit"
    assert (zsre.target, zsre.true_answer, zsre.subject) == ("Noctuidae", "Aspidoceratidae", "Epaspidoceras")
    assert zsre.rephrasings == ("What family are Epaspidoceras?",)
    assert [(p.prompt, p.answer) for p in zsre.locality] == [
        ("The taxon rank of Epaspidoceras is", "genus"),
        ("Epaspidoceras taxon rank", "genus"),
    ]
    assert zsre.portability[0].answer == "Owlet moths"
    assert wiki_cf.true_answer == "mayor of Vienna" and wiki_cf.rephrasings == ()
    assert [p.answer for p in wiki_cf.locality] == ["male", "mayor of Vienna"]
    assert wiki_cf.portability[0].answer == "Archbishop of León, Mexico"
    assert recent.true_answer is None
    assert [p.answer for p in recent.portability] == ["no", "Europe"]
    assert recent.locality[0].answer == "Albert Arons"
    assert [f.id for f in facts] == ["knowedit_small:0", "knowedit_small:1", "knowedit_small:2"]


def test_mend_formats_are_detected(tmp_path):
    assert load_facts(write_json(tmp_path / "a.json", zsre_records())).format == "zsre-mend"
    cf = load_facts(write_json(tmp_path / "b-val.json", [CF_MEND_RECORD]))
    assert cf.format == "counterfact-mend" and cf.facts[0].split == "val"


def test_limit_and_name_override(tmp_path):
    path = write_json(tmp_path / "z.json", zsre_records(5))
    facts = load_facts(path, limit=2, name="mine")
    assert [f.id for f in facts.facts] == ["mine:0", "mine:1"]
    assert facts.facts[0].target == "unmanned aircraft"


# ------------------------------------------------------------------ malformed input


def test_truncated_json_names_file_and_record(tmp_path):
    records = zsre_records(3)
    text = json.dumps(records[:2])[:-1] + ", " + json.dumps(records[2])[:40]
    path = tmp_path / "truncated.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as err:
        load_facts(path)
    assert str(path) in str(err.value) and "record 2:" in str(err.value) and "truncated" in str(err.value)


def test_record_without_target(tmp_path):
    records = zsre_records()
    del records[1]["alt"]
    path = write_json(tmp_path / "notarget.json", records)
    with pytest.raises(DatasetError, match=r"record 1: field 'alt': missing") as err:
        load_facts(path)
    assert str(path) in str(err.value)


def test_rome_record_without_target(tmp_path):
    records = json.loads((FIXTURES / "counterfact_rome_small.json").read_text())
    del records[2]["requested_rewrite"]["target_new"]["str"]
    with pytest.raises(DatasetError, match=r"record 2: field 'requested_rewrite\.target_new\.str': missing"):
        load_facts(write_json(tmp_path / "rome.json", records))


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_target(tmp_path, empty):
    records = [dict(CF_MEND_RECORD, case_id=i) for i in range(3)]
    records[2]["target_new"] = empty
    path = write_json(tmp_path / "empty.json", records)
    with pytest.raises(DatasetError) as err:
        load_facts(path)
    message = str(err.value)
    assert str(path) in message and "record 2:" in message and "'target_new'" in message and "empty" in message


def test_wrong_type_names_field_and_value(tmp_path):
    records = zsre_records()
    records[0]["src"] = 42
    with pytest.raises(DatasetError, match=r"record 0: field 'src': expected a string, got number \(value: 42\)"):
        load_facts(write_json(tmp_path / "t.json", records))


def test_nested_knowedit_field_is_named(tmp_path):
    records = json.loads((FIXTURES / "knowedit_small.json").read_text())
    records[1]["portability"]["Subject_Aliasing"][0]["ground_truth"] = [[], [" "]]
    with pytest.raises(
        DatasetError, match=r"record 1: field 'portability\.Subject_Aliasing\[0\]\.ground_truth': holds no answer"
    ):
        load_facts(write_json(tmp_path / "k.json", records))


def probe(prompt: str, ground_truth) -> dict:
    return {"prompt": prompt, "ground_truth": ground_truth}


# One record shaped like each of KnowEdit's knowledge insertion and modification splits, with the blanks the
# published files have in fields no metric reads (locality ground truths nested empty, a missing subject).
KNOWEDIT_SPLITS = {
    "wiki_recent": {
        "subject": "Leo Arons",
        "prompt": "The place of death of Leo Arons is",
        "target_new": "Berlin",
        "portability": {
            "Reasoning": [
                probe("The continent of the place of death of Leo Arons is", [[], ["Europe", "Old Continent"]])
            ],
            "Logical_Generalization": [],
        },
        "locality": {
            "Relation_Specificity": [probe(f"Fact {i} of Leo Arons is", [["x"]]) for i in range(7)]
            + [probe("The father of Leo Arons is", [[]]), probe("The field of Leo Arons is", [])]
        },
    },
    "zsre": {
        "subject": "Epaspidoceras",
        "target_new": "Noctuidae",
        "prompt": "Which family does Epaspidoceras belong to?",
        "ground_truth": [[]],
        "rephrase_prompt": "What family are Epaspidoceras?",
        "locality": {
            "Relation_Specificity": [
                probe("The taxon rank of Epaspidoceras is", [""]),
                probe("Epaspidoceras taxon rank", {}),
            ]
        },
        "portability": {"Reasoning": [probe("What is the common name of that family?", "Owlet moths")]},
    },
    "wiki_counterfact": {
        "prompt": "The position held by Frederic Piesch is",
        "target_new": "Archbishop of León",
        "ground_truth": "",
        "portability": {},
        "locality": {
            "Relation_Specificity": [probe("The gender of Frederic Piesch is", "male")],
            "Forgetfulness": [{"prompt": "The position held by Frederic Piesch, which is not that, is"}],
        },
    },
    "wikibio": {
        "text": "This is a Wikipedia passage about john russell reynolds.",
        "labels": "He was educated in London.",
        "concept": "john russell reynolds",
        "locality": {"Relation_Specificity": [probe("The field of work of john russell reynolds is", [[""], []])]},
    },
}


@pytest.mark.parametrize(
    ("split", "fmt", "warned"),
    [
        ("wiki_recent", "knowedit", ["2 locality probe(s) in 1 record(s) have an empty or missing ground_truth"]),
        (
            "zsre",
            "knowedit",
            [
                "2 locality probe(s) in 1 record(s) have an empty or missing ground_truth",
                "1 record(s) have an empty or missing ground_truth; no metric reads the true answer",
            ],
        ),
        (
            "wiki_counterfact",
            "knowedit",
            [
                "1 locality probe(s) in 1 record(s) have an empty or missing ground_truth",
                "1 record(s) have an empty or missing subject",
                "1 record(s) have an empty or missing ground_truth; no metric reads the true answer",
            ],
        ),
        ("wikibio", "knowedit-wikibio", ["1 locality probe(s) in 1 record(s) have an empty or missing ground_truth"]),
    ],
)
def test_every_knowedit_split_loads_with_its_unread_blanks_counted(tmp_path, split, fmt, warned):
    """Nested empty lists and objects in fields no metric reads load, with one warning per field and its counts."""
    path = write_json(tmp_path / f"{split}.json", [KNOWEDIT_SPLITS[split]])
    with pytest.warns(IncompleteRecordWarning) as caught:
        facts = load_facts(path)
    assert facts.format == fmt and len(facts.facts) == 1
    messages = sorted(str(w.message).removeprefix(f"{path}: ") for w in caught)
    assert len(messages) == len(warned) and all(any(m.startswith(w) for m in messages) for w in warned), messages
    fact = facts.facts[0]
    blanks = sum(p.answer == "" for p in fact.locality)
    assert blanks == int(warned[0].split()[0]) and all(p.prompt for p in fact.locality)
    if split == "wiki_recent":
        assert len(fact.locality) == 9 and [p.answer for p in fact.portability] == ["Europe"]
    if split == "wikibio":
        assert (fact.prompt, fact.target, fact.subject) == (
            "This is a Wikipedia passage about john russell reynolds.",
            "He was educated in London.",
            "john russell reynolds",
        )


@pytest.mark.parametrize(
    ("split", "keys", "field"),
    [
        ("wiki_recent", ("portability", "Reasoning", 0, "ground_truth"), "portability.Reasoning[0].ground_truth"),
        ("zsre", ("rephrase_prompt",), "rephrase_prompt"),
        (
            "wiki_counterfact",
            ("locality", "Relation_Specificity", 0, "prompt"),
            "locality.Relation_Specificity[0].prompt",
        ),
        ("wikibio", ("labels",), "labels"),
    ],
)
def test_a_blank_field_a_metric_reads_is_refused_in_every_knowedit_split(tmp_path, split, keys, field):
    record = json.loads(json.dumps(KNOWEDIT_SPLITS[split]))
    node = record
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = [[]] if keys[-1] == "ground_truth" else ""
    with pytest.raises(DatasetError, match=rf"record 0: field '{re.escape(field)}': (is empty|holds no answer)"):
        load_facts(write_json(tmp_path / f"{split}.json", [record]))


def knowedit_records() -> list[dict]:
    return json.loads((FIXTURES / "knowedit_small.json").read_text())


@pytest.mark.parametrize("blank", ["", "  ", None])
def test_knowedit_locality_probe_without_ground_truth_loads_with_one_warning(tmp_path, blank):
    records = knowedit_records()
    probe = records[1]["locality"]["Forgetfulness"][0]
    if blank is None:
        del probe["ground_truth"]
    else:
        probe["ground_truth"] = blank
    path = write_json(tmp_path / "knowedit_x.json", records)
    with pytest.warns(IncompleteRecordWarning) as caught:
        facts = load_facts(path).facts
    assert len(facts) == 3
    assert [(p.prompt, p.answer) for p in facts[1].locality] == [
        ("The gender of Frederic Piesch is", "male"),
        (probe["prompt"], ""),
    ]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{path}: 1 locality probe(s) in 1 record(s) have an empty or missing ground_truth;")
    assert "Eq. 8" in message


def test_blank_fields_are_counted_in_one_warning_per_field(tmp_path):
    records = knowedit_records()
    for record in records[:2]:
        for probe in record["locality"]["Relation_Specificity"]:
            probe["ground_truth"] = ""
    records[0]["subject"] = ""
    with pytest.warns(IncompleteRecordWarning) as caught:
        facts = load_facts(write_json(tmp_path / "k.json", records)).facts
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert any("3 locality probe(s) in 2 record(s) have an empty or missing ground_truth;" in m for m in messages)
    assert any("1 record(s) have an empty or missing subject; no metric reads the subject" in m for m in messages)
    assert facts[0].subject == ""


def test_mend_formats_accept_blank_fields_no_metric_reads(tmp_path):
    zsre = zsre_records()
    zsre[0]["loc_ans"], zsre[1]["answers"], zsre[2]["subject"] = "", [""], " "
    with pytest.warns(IncompleteRecordWarning) as caught:
        facts = load_facts(write_json(tmp_path / "z.json", zsre)).facts
    assert (facts[0].locality[0].answer, facts[1].true_answer, facts[2].subject) == ("", None, "")
    assert len(caught) == 3 and all("1 record(s)" in str(w.message) for w in caught)
    cf = dict(CF_MEND_RECORD)
    del cf["locality_ground_truth"], cf["ground_truth"]
    with pytest.warns(IncompleteRecordWarning) as caught:
        fact = load_facts(write_json(tmp_path / "cf.json", [cf])).facts[0]
    assert (fact.locality[0].answer, fact.true_answer) == ("", None)
    assert sorted(str(w.message).split(": ", 1)[1].split(";")[0] for w in caught) == [
        "1 locality probe(s) in 1 record(s) have an empty or missing locality_ground_truth",
        "1 record(s) have an empty or missing ground_truth",
    ]


def test_rome_blank_true_answer_blanks_the_neighborhood_answers(tmp_path):
    records = json.loads((FIXTURES / "counterfact_rome_small.json").read_text())
    records[0]["requested_rewrite"]["target_true"]["str"] = ""
    blank = r"1 record\(s\) have an empty or missing requested_rewrite\.target_true\.str"
    with pytest.warns(IncompleteRecordWarning, match=blank):
        fact = load_facts(write_json(tmp_path / "rome.json", records)).facts[0]
    assert fact.true_answer is None and {p.answer for p in fact.locality} == {""}


def test_skipped_records_are_not_counted_as_blank(tmp_path):
    records = knowedit_records()
    records[0]["locality"]["Relation_Specificity"][0]["ground_truth"] = ""
    records[0]["target_new"] = ""
    records[1]["locality"]["Forgetfulness"][0]["ground_truth"] = ""
    with pytest.warns(UserWarning) as caught:
        facts = load_facts(write_json(tmp_path / "k.json", records), skip_invalid=True).facts
    assert len(facts) == 2
    blank = [str(w.message) for w in caught if isinstance(w.message, IncompleteRecordWarning)]
    assert len(blank) == 1 and "1 locality probe(s) in 1 record(s)" in blank[0]


@pytest.mark.parametrize(
    ("field", "keys"),
    [
        ("target_new", ("target_new",)),
        ("portability.Subject_Aliasing[0].ground_truth", ("portability", "Subject_Aliasing", 0, "ground_truth")),
        ("locality.Forgetfulness[0].prompt", ("locality", "Forgetfulness", 0, "prompt")),
    ],
)
def test_knowedit_fields_metrics_read_must_not_be_empty(tmp_path, field, keys):
    records = knowedit_records()
    node = records[1]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = ""
    path = write_json(tmp_path / "k.json", records)
    with pytest.raises(DatasetError) as err:
        load_facts(path)
    assert str(err.value) == f"{path}: record 1: field '{field}': is empty (value: \"\")"


def test_zsre_portability_answer_must_not_be_empty(tmp_path):
    records = zsre_records()
    records[2]["portability"] = {"New Question": "Who makes uniforms?", "New Answer": ""}
    with pytest.raises(DatasetError, match=r"record 2: field 'portability\.New Answer': is empty"):
        load_facts(write_json(tmp_path / "z.json", records))


def test_non_list_top_level_and_empty_list(tmp_path):
    with pytest.raises(DatasetError, match="top level must be a JSON list"):
        load_facts(write_json(tmp_path / "obj.json", {"data": []}))
    with pytest.raises(DatasetError, match="no records"):
        load_facts(write_json(tmp_path / "empty.json", []))


def test_unknown_format_lists_formats_and_keys(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_facts(write_json(tmp_path / "odd.json", [{"question": "q", "answer": "a"}]))
    message = str(err.value)
    assert "answer, question" in message
    assert all(fmt in message for fmt in ("zsre-mend", "counterfact-mend", "counterfact-rome", "knowedit"))


def test_duplicate_case_id(tmp_path):
    with pytest.raises(DatasetError, match=r"record 1: field 'case_id': duplicate"):
        load_facts(write_json(tmp_path / "dup.json", [CF_MEND_RECORD, CF_MEND_RECORD]))


def test_unknown_dataset_name_lists_accepted_names():
    with pytest.raises(DatasetError) as err:
        load_facts("zsre-full")
    assert "zsre-full" in str(err.value)
    assert all(n in str(err.value) for n in ("zsre", "counterfact", "knowedit", "worldfacts"))


# ------------------------------------------------------------------ name resolution


def test_raysem_data_env_takes_precedence(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "zsre").mkdir(parents=True)
    write_json(root / "zsre" / "zsre_mend_eval_1037.json", zsre_records(2))
    monkeypatch.setenv("RAYSEM_DATA", str(root))
    facts = load_facts("zsre")
    assert len(facts) == 2 and facts.name == "zsre"


def test_cache_is_the_last_resort(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "repo_root", lambda: None)
    with pytest.raises(DatasetError, match="raysem data fetch counterfact"):
        load_facts("counterfact")
    rome = tmp_path / "home" / "data" / "counterfact" / "counterfact.json"
    rome.parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "counterfact_rome_small.json", rome)
    facts = load_facts("counterfact")
    assert facts.format == "counterfact-rome" and facts.facts[0].id == "counterfact:0"


def test_knowedit_needs_a_path_or_a_single_file(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="pass the path"):
        load_facts("knowedit")
    root = tmp_path / "data"
    (root / "knowedit").mkdir(parents=True)
    shutil.copy(FIXTURES / "knowedit_small.json", root / "knowedit" / "ZsRE-test-all.json")
    monkeypatch.setenv("RAYSEM_DATA", str(root))
    facts = load_facts("knowedit")
    assert facts.format == "knowedit" and facts.facts[0].id == "knowedit:0" and facts.facts[0].split == "test"


# ------------------------------------------------------------------ CLI


def test_cli_show_json_is_one_object():
    result = CliRunner().invoke(data_app, ["show", str(FIXTURES / "knowedit_small.json"), "--json", "--limit", "2"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["count"] == 2 and payload["format"] == "knowedit"
    assert payload["sample"][1]["true_answer"] == "mayor of Vienna"


def test_cli_show_path_overrides_named_file():
    result = CliRunner().invoke(
        data_app, ["show", "counterfact", "--path", str(FIXTURES / "counterfact_rome_small.json"), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["format"] == "counterfact-rome" and payload["sample"][0]["id"] == "counterfact:0"


def test_cli_show_table_mentions_count_and_format():
    result = CliRunner().invoke(data_app, ["show", str(FIXTURES / "counterfact_rome_small.json")])
    assert result.exit_code == 0
    assert "3 facts" in result.stdout and "counterfact-rome" in result.stdout


def test_cli_show_loads_a_knowedit_file_with_an_empty_locality_answer(tmp_path):
    records = knowedit_records()
    records[0]["locality"]["Relation_Specificity"][1]["ground_truth"] = ""
    result = CliRunner().invoke(data_app, ["show", str(write_json(tmp_path / "knowedit_x.json", records)), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["count"] == 3
    assert "warning: " in result.stderr and "1 locality probe(s) in 1 record(s)" in result.stderr


def test_cli_show_errors_exit_2_without_traceback(tmp_path):
    records = zsre_records()
    records[1]["alt"] = ""
    path = write_json(tmp_path / "bad.json", records)
    result = CliRunner().invoke(data_app, ["show", str(path)])
    assert result.exit_code == 2
    assert "record 1" in result.stderr and "'alt'" in result.stderr and "Traceback" not in result.stderr
    result = CliRunner().invoke(data_app, ["show", "nonsense"])
    assert result.exit_code == 2 and "worldfacts" in result.stderr
