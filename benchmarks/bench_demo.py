"""Demo wall-clock and peak memory: from a fresh checkout, and again with the venv present.

Targets: `make demo` from a fresh checkout (setup included) in at most 8 minutes on the 2-core
machine, at most 5 minutes with the virtual environment present, peak memory at most 8 GB.

What it does:
1. `git clone` the repository (HEAD of the current checkout) into a temporary folder;
2. "fresh": runs `make demo` there with an empty `SELFIMPROVE_CACHE` and no `.venv` (so the
   virtual environment is created, with an empty uv cache; if setup falls back to pip, pip may
   reuse its download cache unless `--no-pip-cache`). The demo's base model ships with the
   package, so nothing is built before the rounds;
3. "cached": runs `selfimprove demo` again in the same clone with a new run folder (venv reused,
   the demo's rounds redone).

Peak memory is the largest sum of the resident set sizes of `make` and all its descendants
(vLLM engine processes included), sampled every 0.5 s with psutil: the number to hold against
the 8 GB target, since one process's `ru_maxrss` misses the engine processes.

    python benchmarks/bench_demo.py --out benchmarks/results/demo/timing.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
# Run with any python3 (the venv is what the fresh run creates): machine_info reads the CPU name
# through the checkout's package, which needs only the standard library to import.
sys.path.insert(0, str(REPO))
from bench_selftrain import machine_info  # noqa: E402  (benchmarks/ is on sys.path as a script)


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (processes gone meanwhile are skipped)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd``; wall seconds, peak tree RSS (GiB) and the exit code."""
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss(ps))
                time.sleep(0.5)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        done.set()
        th.join()
    return {"seconds": round(time.time() - t0, 1), "peak_gib": round(peak / 2**30, 2), "rc": rc}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    ap.add_argument("--workdir", default=None, help="where to clone (default: a temporary folder)")
    ap.add_argument("--no-pip-cache", action="store_true", help="set PIP_NO_CACHE_DIR=1 for the fresh run")
    ap.add_argument("--skip-cached", action="store_true", help="only the fresh-checkout run")
    ap.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="si-bench-demo-"))
    clone = work / "repo"
    cache = work / "cache"
    if clone.exists():
        shutil.rmtree(clone)
    commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=REPO, text=True).strip()
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "SELFIMPROVE_"))}
    env["SELFIMPROVE_CACHE"] = str(cache)
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    if args.no_pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    # setup_env.sh installs with uv: an empty uv cache per fresh run, so nothing is reused from
    # earlier runs on this machine (a first `make demo` on a fresh machine has no uv cache either).
    env["UV_CACHE_DIR"] = str(work / "uv-cache")
    shutil.rmtree(work / "uv-cache", ignore_errors=True)
    cpu = machine_info()["cpu"]  # before the long runs: a failure here costs nothing
    load0 = os.getloadavg()
    rows = {}
    rows["fresh"] = timed(["make", "demo"], clone, env, work / "fresh.log")
    print("fresh:", rows["fresh"], flush=True)
    if not args.skip_cached and rows["fresh"]["rc"] == 0:
        env2 = dict(env)
        rows["cached"] = timed(
            [
                str(clone / ".venv" / "bin" / "selfimprove"),
                "demo",
                "--out",
                "runs/demo-cached",
                "--no-progress",
            ],
            clone,
            env2,
            work / "cached.log",
        )
        print("cached:", rows["cached"], flush=True)
    load1 = os.getloadavg()
    summary_path = clone / "runs" / "demo" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    hist = summary.get("history", [])
    table = "\n".join(
        f"| {r['round']} | {100 * r.get('eval/pass@1', float('nan')):.1f} | {100 * r.get('eval/maj@8', float('nan')):.1f} "
        f"| {100 * r.get('eval/pass@8', float('nan')):.1f} |"
        for r in hist
    )
    md = [
        "# Demo wall-clock and peak memory",
        "",
        f"- Command: `python benchmarks/bench_demo.py {' '.join(sys.argv[1:])}`",
        f"- Commit: {commit}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end",
        "- fresh = `git clone` then `make demo` with no `.venv` and an empty `SELFIMPROVE_CACHE` "
        "(virtual environment created; the base model ships with the package); cached = "
        "`selfimprove demo` again in the same clone (venv reused, rounds redone). Peak = largest "
        "summed RSS of the process tree (vLLM engine processes included), sampled every 0.5 s.",
        "",
        "| run | wall s | wall min | peak GiB | exit | target |",
        "|---|---|---|---|---|---|",
    ]
    targets = {"fresh": "<= 8 min, <= 8 GB", "cached": "<= 5 min, <= 8 GB"}
    for name, r in rows.items():
        md.append(
            f"| {name} | {r['seconds']} | {r['seconds'] / 60:.1f} | {r['peak_gib']} | {r['rc']} | {targets[name]} |"
        )
    if hist:
        md += [
            "",
            "Rounds of the fresh run (held-out eval, percent):",
            "",
            "| round | pass@1 | maj@8 | pass@8 |",
            "|---|---|---|---|",
            table,
        ]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["rc"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
