"""Data: readers and their errors, loaders and fallbacks, exact view strings, dataset, collator."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from npo_lib.data.dataset import UnlearningDataset, ViewCollator
from npo_lib.data.records import read_idk_cot, read_lines, read_records
from npo_lib.data.sources import (
    load_eval_set,
    load_file,
    load_forget,
    load_idk,
    load_idk_cot,
    load_perturbed,
    load_retain,
)
from npo_lib.data.views import IGNORE_INDEX, VIEWS, encode_records, encode_view, view_text
from npo_lib.errors import DataError
from npo_lib.models.families import FAMILIES

TINY = FAMILIES["tiny"].tags
R1 = FAMILIES["llama3-8b"].tags
LLAMA2 = FAMILIES["llama2-7b"].tags
TS, TE = "<think>\n", "\n</think>\n\n"


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _rec(i: int, task: str | None = None, **extra) -> dict:
    r = {"question": f"Who wrote book {i}?", "answer": f"Author {i} wrote it.", "cot": f"Think {i}"}
    if task is not None:
        r["task_id"] = task
    return {**r, **extra}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small R-TOFU-layout folder: forget01 with tasks 1-2, full, perturbed sets, idk files."""
    forget = [_rec(i, task="1" if i < 3 else "2") for i in range(6)]
    _write_jsonl(tmp_path / "forget01.json", forget)
    _write_jsonl(tmp_path / "full.json", [_rec(i) for i in range(20)])
    pert = {"paraphrased_answer": "p", "perturbed_answer": ["x", "y"]}
    _write_jsonl(tmp_path / "forget01_perturbed.json", [{**r, **pert} for r in forget])
    _write_jsonl(tmp_path / "retain_perturbed.json", [_rec(i, **pert) for i in range(10, 14)])
    (tmp_path / "idontknow.jsonl").write_text('I don\'t know.\n\n  No idea.  \n"Not sure."')
    (tmp_path / "idkcot.jsonl").write_text("\n".join(json.dumps(f"hedge {i}") for i in range(6)))
    return tmp_path


def _decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def _split(tok, enc: dict) -> tuple[str, str]:
    n = enc["prompt_len"]
    return _decode(tok, enc["input_ids"][:n]), _decode(tok, enc["input_ids"][n:])


# ----------------------------------------------------------------------------- readers


def test_read_records_json_lines_and_array(tmp_path):
    lines = _write_jsonl(tmp_path / "a.json", [_rec(0), _rec(1)])
    array = tmp_path / "b.json"
    array.write_text(json.dumps([_rec(0), _rec(1)], indent=2))
    assert read_records(lines) == read_records(array) == [_rec(0), _rec(1)]


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(_rec(0)) + "\n\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"f\.json, line 3: record has no field 'answer'"):
        read_records(path)
    array = tmp_path / "g.json"
    array.write_text(json.dumps([_rec(0), {"answer": "a"}]))
    with pytest.raises(DataError, match=r"g\.json, record 2: record has no field 'question'"):
        read_records(array)


def test_unparsable_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_rec(0)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.json, line 2: not valid JSON"):
        read_records(path)


def test_read_lines_and_idk_cot(tmp_path):
    idk = tmp_path / "idontknow.jsonl"
    idk.write_text('plain line\n\n"a JSON string"\n  padded  ')
    assert read_lines(idk) == ["plain line", "a JSON string", "padded"]
    cot = tmp_path / "idkcot.jsonl"
    cot.write_text(json.dumps("line\none") + "\nraw text, not JSON\n")
    assert read_idk_cot(cot) == ["line\none", "raw text, not JSON"]


# ----------------------------------------------------------------------------- sources


def test_missing_file_names_path_and_lists_files(folder):
    with pytest.raises(DataError, match=r"forget10\.json.*holds: .*forget01\.json"):
        load_file(str(folder), "forget10")
    with pytest.raises(DataError, match="data folder not found"):
        load_file(str(folder / "nope"), "forget01")
    with pytest.raises(DataError, match="must be a folder"):
        load_file(str(folder / "full.json"), "forget01")


def test_hub_id_offline_says_pass_data_path(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"locuslab/TOFU.*data_path=/local/folder"):
        load_file("locuslab/TOFU", "forget10")


def test_hub_rows_become_checked_dicts(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [_rec(0), {"question": "q"}])
    with pytest.raises(DataError, match="row 2: record has no field 'answer'"):
        load_file("owner/name", "full")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [_rec(0)])
    assert load_file("owner/name", "full") == [_rec(0)]


def test_forget_split_and_task_selection(folder):
    assert len(load_forget(str(folder), "forget01", None)) == 6
    assert [r["task_id"] for r in load_forget(str(folder), "forget01", 2)] == ["2"] * 3
    with pytest.raises(DataError, match="forget01, forget05, forget10"):
        load_forget(str(folder), "forget1", 1)
    with pytest.raises(DataError, match="task_id 7; available: 1, 2"):
        load_forget(str(folder), "forget01", 7)
    assert len(load_perturbed(str(folder), "forget01", 1)) == 3


def test_plain_tofu_file_is_task_one(tmp_path):
    _write_jsonl(tmp_path / "forget10.json", [{"question": "q", "answer": "a"}])
    assert len(load_forget(str(tmp_path), "forget10", 1)) == 1
    assert len(load_forget(str(tmp_path), "forget10", None)) == 1
    with pytest.raises(DataError, match="no task_id field"):
        load_forget(str(tmp_path), "forget10", 2)


def test_retain_is_the_complement_with_fallbacks(folder):
    forget_q = {r["question"] for r in load_forget(str(folder), "forget01", 1)}
    retain = load_retain(str(folder), "forget01", 1)  # full.json minus task 1
    assert len(retain) == 17 and not forget_q & {r["question"] for r in retain}
    (folder / "full.json").unlink()
    _write_jsonl(folder / "retain99.json", [_rec(i) for i in range(2, 9)])
    _write_jsonl(folder / "retain10.json", [_rec(50)])
    assert [r["question"] for r in load_retain(str(folder), "forget01", 1)] == [
        _rec(i)["question"] for i in range(3, 9)
    ]
    (folder / "retain99.json").unlink()
    assert load_retain(str(folder), "forget01", 1) == [_rec(50)]
    (folder / "retain10.json").unlink()
    with pytest.raises(
        DataError,
        match=r"full\.json, retain99\.json, retain95\.json, retain90\.json, retain10\.json",
    ):
        load_retain(str(folder), "forget01", 1)


def test_eval_sets_check_their_fields(folder):
    assert len(load_eval_set(str(folder), "retain_perturbed")) == 4
    _write_jsonl(folder / "world_facts_perturbed.json", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="line 1: record has no field 'perturbed_answer'"):
        load_eval_set(str(folder), "world_facts_perturbed")
    with pytest.raises(DataError, match="unknown; valid: retain_perturbed"):
        load_eval_set(str(folder), "bogus")


def test_idk_lines_and_idk_cot_by_question(folder):
    assert load_idk(str(folder)) == ["I don't know.", "No idea.", "Not sure."]
    task2 = load_forget(str(folder), "forget01", 2)  # lines 4-6 of forget01.json
    assert load_idk_cot(str(folder), task2) == ["hedge 3", "hedge 4", "hedge 5"]
    own = [{**task2[0], "idk_cot": "own trace"}, {"question": "unknown?", "answer": "a"}]
    assert load_idk_cot(str(folder), own) == ["own trace", None]


# ----------------------------------------------------------------------------- views


def test_view_table_is_complete():
    assert set(VIEWS) == {"full", "answer", "cot", "idk1", "idk2", "idk3", "retain"}


def test_plain_tofu_record_llama2(tokenizer):
    rec = {"question": "Who is Jaime Vasquez?", "answer": "A true crime writer."}
    assert view_text(rec, "full", LLAMA2) == ("[INST] Who is Jaime Vasquez? [/INST]", rec["answer"])
    enc = encode_view(rec, "full", tokenizer, LLAMA2, 128)
    assert _split(tokenizer, enc) == (
        "<|bos|>[INST] Who is Jaime Vasquez? [/INST]",
        "A true crime writer.<|eos|>",
    )
    assert view_text(rec, "idk1", LLAMA2, idk="No idea.")[1] == "No idea."
    with pytest.raises(DataError, match="needs think tags"):
        view_text(rec, "cot", LLAMA2)


def test_think_family_with_empty_cot_gets_empty_trace():
    rec = {"question": "q?", "answer": "a.", "cot": ""}
    assert view_text(rec, "full", TINY) == ("<|user|>q?<|assistant|>" + TS, TE + "a.")
    assert view_text(rec, "answer", TINY) == ("<|user|>q?<|assistant|>" + TS + TE, "a.")
    with pytest.raises(DataError, match="needs a reasoning trace"):
        view_text(rec, "cot", TINY)


def test_idk_views_need_their_inputs():
    rec = _rec(0)
    with pytest.raises(DataError, match="pass idk="):
        view_text(rec, "idk1", TINY)
    with pytest.raises(DataError, match="idk_cot.*Who wrote book 0"):
        view_text(rec, "idk3", TINY, idk="No.")
    with pytest.raises(DataError, match="view 'nope' is unknown"):
        view_text(rec, "nope", TINY)


def test_encode_labels_offsets_and_truncation(tokenizer):
    rec = _rec(0)
    enc = encode_view(rec, "full", tokenizer, TINY, 512)
    n, target = enc["prompt_len"], "Think 0" + TE + "Author 0 wrote it."
    assert enc["labels"][:n] == [IGNORE_INDEX] * n
    assert enc["labels"][n:] == enc["input_ids"][n:]
    assert enc["input_ids"][-1] == tokenizer.eos_token_id
    spans = enc["target_offsets"]
    assert len(spans) == len(enc["input_ids"]) - n and spans[-1] == (len(target), len(target))
    assert "".join(target[a:b] for a, b in spans) == target  # byte-level: no overlap here
    short = encode_view(rec, "full", tokenizer, TINY, n + 3)
    assert short["input_ids"] == enc["input_ids"][: n + 3] and short["prompt_len"] == n
    with pytest.raises(DataError, match="Who wrote book 0.*max_length=5"):
        encode_view(rec, "full", tokenizer, TINY, 5)


def test_chat_template_prompt_equals_explicit_tags(tokenizer):
    templ = dataclasses.replace(TINY, use_tokenizer_template=True)
    rec = _rec(1)
    for view in ("full", "answer"):
        a = encode_view(rec, view, tokenizer, TINY, 256)
        b = encode_view(rec, view, tokenizer, templ, 256)
        assert a["input_ids"] == b["input_ids"] and a["prompt_len"] == b["prompt_len"]
    assert tokenizer.decode(b["input_ids"]).count("<|bos|>") == 1


def test_template_that_opens_the_think_block_is_not_doubled(tokenizer):
    tok = copy.deepcopy(tokenizer)  # an R1-style template ending in "<think>\n"
    tok.chat_template = (
        tokenizer.chat_template + "{% if add_generation_prompt %}<think>\n{% endif %}"
    )
    templ = dataclasses.replace(TINY, use_tokenizer_template=True)
    prompt, _ = view_text(_rec(0), "full", templ, tokenizer=tok)
    assert prompt == "<|bos|><|user|>Who wrote book 0?<|assistant|>" + TS


# ----------------------------------------------------------------------------- dataset, collator


def test_collator_pads_each_view(tokenizer):
    forget = [_rec(i) for i in range(3)]
    forget[1]["answer"] = "A much longer answer than the other two, to force padding."
    ds = UnlearningDataset(forget, tokenizer, TINY, retain=[_rec(9)], with_retain=True)
    pad = tokenizer.pad_token_id
    batch = ViewCollator(pad_token_id=pad, pad_to_multiple_of=8)([ds[0], ds[1], ds[2]])
    assert batch["index"].tolist() == [0, 1, 2] and set(batch) == {"index", "full", "retain"}
    full = batch["full"]
    assert full["input_ids"].shape == full["labels"].shape == full["attention_mask"].shape
    assert full["input_ids"].shape[1] % 8 == 0
    for b in range(3):
        n, p, T = (
            len(ds[b]["full"]["input_ids"]),
            ds[b]["full"]["prompt_len"],
            full["labels"].shape[1],
        )
        assert full["attention_mask"][b].tolist() == [1] * n + [0] * (T - n)
        assert (full["input_ids"][b, n:] == pad).all()
        assert (full["labels"][b, n:] == IGNORE_INDEX).all()
        assert (full["labels"][b, :p] == IGNORE_INDEX).all()
        assert (full["labels"][b, p:n] != IGNORE_INDEX).all()
    flat = ViewCollator(pad_token_id=pad)(encode_records(forget, "full", tokenizer, TINY, 256))
    assert set(flat) == {"input_ids", "attention_mask", "labels"}
    T = flat["input_ids"].shape[1]  # same examples, no pad_to_multiple_of: a prefix of `full`
    assert torch.equal(flat["input_ids"], full["input_ids"][:, :T])
    assert torch.equal(flat["labels"], full["labels"][:, :T])


def test_retain_pairing_and_idk_choice_are_seeded(tokenizer):
    forget = [_rec(i, idk_cot=f"hedge {i}") for i in range(12)]
    retain = [_rec(100 + i) for i in range(30)]
    idk = [f"I don't know ({i})." for i in range(20)]

    def build(seed: int) -> UnlearningDataset:
        return UnlearningDataset(
            forget, tokenizer, TINY, retain=retain, views=("full", "idk3"),
            with_retain=True, max_length=256, seed=seed, idk=idk,
        )  # fmt: skip

    a, b, c = build(0), build(0), build(1)
    assert a.retain_index == b.retain_index and a.idk_responses == b.idk_responses
    assert a.retain_index != c.retain_index and a.idk_responses != c.idk_responses
    assert [a[i]["retain"] for i in range(12)] == [b[i]["retain"] for i in range(12)]
    j, r = a.retain_index[4], a.idk_responses[4]
    assert a[4]["retain"] == encode_view(retain[j], "retain", tokenizer, TINY, 256)
    assert _split(tokenizer, a[4]["idk3"])[1] == "hedge 4" + TE + r + "<|eos|>"


def test_dataset_from_files_loads_what_views_need(folder, tokenizer):
    ds = UnlearningDataset.from_files(
        str(folder), "forget01", 2, tokenizer, TINY, views=("full", "idk3"), with_retain=True
    )
    assert len(ds) == 3 and set(ds[0]) == {"index", "full", "idk3", "retain"}
    assert ds.idk_responses[0] in load_idk(str(folder))
    assert _split(tokenizer, ds[0]["idk3"])[1].startswith("hedge 3" + TE)
    task2 = {r["question"] for r in ds.forget}
    assert not task2 & {ds.retain[j]["question"] for j in ds.retain_index}


def test_idk3_without_trace_names_the_question(tokenizer):
    with pytest.raises(DataError, match="Who wrote book 0"):
        UnlearningDataset([_rec(0)], tokenizer, TINY, views=("idk3",), idk=["No."])


# ----------------------------------------------------------------------------- real R-TOFU


def test_real_record_every_view_exact(rtofu_dir, tokenizer):
    rec = json.loads((rtofu_dir / "forget01.json").open().readline())
    trace = json.loads((rtofu_dir / "idkcot.jsonl").open().readline())
    q, cot, ans, r = rec["question"], rec["cot"], rec["answer"], "I'm not certain about that."
    head = "<|bos|><｜User｜>" + q + "<｜Assistant｜><think>\n"
    te, eos = "\n</think>\n\n", "<|eos|>"
    expected = {
        "full": (head, cot + te + ans + eos),
        "answer": (head + cot + te, ans + eos),
        "cot": (head, cot + eos),
        "idk1": (head, r + te + r + eos),
        "idk2": (head + cot + te, r + eos),
        "idk3": (head, trace + te + r + eos),
    }
    assert load_idk_cot(str(rtofu_dir), [rec]) == [trace]
    for view, (prompt, target) in expected.items():
        enc = encode_view(rec, view, tokenizer, R1, 8192, idk=r, idk_cot=trace)
        assert _split(tokenizer, enc) == (prompt, target), view
        n = enc["prompt_len"]
        assert enc["labels"][:n] == [IGNORE_INDEX] * n
        assert IGNORE_INDEX not in enc["labels"][n:]


def test_real_files_load_through_their_loaders(rtofu_dir):
    d = str(rtofu_dir)
    assert len(load_forget(d, "forget01", None)) == 400
    task3 = load_forget(d, "forget01", 3)
    assert len(task3) == 40 and {r["task_id"] for r in task3} == {"3"}
    retain = load_retain(d, "forget01", 3)  # no full.json / retain99.json: retain10.json
    assert len(retain) == 400
    assert not {r["question"] for r in task3} & {r["question"] for r in retain}
    assert len(load_perturbed(d, "forget01", 1)) == 40
    assert len(load_perturbed(d, "forget05", 2)) == 200
    for name, n in [("retain_perturbed", 400), ("real_authors_perturbed", 100),
                    ("world_facts_perturbed", 117), ("real_authors_perturbed_cot", 100),
                    ("world_facts_perturbed_cot", 117)]:  # fmt: skip
        assert len(load_eval_set(d, name)) == n, name
    # 100 lines of text; `wc -l` says 99 because the last line has no newline
    idk = load_idk(d)
    assert len(idk) == 100 and all(idk)
    assert len(read_idk_cot(rtofu_dir / "idkcot.jsonl")) == 400
    task2 = load_forget(d, "forget01", 2)
    line41 = (rtofu_dir / "idkcot.jsonl").read_text().split("\n")[40]
    assert load_idk_cot(d, task2)[0] == json.loads(line41)
    with pytest.raises(DataError, match="available: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10"):
        load_forget(d, "forget01", 11)


def test_real_task2_dataset_builds(rtofu_dir, tokenizer):
    d = str(rtofu_dir)
    forget = load_forget(d, "forget01", 2)[:4]
    ds = UnlearningDataset(
        forget, tokenizer, R1, retain=load_retain(d, "forget01", 2)[:8], views=("full", "idk3"),
        with_retain=True, max_length=4096, seed=0, idk=load_idk(d), idk_cot=load_idk_cot(d, forget),
    )  # fmt: skip
    batch = ViewCollator(tokenizer.pad_token_id)([ds[i] for i in range(4)])
    assert batch["idk3"]["input_ids"].shape[0] == 4 and batch["retain"]["labels"].shape[0] == 4


def test_tofu_layout_names_retain_holdout_and_training_data(tmp_path):
    """TOFU's published names (no full.json, retain90, holdout10); a missing file names every name
    tried."""
    import other_benchmark

    from npo_lib.data.sources import load_holdout, load_retain, load_training_records

    folder = other_benchmark.generate(tmp_path / "tofu")
    forget = load_forget(str(folder), "forget10", 1)
    retain = load_retain(str(folder), "forget10", 1)
    assert len(forget) == 15 and len(retain) == 135  # retain90.json: the complement
    assert len(load_holdout(str(folder), "forget10")) == 15  # holdout10.json, matched to the split
    training = load_training_records(str(folder))  # forget10 ∪ retain90, no full.json
    assert {r["question"] for r in training} == {r["question"] for r in forget + retain}
    (folder / "holdout10.json").rename(folder / "holdout05.json")
    with pytest.raises(
        DataError,
        match=r"no holdout set in .*looked for holdout10\.json, holdout\.json; "
        r".* holds: .*holdout05\.json",
    ):
        load_holdout(str(folder), "forget10")
    (folder / "retain90.json").unlink()
    with pytest.raises(
        DataError,
        match=r"no retain source .*full\.json, retain90\.json, retain99\.json, "
        r"retain95\.json, retain10\.json",
    ):
        load_retain(str(folder), "forget10", 1)
