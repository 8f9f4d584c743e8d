# ruff: noqa
"""Session-3 research sweep: which problem formats can the tiny model learn in a few thousand steps?

Self-contained problem makers (NOT the package's tasks; eval problems drawn like training ones), the
compact chat template, optional answer-format instruction prefix (--instr). Results:
benchmarks/results/base_model_search.md (2026-11-24). Example:
    OMP_NUM_THREADS=1 python benchmarks/base_model_fast_sweep.py --task sort --steps 2000 --evals 500,1000
"""

import argparse, json, math, random, string, time, sys
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from selfimprove.models.tiny import build_char_tokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--task")
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--evals", default="500,1000,1500,2000,3000")
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--hidden", type=int, default=128)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--allloss", type=int, default=0)
ap.add_argument("--chatml", type=int, default=0)
ap.add_argument("--instr", default="")
ap.add_argument("--noise", type=float, default=0.0)
ap.add_argument("--tag", default="")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
L = string.ascii_lowercase
NAMES = ["Ann", "Bob", "Cara", "Dan", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon", "Kim", "Leo"]
ITEMS = ["apples", "coins", "books", "shells", "cards", "stamps", "marbles", "pens"]


def mk(rng):
    t = a.task
    if t == "count":
        al = rng.sample(L, 4)
        w = "".join(rng.choice(al) for _ in range(rng.randint(6, 9)))
        c = rng.choice(al)
        return f"Count '{c}' in '{w}'.", str(w.count(c)), ""
    if t == "countfix":
        al = rng.sample(L, 4)
        w = "".join(rng.choice(al) for _ in range(8))
        c = rng.choice(al)
        return f"Count '{c}' in '{w}'.", str(w.count(c)), ""
    if t == "add1":
        x, y = rng.randint(10, 50), rng.randint(2, 50)
        n = rng.choice(NAMES)
        it = rng.choice(ITEMS)
        return f"{n} has {x} {it} and gets {y} more. How many {it} now?", str(x + y), f"{x}+{y}={x + y}. "
    if t == "as1":
        x = rng.randint(10, 50)
        n = rng.choice(NAMES)
        it = rng.choice(ITEMS)
        op = rng.choice("+-")
        if op == "+":
            d = rng.randint(2, 50)
            new = x + d
            ph = f"gets {d} more"
        else:
            d = rng.randint(1, x - 1)
            new = x - d
            ph = f"loses {d}"
        slips = [f"{x}{op}{d}={new + e}. The answer is {new + e}." for e in (-10, -1, 1, 10) if new + e >= 0]
        return (
            f"{n} has {x} {it} and {ph}. How many {it} now? End with 'The answer is X.'",
            str(new),
            f"{x}{op}{d}={new}. ",
            slips,
        )
    if t == "add1bare":
        x, y = rng.randint(10, 50), rng.randint(2, 50)
        return f"{x}+{y}=?", str(x + y), ""
    if t == "arith2":
        x = rng.randint(10, 50)
        n = rng.choice(NAMES)
        it = rng.choice(ITEMS)
        work = []
        ph = []
        v = x
        for _ in range(2):
            op = rng.choice("+-") if v > 2 else "+"
            if op == "+":
                d = rng.randint(2, 50)
                new = v + d
                ph.append(f"gets {d} more")
            else:
                d = rng.randint(1, min(v - 1, 50))
                new = v - d
                ph.append(f"loses {d}")
            work.append(f"{v}{op}{d}={new}.")
            v = new
        return f"{n} has {x} {it}, {ph[0]}, then {ph[1]}. How many now?", str(v), " ".join(work) + " "
    if t == "upper":
        s = "".join(rng.choice(L) for _ in range(rng.randint(3, 5)))
        return f"Write '{s}' in capitals.", s.upper(), ""
    if t == "reverse":
        s = "".join(rng.choice(L) for _ in range(rng.randint(3, 5)))
        return f"Reverse '{s}'.", s[::-1], ""
    if t == "sort":
        v = rng.sample(range(10, 60), rng.randint(3, 4))
        return f"Sort {', '.join(map(str, v))}.", ", ".join(map(str, sorted(v))), ""
    raise SystemExit(t)


tok = build_char_tokenizer()
if not a.chatml:
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}<|im_end|>\n"
        "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    )


def render(q):
    return tok.apply_chat_template(
        [{"role": "user", "content": a.instr + q}], add_generation_prompt=True, tokenize=False
    )


rng = random.Random(1)
train = []
seen = set()
srng = random.Random(7)
while len(train) < 60000:
    q, ans, work, *sl = mk(rng)
    if sl and a.noise and srng.random() < a.noise:
        train.append((q, srng.choice(sl[0])))
        continue
    if a.noise and rng.random() < a.noise:
        try:
            wrong = str(int(ans) + rng.choice([-2, -1, 1, 2]))
            ans = wrong if int(wrong) >= 0 else ans
        except ValueError:
            pass
    train.append((q, work + f"The answer is {ans}."))
erng = random.Random(999)
evals = [mk(erng)[:3] for _ in range(200)]


def enc(q, c):
    p = tok(render(q), add_special_tokens=False)["input_ids"]
    cc = tok(c + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return p + cc, ([*p] if a.allloss else [-100] * len(p)) + cc


data = [enc(q, c) for q, c in train]
print("example:", repr(render(train[0][0]) + train[0][1]), "len", len(data[0][0]), flush=True)
h = a.hidden
cfg = Qwen2Config(
    vocab_size=len(tok),
    hidden_size=h,
    intermediate_size=4 * h,
    num_hidden_layers=a.layers,
    num_attention_heads=h // 64,
    num_key_value_heads=h // 64,
    head_dim=64,
    max_position_embeddings=512,
    tie_word_embeddings=True,
    eos_token_id=tok.eos_token_id,
    pad_token_id=tok.pad_token_id,
)
m = Qwen2ForCausalLM(cfg)
opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))


def lr_at(s):
    if s < 30:
        return a.lr * (s + 1) / 30
    t = (s - 30) / max(1, a.steps - 30)
    return a.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


import re


def ext(t):
    r = re.findall(r"The answer is (.*?)\.", t)
    return r[-1].strip() if r else None


def evaluate(n_samples):
    m.eval()
    tok.padding_side = "left"
    res = {}
    prompts = [render(q) for q, _, _ in evals]
    gold = [g for _, g, _ in evals]
    encd = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        g = m.generate(
            **encd,
            do_sample=False,
            max_new_tokens=48,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    txt = tok.batch_decode(g[:, encd["input_ids"].shape[1] :], skip_special_tokens=True)
    res["greedy"] = sum(ext(t) == gd for t, gd in zip(txt, gold)) / len(gold)
    if n_samples:
        torch.manual_seed(0)
        with torch.no_grad():
            g = m.generate(
                **encd,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n_samples,
                max_new_tokens=48,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        txt = tok.batch_decode(g[:, encd["input_ids"].shape[1] :], skip_special_tokens=True)
        p1 = mj = pk = 0
        from collections import Counter

        for i, gd in enumerate(gold):
            ans = [ext(t) for t in txt[i * n_samples : (i + 1) * n_samples]]
            ok = [x == gd for x in ans]
            p1 += sum(ok) / n_samples
            pk += any(ok)
            cnt = Counter(x for x in ans if x is not None)
            mj += bool(cnt) and cnt.most_common(1)[0][0] == gd
        res.update(pass1=p1 / len(gold), maj=mj / len(gold), passk=pk / len(gold))
    m.train()
    return res


evs = {int(x) for x in a.evals.split(",")}
order = []
r2 = random.Random(0)
t0 = time.time()
losses = []
m.train()
for step in range(1, a.steps + 1):
    if len(order) < a.bs:
        more = list(range(len(data)))
        r2.shuffle(more)
        order += more
    idx, order = order[: a.bs], order[a.bs :]
    W = max(len(data[i][0]) for i in idx)
    ids = torch.full((a.bs, W), tok.pad_token_id)
    lab = torch.full((a.bs, W), -100)
    am = torch.zeros((a.bs, W), dtype=torch.long)
    for j, i in enumerate(idx):
        x, y = data[i]
        ids[j, : len(x)] = torch.tensor(x)
        lab[j, : len(y)] = torch.tensor(y)
        am[j, : len(x)] = 1
    for gr in opt.param_groups:
        gr["lr"] = lr_at(step - 1)
    loss = m(input_ids=ids, attention_mask=am, labels=lab).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    losses.append(loss.item())
    if step in evs:
        r = evaluate(8)
        row = dict(
            tag=a.tag,
            task=a.task,
            step=step,
            sec=round(time.time() - t0),
            loss=round(sum(losses[-50:]) / 50, 3),
            **{k: round(v, 3) for k, v in r.items()},
            args=vars(a),
        )
        print(json.dumps(row), flush=True)
        with open("runs/base_model_fast_sweep.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
