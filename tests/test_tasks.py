"""Bundled and user tasks: determinism, disjoint splits, no gold in prompts, extract+check round trip."""

from __future__ import annotations

import json
import re

import pytest

from selfimprove.errors import InputError
from selfimprove.tasks import GOLD_FIELDS, TASKS, find_gold_keys, get_task, jsonl_task, split_of
from selfimprove.tasks.base import answers_equal, normalize_answer

FAMILIES = sorted(TASKS)
LEVELS = (1, 2, 3)


def test_at_least_three_families_including_arithmetic():
    assert {"arithmetic", "counting", "sorting", "string_ops"} <= set(TASKS)
    assert get_task("counting") is TASKS["counting"]
    with pytest.raises(InputError, match="unknown task 'arithmetc'"):
        get_task("arithmetc")


@pytest.mark.parametrize("name", FAMILIES)
def test_deterministic_per_seed(name):
    task = get_task(name)
    a = task.make_split("train", 20, seed=3, level=2)
    b = task.make_split("train", 20, seed=3, level=2)
    c = task.make_split("train", 20, seed=4, level=2)
    assert a == b
    assert [p["prompt_id"] for p in a[0]] != [p["prompt_id"] for p in c[0]]
    # a longer request starts with the same prompts (a stream, not a reshuffle)
    longer = task.make_split("train", 30, seed=3, level=2)
    assert longer[0][:20] == a[0]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("level", LEVELS)
def test_splits_disjoint_and_ids_unique(name, level):
    task = get_task(name)
    seen: dict[str, set[str]] = {}
    texts: dict[str, set[str]] = {}
    for split in ("base", "train", "eval"):
        ids: set[str] = set()
        for seed in (0, 1):
            prompts, gold = task.make_split(split, 60, seed=seed, level=level)
            assert len({p["prompt_id"] for p in prompts}) == 60
            assert set(gold) == {p["prompt_id"] for p in prompts}
            ids |= {p["prompt_id"] for p in prompts}
            texts.setdefault(split, set()).update(p["prompt"][0]["content"] for p in prompts)
            assert all(p["meta"]["split"] == split and p["meta"]["level"] == level for p in prompts)
        seen[split] = ids
    assert not seen["base"] & seen["train"]
    assert not seen["base"] & seen["eval"]
    assert not seen["train"] & seen["eval"]
    assert not texts["train"] & texts["eval"]
    assert not texts["base"] & texts["eval"]


def test_split_of_is_a_fixed_function_of_the_key():
    shares = {"base": 0, "train": 0, "eval": 0}
    for i in range(3000):
        shares[split_of(f"k{i}")] += 1
    assert split_of("k1") == split_of("k1")
    assert 0.55 < shares["base"] / 3000 < 0.65
    assert 0.15 < shares["eval"] / 3000 < 0.25


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("level", LEVELS)
def test_no_gold_anywhere_in_prompts(name, level):
    task = get_task(name)
    prompts, gold = task.make_split("eval", 40, seed=0, level=level)
    for p in prompts:
        assert set(p) == {"prompt_id", "prompt", "meta"}
        assert find_gold_keys(p) == []
        # the answer sentence is never in the prompt (only the format instruction 'X')
        assert "The answer is " + gold[p["prompt_id"]] not in json.dumps(p)


def test_find_gold_keys_sees_nested_fields():
    rec = {"prompt": [{"role": "user", "content": "x"}], "meta": {"a": [{"b": {"Answer": 1}}], "label": 2}}
    assert sorted(find_gold_keys(rec)) == ["meta.a[0].b.Answer", "meta.label"]
    assert {"answer", "gold", "label", "solution", "ground_truth", "target"} == GOLD_FIELDS


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("level", LEVELS)
def test_extract_check_round_trip(name, level):
    task = get_task(name)
    prompts, gold = task.make_split("eval", 50, seed=1, level=level)
    answers = list(gold.values())
    for g in gold.values():
        text = "Let me think. " + task.format_answer(g)
        assert task.check(task.extract(text), g), (text, task.extract(text))
        # a different gold answer of the same task must not pass
        other = next(a for a in answers if normalize_answer(a) != normalize_answer(g))
        assert not task.check(task.extract(text), other)
    assert not task.check(None, answers[0])
    assert task.extract("no final answer here") is None


@pytest.mark.parametrize("name", FAMILIES)
def test_demonstrations_come_from_base_split_and_end_in_gold(name):
    task = get_task(name)
    demos = task.make_demonstrations(30, seed=0, level=2)
    base_prompts, base_gold = task.make_split("base", 30, seed=0, level=2)
    assert [d["prompt"] for d in demos] == [p["prompt"] for p in base_prompts]
    for d, p in zip(demos, base_prompts, strict=True):
        assert task.check(task.extract(d["completion"]), base_gold[p["prompt_id"]])


def _arith_steps(completion: str) -> list[tuple[str, list[str], str]]:
    """(equation lhs, column entries, equation rhs) of each step of an arithmetic solution."""
    steps = []
    for part in re.findall(r"(\d+[+*-]\d+)(?:: ([^.]*)\. \1)?=(\d+)\.", completion):
        lhs, columns, rhs = part
        steps.append((lhs, columns.split(", ") if columns else [], rhs))
    return steps


def _column_entries_are_right(lhs: str, columns: list[str], rhs: str) -> bool:
    """Whether each column entry is right arithmetic and the digits written make ``rhs``."""
    op = "+" if "+" in lhs else "-"
    digits = []
    carry = 0
    for col in columns:
        left, result = col.split("=")
        if eval(left) != int(result):  # noqa: S307 - digits and + / -, generated by the task
            return False
        digits.append(int(result) % 10)
        carry = int(result) // 10 if op == "+" else 0
    value = int("".join(map(str, reversed(digits + ([carry] if carry else [])))))
    return value == int(rhs)


def test_arithmetic_worked_solution_is_correct_arithmetic():
    for level in (1, 2, 3):
        for d in get_task("arithmetic").make_demonstrations(50, seed=0, level=level):
            steps = _arith_steps(d["completion"])
            assert len(steps) == level
            for i, (lhs, columns, rhs) in enumerate(steps):
                assert eval(lhs) == int(rhs)  # noqa: S307
                if "*" in lhs:
                    assert not columns
                else:  # worked in columns, units first, one entry per digit of the wider number
                    a, b = map(int, re.split(r"[+-]", lhs))
                    assert len(columns) == len(str(max(a, b)))
                    assert _column_entries_are_right(lhs, columns, rhs)
                if i:
                    assert lhs.startswith(steps[i - 1][2])  # each step starts from the last result
            assert d["completion"].endswith(f"The answer is {steps[-1][2]}.")
    assert get_task("arithmetic").make_demonstrations(1, seed=0)[0]["completion"] == (
        "53+5: 3+5=8, 5+0=5. 53+5=58. The answer is 58."
    )


def test_column_work_carries_and_borrows():
    from selfimprove.tasks.synthetic import column_work

    assert column_work(67, "+", 14) == ("7+4=11, 6+1+1=8", 81)
    assert column_work(96, "+", 98) == ("6+8=14, 9+9+1=19", 194)
    assert column_work(52, "-", 17) == ("12-7=5, 4-1=3", 35)
    assert column_work(100, "-", 1) == ("10-1=9, 9-0=9, 0-0=0", 99)
    # A slip changes what is written in one column; the carry follows what is written.
    assert column_work(96, "+", 98, (1, 1)) == ("6+8=14, 9+9+1=20", 204)
    assert column_work(52, "-", 17, (0, -1)) == ("12-7=4, 4-1=3", 34)


@pytest.mark.parametrize("name", FAMILIES)
def test_slipped_demonstrations_keep_the_problems_and_slip_at_the_rate(name):
    task = get_task(name)
    clean = task.make_demonstrations(400, seed=0, level=1)
    slipped = task.make_demonstrations(400, seed=0, level=1, slip_rate=0.5)
    # The same problems in the same order: the slip rate draws from a stream of its own.
    assert [d["prompt"] for d in slipped] == [d["prompt"] for d in clean]
    _, gold = task.make_split("base", 400, seed=0, level=1)
    changed = [(c, s) for c, s in zip(clean, slipped, strict=True) if c["completion"] != s["completion"]]
    # Every changed row ends in a wrong answer, and about half the rows changed.
    for c, s in changed:
        assert task.extract(s["completion"]) is not None
        assert task.extract(s["completion"]) != task.extract(c["completion"])
    assert 0.4 < len(changed) / 400 < 0.6
    assert task.make_demonstrations(400, seed=0, level=1, slip_rate=0.0) == clean
    with pytest.raises(InputError, match="slip_rate"):
        task.make_demonstrations(4, slip_rate=1.0)


def test_arithmetic_slips_are_one_wrong_column_carried_on():
    import random

    from selfimprove.tasks.synthetic import make_arithmetic

    for level, seed in ((1, 3), (2, 3), (3, 5)):
        p = make_arithmetic(random.Random(seed), level)
        assert p.slips and p.solution not in p.slips and len(set(p.slips)) == len(p.slips)
        truth = _arith_steps(p.solution)
        for slip in p.slips:
            steps = _arith_steps(slip)
            assert len(steps) == level
            wrong = [s for s in steps if eval(s[0]) != int(s[2])]  # noqa: S307
            assert len(wrong) == 1  # one step is off; the later steps are right from there
            lhs, columns, rhs = wrong[0]
            if columns:  # the slip is in one column and what is written there carries on
                good = [c for c in columns if eval(c.split("=")[0]) == int(c.split("=")[1])]  # noqa: S307
                assert len(good) == len(columns) - 1
            assert steps[0][0] == truth[0][0]  # the same problem
            assert slip.endswith(f"The answer is {steps[-1][2]}.") and steps[-1][2] != p.answer
            assert "=-" not in slip


def test_instruction_option_changes_only_the_prompt_text():
    from selfimprove.tasks.synthetic import INSTRUCTION

    with_it, gold = get_task("sorting").make_split("eval", 5, seed=0)
    without, gold2 = get_task("sorting", instruction=False).make_split("eval", 5, seed=0)
    assert gold == gold2 and [p["prompt_id"] for p in with_it] == [p["prompt_id"] for p in without]
    for a, b in zip(with_it, without, strict=True):
        assert a["prompt"][0]["content"] == f"{b['prompt'][0]['content']} {INSTRUCTION}"
        assert INSTRUCTION not in b["prompt"][0]["content"]
    with pytest.raises(InputError, match="only the option 'instruction'"):
        get_task("sorting", extractor="boxed")
    with pytest.raises(InputError, match="instruction must be true or false"):
        get_task("sorting", instruction="yes")


def test_demonstrations_stop_at_the_size_of_the_base_split():
    # Arithmetic level 1 has about 8.2k base problems: asking for more gives all of them, no repeats.
    demos = get_task("arithmetic").make_demonstrations(20000, seed=0, level=1)
    texts = [d["prompt"][0]["content"] for d in demos]
    assert 7000 < len(demos) < 9000 and len(set(texts)) == len(texts)


@pytest.mark.parametrize(
    ("pred", "gold", "equal"),
    [
        ("12", "12", True),
        ("12.0", "12", True),
        ("1,000", "1000", True),
        ("3,5,12", "3, 5, 12", True),
        ("3, 12, 5", "3, 5, 12", False),
        ("ABC", "abc", False),
        (None, "1", False),
        ("", "1", False),
    ],
)
def test_answers_equal_table(pred, gold, equal):
    assert answers_equal(pred, gold) is equal


def test_bad_split_level_and_n():
    t = get_task("sorting")
    with pytest.raises(InputError, match="unknown split 'test'"):
        t.make_split("test", 3)
    with pytest.raises(InputError, match="unknown level 7"):
        t.make_split("train", 3, level=7)
    with pytest.raises(InputError, match="n must be"):
        t.make_split("train", 0)
    # a problem space too small for the request is an error, not an endless loop
    from selfimprove.tasks.synthetic import Problem, SyntheticTask

    tiny = SyntheticTask(
        "tiny", "two problems", lambda rng, level: Problem(str(rng.randint(0, 1)), "q", "a", "s")
    )
    with pytest.raises(InputError, match="cannot make 5 distinct"):
        tiny.make_split("eval", 5)


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_task_splits_gold_off(tmp_path):
    rows = [{"prompt": f"What is {i}+1?", "answer": str(i + 1), "source": "mine"} for i in range(200)]
    rows.append({"prompt": [{"role": "user", "content": "unlabeled"}], "id": "u1"})
    task = get_task(str(_write(tmp_path / "q.jsonl", rows)), extractor="last_number")
    train, train_gold = task.make_split("train")
    evals, eval_gold = task.make_split("eval")
    assert len(train) + len(evals) == 201
    assert 20 <= len(evals) <= 60  # about 20% of the labelled rows
    assert set(eval_gold) == {p["prompt_id"] for p in evals}
    assert "u1" in {p["prompt_id"] for p in train} and "u1" not in train_gold
    for p in train + evals:
        assert find_gold_keys(p) == []
        assert p["meta"] == ({"source": "mine"} if p["prompt_id"] != "u1" else {})
    pid = evals[0]["prompt_id"]
    assert task.check(task.extract(f"so it is {eval_gold[pid]}"), eval_gold[pid])
    # seeded subsets
    assert task.make_split("train", 5, seed=1) == task.make_split("train", 5, seed=1)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"prompt": "a", "answer": "1"}', "{not json"], r"q\.jsonl:2: not valid JSON"),
        (['{"prompt": "a"}', '{"question": "b"}'], r"q\.jsonl:2: missing the prompt field 'prompt'"),
        (['{"prompt": "  "}'], r"q\.jsonl:1: the prompt is empty"),
        (['{"prompt": "a", "meta": {"label": 1}}'], r"q\.jsonl:1: field\(s\) meta\.label look like gold"),
        (['{"prompt": "a", "split": "eval"}'], r"q\.jsonl:1: an 'eval' row needs a gold answer"),
        (['{"prompt": "a", "id": 1}', '{"prompt": "b", "id": 1}'], r"q\.jsonl:2: duplicate prompt id"),
        (['{"prompt": [{"role": "user"}]}'], r"q\.jsonl:1: prompt message 0"),
        (["", ""], r"no rows"),
    ],
)
def test_jsonl_task_errors_name_file_and_line(tmp_path, lines, match):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=match):
        jsonl_task(path)


def test_jsonl_task_unknown_extractor_and_missing_file(tmp_path):
    from selfimprove.errors import ConfigError

    path = _write(tmp_path / "q.jsonl", [{"prompt": "a"}])
    with pytest.raises(ConfigError, match="unknown extractor 'boxd'"):
        jsonl_task(path, extractor="boxd")
    with pytest.raises(InputError, match="not found"):
        jsonl_task(tmp_path / "nope.jsonl")


def _base_rows_file(tmp_path, n_base=12):
    rows = [
        {"prompt": f"Reverse '{w}'.", "answer": w[::-1], "split": "base"}
        for w in ("abc", "dog", "cat", "sun", "map", "pen", "cup", "box", "hat", "jam", "kit", "log")[:n_base]
    ]
    rows[0]["completion"] = "abc backwards is cba. The answer is cba."
    rows += [{"prompt": "Reverse 'xyz'.", "answer": "zyx", "split": "eval"}, {"prompt": "Reverse 'qrs'."}]
    path = tmp_path / "reverse.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_base_rows_become_demonstrations(tmp_path):
    """A user task's base rows (gold and worked solutions kept apart) are build-base's material."""
    task = jsonl_task(_base_rows_file(tmp_path))
    demos = task.make_demonstrations(100, seed=0)
    assert len(demos) == 12  # at most the base rows, never repeats
    by_prompt = {d["prompt"][0]["content"]: d["completion"] for d in demos}
    assert by_prompt["Reverse 'abc'."] == "abc backwards is cba. The answer is cba."
    assert by_prompt["Reverse 'dog'."] == "The answer is god."
    assert all(d["prompt"][0]["role"] == "user" for d in demos)
    # worked solutions never reach the records the loop reads
    assert all("completion" not in r["meta"] for r in task.records)
    # slips: that share of rows shows another base row's answer, same prompts
    slipped = task.make_demonstrations(100, seed=0, slip_rate=0.5)
    assert [d["prompt"] for d in slipped] == [d["prompt"] for d in demos]
    changed = [(a, b) for a, b in zip(demos, slipped, strict=True) if a["completion"] != b["completion"]]
    assert 2 <= len(changed) <= 10
    golds = {
        w[::-1] for w in ("abc", "dog", "cat", "sun", "map", "pen", "cup", "box", "hat", "jam", "kit", "log")
    }
    for a, b in changed:
        wrong = task.extract(b["completion"])
        assert wrong in golds and wrong != task.extract(a["completion"])


def test_jsonl_completion_only_on_base_rows_and_base_rows_needed(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "q", "answer": "1", "split": "train", "completion": "The answer is 1."}) + "\n"
    )
    with pytest.raises(InputError, match=r"bad.jsonl:1: a 'completion' .* only allowed on 'base' rows"):
        jsonl_task(bad)
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"prompt": "q", "answer": "1", "split": "eval"}) + "\n")
    with pytest.raises(InputError, match="no 'base' rows with a gold answer"):
        jsonl_task(none).make_demonstrations(4)
