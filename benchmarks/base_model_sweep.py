# ruff: noqa: E701, E702
"""Research sweep (2026-11-23): can the embedded base model become partially competent in minutes?

Trains the tiny Qwen2 of selfimprove.models.tiny on a bundled family's demonstrations (or a
variant of its solution format / lengths, patched in here, not in the package) and measures sampled
pass@1 / maj@8 / pass@8 at T=1.0 and greedy accuracy on held-out eval prompts at given steps.
Results: benchmarks/results/base_model_search.md (raw: base_model_search_raw.jsonl).

    OMP_NUM_THREADS=1 python benchmarks/base_model_sweep.py --task counting --fmt direct --reorder 1 \
        --steps 1500 --evals 250,500,750,1000,1500 --out runs/sweep.jsonl
"""

import argparse
import json
import math
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfimprove.eval.metrics import evaluate_answers
from selfimprove.models import base_model as bm
from selfimprove.models.tiny import build_tiny_model
from selfimprove.tasks import get_task
from selfimprove.tasks import synthetic as syn

ap = argparse.ArgumentParser()
ap.add_argument("--task", default="counting")
ap.add_argument("--fmt", default="matches")
ap.add_argument("--steps", type=int, default=1200)
ap.add_argument("--evals", default="200,400,600,800,1200")
ap.add_argument("--hidden", type=int, default=128)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--level", type=int, default=1)
ap.add_argument("--restate", type=int, default=0)
ap.add_argument("--reorder", type=int, default=0)
ap.add_argument("--ls", type=float, default=0.0)
ap.add_argument("--prompts", type=int, default=100)
ap.add_argument("--out", default=None)
a = ap.parse_args()
torch.set_num_threads(1)

if a.task == "string_ops" and a.fmt in ("short", "shortupper"):
    syn._STRING_LEVELS[1] = (2, 3)
    if a.fmt == "shortupper":
        for k in list(syn._STRING_OPS):
            if k != "upper":
                del syn._STRING_OPS[k]
    task = get_task("string_ops")
elif a.task == "echo":
    import string

    def make_echo(rng, level):
        c = rng.choice(string.ascii_lowercase) + rng.choice(string.ascii_lowercase)
        pad = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(0, 2000)))[:3]
        return syn.Problem(
            c + pad + str(rng.random()),
            f"Repeat the letters '{c}'. {syn.INSTRUCTION}",
            c,
            syn.format_answer(c),
        )

    task = syn.SyntheticTask("echo", "x", make_echo)
elif a.task == "string_ops" and a.fmt == "fixed4":
    syn._STRING_LEVELS[1] = (4, 4)
    task = get_task("string_ops")
elif a.task == "counting" and a.fmt.startswith("direct"):
    import string

    fixed = int(a.fmt[6:] or 0)

    def make_counting(rng, level):
        size, lo, hi = syn._COUNT_LEVELS[level]
        alphabet = rng.sample(string.ascii_lowercase, size)
        L = fixed or rng.randint(lo, hi)
        word = "".join(rng.choice(alphabet) for _ in range(L))
        letter = rng.choice(alphabet)
        count = word.count(letter)
        q = f"How many times does the letter '{letter}' appear in '{word}'? {syn.INSTRUCTION}"
        if a.reorder:
            q = f"In '{word}', how many times does the letter '{letter}' appear? {syn.INSTRUCTION}"
        sol = syn.format_answer(str(count))
        if a.restate:
            sol = f"Letter: {letter}. " + sol
        return syn.Problem(f"{word}|{letter}", q, str(count), sol)

    task = syn.SyntheticTask("counting", "x", make_counting)
elif a.task == "counting" and a.fmt == "run6":
    import string

    def make_counting(rng, level):
        alphabet = rng.sample(string.ascii_lowercase, 4)
        word = "".join(rng.choice(alphabet) for _ in range(6))
        letter = rng.choice(alphabet)
        count = word.count(letter)
        run, c = [], 0
        for ch in word:
            c += ch == letter
            run.append(str(c))
        q = f"How many times does the letter '{letter}' appear in '{' '.join(word)}'? {syn.INSTRUCTION}"
        sol = f"Count: {' '.join(run)}. {syn.format_answer(str(count))}"
        return syn.Problem(f"{word}|{letter}", q, str(count), sol)

    task = syn.SyntheticTask("counting", "x", make_counting)
elif a.task == "counting" and a.fmt != "matches":
    import string

    def make_counting(rng, level):
        size, lo, hi = syn._COUNT_LEVELS[level]
        alphabet = rng.sample(string.ascii_lowercase, size)
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))
        letter = rng.choice(alphabet)
        count = word.count(letter)
        if a.fmt == "scan":
            parts, c = [], 0
            for ch in word:
                if ch == letter:
                    c += 1
                    parts.append(f"{ch}={c}")
                else:
                    parts.append(ch)
            sol = f"Scan: {' '.join(parts)}. {syn.format_answer(str(count))}"
        elif a.fmt == "tally":
            parts = ["1" if ch == letter else "0" for ch in word]
            sol = f"Marks: {' '.join(parts)}. {syn.format_answer(str(count))}"
        return syn.Problem(
            f"{word}|{letter}",
            f"How many times does the letter '{letter}' appear in '{word}'? {syn.INSTRUCTION}",
            str(count),
            sol,
        )

    task = syn.SyntheticTask("counting", "x", make_counting)
else:
    task = get_task(a.task)

folder = f"runs/base_sweep/m-{a.task}-{a.fmt}-{a.restate}-{a.reorder}-{a.lr}-{a.hidden}-{a.layers}-{a.steps}"
torch.manual_seed(0)
build_tiny_model(
    folder,
    hidden_size=a.hidden,
    num_layers=a.layers,
    num_heads=max(2, a.hidden // 64),
    max_position_embeddings=512,
    seed=0,
)
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
demos = task.make_demonstrations(min(30000, a.steps * a.bs), seed=0, level=a.level)
print("demo:", demos[0]["completion"], flush=True)
enc = bm._encode_examples(tok, demos)
prompts, gold = task.make_split("eval", a.prompts, seed=0, level=a.level)
rng = random.Random(0)
order = []
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
warm = 30


def lr_at(step):
    if step < warm:
        return a.lr * (step + 1) / warm
    t = (step - warm) / max(1, a.steps - warm)
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


evals = {int(x) for x in a.evals.split(",")}
t0 = time.time()
losses = []
for step in range(1, a.steps + 1):
    model.train()
    if len(order) < a.bs:
        more = list(range(len(enc)))
        rng.shuffle(more)
        order.extend(more)
    idx, order = order[: a.bs], order[a.bs :]
    batch = bm._batch([enc[i] for i in idx], tok.pad_token_id)
    for g in opt.param_groups:
        g["lr"] = lr_at(step - 1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=a.ls,
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    losses.append(loss.item())
    if step in evals:
        model.eval()
        te = time.time()
        res = {}
        for T in (1.0, 0.0):
            ans = bm.sample_answers(
                model, tok, task, prompts, n=8 if T else 1, temperature=T, max_new_tokens=64, seed=0
            )
            m = evaluate_answers(ans, gold, task.check, ks=(8,) if T else (1,))
            res[T] = m
        row = {
            "step": step,
            "train_s": round(te - t0, 1),
            "loss": round(sum(losses[-20:]) / 20, 4),
            "pass1": round(100 * res[1.0]["pass@1"], 1),
            "maj8": round(100 * res[1.0]["maj@8"], 1),
            "pass8": round(100 * res[1.0]["pass@8"], 1),
            "greedy": round(100 * res[0.0]["pass@1"], 1),
            "ans_rate": round(100 * res[1.0]["answer_rate"], 1),
        }
        print(json.dumps(row), flush=True)
        t0 += time.time() - te
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps({**vars(a), **row}) + "\n")
