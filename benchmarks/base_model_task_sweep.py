"""Session-3 research sweep on the package's tasks: held-out eval split, compact template, no
instruction, slipped corpus from --slipfrom on: what build-base does (the same training function,
`train_on_demonstrations`), with greedy and sampled accuracy measured at the --evals steps.
Results: benchmarks/results/base_model_search.md (2026-11-24). Example:
    OMP_NUM_THREADS=1 python benchmarks/base_model_task_sweep.py --task sorting --slip 0.5 \
        --steps 2000 --evals 500,1000,1500,2000
"""

import argparse
import json
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfimprove.eval.metrics import evaluate_answers
from selfimprove.models import base_model as bm
from selfimprove.models.tiny import build_tiny_model
from selfimprove.tasks import get_task

ap = argparse.ArgumentParser()
ap.add_argument("--task")
ap.add_argument("--level", type=int, default=1)
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--evals", default="1000,1500,2000,2500,3000")
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--hidden", type=int, default=128)
ap.add_argument("--slip", type=float, default=0.0)
ap.add_argument("--slipfrom", type=float, default=0.5)
ap.add_argument("--n", type=int, default=100000)
ap.add_argument("--tag", default="")
ap.add_argument("--out", default="runs/base_model_task_sweep.jsonl")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
task = get_task(a.task, instruction=False)
folder = tempfile.mkdtemp()
build_tiny_model(
    folder,
    hidden_size=a.hidden,
    num_layers=a.layers,
    num_heads=a.hidden // 64,
    max_position_embeddings=512,
    seed=0,
    chat_template="compact",
)
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
n = min(a.n, a.steps * a.bs)
demos = task.make_demonstrations(n, seed=0, level=a.level)
slipped = task.make_demonstrations(n, seed=0, level=a.level, slip_rate=a.slip) if a.slip else None
first = tok.apply_chat_template(demos[0]["prompt"], add_generation_prompt=True, tokenize=False)
print("demos", len(demos), repr(first + demos[0]["completion"]), flush=True)
prompts, gold = task.make_split("eval", 200, seed=0, level=a.level)
evals = {int(x) for x in a.evals.split(",")}
losses: list[float] = []
clock = {"start": time.time(), "eval": 0.0}


def on_step(step: int, loss: float) -> None:
    losses.append(loss)
    if step not in evals:
        return
    model.eval()
    t = time.time()
    g = bm.sample_answers(model, tok, task, prompts, n=1, temperature=0, max_new_tokens=48)
    greedy = sum(task.check(v[0], gold[k]) for k, v in g.items()) / len(gold)
    s = bm.sample_answers(model, tok, task, prompts, n=8, temperature=1.0, max_new_tokens=48, seed=0)
    met = evaluate_answers(s, gold, task.check, ks=(8,))
    keep = ("pass@1", "maj@8", "pass@8", "constant_baseline")
    row = {
        "tag": a.tag,
        "task": a.task,
        "level": a.level,
        "slip": a.slip,
        "layers": a.layers,
        "lr": a.lr,
        "threads": a.threads,
        "step": step,
        "train_sec": round(t - clock["start"] - clock["eval"]),
        "loss": round(sum(losses[-50:]) / len(losses[-50:]), 3),
        "greedy": greedy,
        **{k: round(v, 3) for k, v in met.items() if k in keep},
    }
    print(json.dumps(row), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    clock["eval"] += time.time() - t
    model.train()


bm.train_on_demonstrations(
    model,
    tok,
    demos,
    steps=a.steps,
    batch_size=a.bs,
    lr=a.lr,
    warmup_steps=30,
    weight_decay=0.01,
    seed=0,
    progress=False,
    late_demos=slipped,
    late_from=int(a.slipfrom * a.steps),
    on_step=on_step,
)
