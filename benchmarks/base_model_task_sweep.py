# ruff: noqa
"""Session-3 research sweep on the package's tasks: held-out eval split, compact template, no
instruction, slipped corpus from --slipfrom on (what build-base does). Results:
benchmarks/results/base_model_search.md (session 3). Example:
    OMP_NUM_THREADS=1 python benchmarks/base_model_task_sweep.py --task sorting --slip 0.5 --steps 2000 --evals 500,1000,1500,2000
"""

import argparse, json, math, random, time, sys, tempfile
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from selfimprove.models.tiny import build_tiny_model
from selfimprove.models import base_model as bm
from selfimprove.tasks import get_task
from selfimprove.loop.metrics import evaluate_answers

ap = argparse.ArgumentParser()
ap.add_argument("--task")
ap.add_argument("--level", type=int, default=1)
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--evals", default="1000,1500,2000,2500,3000")
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--slip", type=float, default=0.0)
ap.add_argument("--slipfrom", type=float, default=0.5)
ap.add_argument("--n", type=int, default=100000)
ap.add_argument("--tag", default="")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
task = get_task(a.task, instruction=False)
d = tempfile.mkdtemp()
build_tiny_model(d, max_position_embeddings=512, seed=0, chat_template="compact")
tok = AutoTokenizer.from_pretrained(d)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
demos = task.make_demonstrations(min(a.n, a.steps * a.bs), seed=0, level=a.level)
late = bm._encode_examples(
    tok, task.make_demonstrations(min(a.n, a.steps * a.bs), seed=0, level=a.level, slip_rate=a.slip)
)
print(
    "demos",
    len(demos),
    repr(
        tok.apply_chat_template(demos[0]["prompt"], add_generation_prompt=True, tokenize=False)
        + demos[0]["completion"]
    ),
    flush=True,
)
enc = bm._encode_examples(tok, demos)
opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))


def lr_at(s):
    if s < 30:
        return a.lr * (s + 1) / 30
    t = (s - 30) / max(1, a.steps - 30)
    return a.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


prompts, gold = task.make_split("eval", 200, seed=0, level=a.level)
evs = {int(x) for x in a.evals.split(",")}
order = []
r2 = random.Random(0)
t0 = time.time()
losses = []
m.train()
for step in range(1, a.steps + 1):
    if len(order) < a.bs:
        more = list(range(len(enc)))
        r2.shuffle(more)
        order += more
    idx, order = order[: a.bs], order[a.bs :]
    rows = late if step > a.slipfrom * a.steps else enc
    b = bm._batch([rows[i] for i in idx], tok.pad_token_id)
    for gr in opt.param_groups:
        gr["lr"] = lr_at(step - 1)
    loss = m(**b).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    losses.append(loss.item())
    if step in evs:
        m.eval()
        te = time.time()
        g = bm.sample_answers(m, tok, task, prompts, n=1, temperature=0, max_new_tokens=48)
        greedy = sum(task.check(v[0], gold[k]) for k, v in g.items()) / len(gold)
        s = bm.sample_answers(m, tok, task, prompts, n=8, temperature=1.0, max_new_tokens=48, seed=0)
        met = evaluate_answers(s, gold, task.check, ks=(8,))
        row = dict(
            tag=a.tag,
            task=a.task,
            level=a.level,
            slip=a.slip,
            step=step,
            train_sec=round(te - t0),
            loss=round(sum(losses[-50:]) / 50, 3),
            greedy=greedy,
            **{
                k: round(v, 3)
                for k, v in met.items()
                if k in ("pass@1", "maj@8", "pass@8", "constant_baseline")
            },
        )
        print(json.dumps(row), flush=True)
        with open("runs/base_model_task_sweep.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        t0 += time.time() - te
        m.train()
