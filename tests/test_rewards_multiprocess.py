"""Group-level rewards are exact on two processes: a real two-process TRL GRPOTrainer run.

With ``per_device_train_batch_size=2`` and ``num_generations=4`` every prompt's group is split
across the two processes. The online majority-vote reward gathers the group; the rewards each
process computed must equal a single-process recomputation over the gathered completions, and
must differ from what a process would compute from its own half (so the test can fail).

Note: ``accelerate launch --num_processes 2 --cpu`` (accelerate 1.15, no mpirun) starts ONE
process (checked: WORLD_SIZE unset). ``accelerate launch --multi_gpu --num_processes 2`` starts two
torch.distributed processes, which run on CPU with gloo because the trainer config has
``use_cpu=True``; ``torchrun --nproc_per_node 2`` works the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfimprove.score.rewards import get_reward

SCRIPT = Path(__file__).parent / "scripts" / "grpo_rewards_run.py"
EXTRACT = {"extractor": "regex", "extractor_options": {"pattern": r"(\S)", "which": "first"}}


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_2proc")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_rewards_equal_single_process(two_process_run):
    r0, r1 = two_process_run
    assert r0["world"] == r1["world"] == 2
    logs = [h for h in r0["log_history"] if "rewards/majority_vote/mean" in h]
    differs_locally = False
    for name in ("majority_vote", "pseudo_label"):
        calls0 = [c for c in r0["calls"] if c["reward"] == name]
        calls1 = [c for c in r1["calls"] if c["reward"] == name]
        assert len(calls0) == len(calls1) == 2  # two steps
        for step, (c0, c1) in enumerate(zip(calls0, calls1, strict=True)):
            # the group really is split across processes
            assert set(c0["prompt_id"]) == set(c1["prompt_id"])
            single = get_reward(name, **EXTRACT)
            columns = {
                "prompts": c0["prompts"] + c1["prompts"],
                "prompt_id": c0["prompt_id"] + c1["prompt_id"],
                "pseudo_label": c0["pseudo_label"] + c1["pseudo_label"],
            }
            expected = single(c0["completions"] + c1["completions"], **columns)
            assert c0["rewards"] + c1["rewards"] == expected
            if name == "majority_vote":
                # TRL's logged mean is over the gathered rewards of both processes
                assert logs[step]["rewards/majority_vote/mean"] == pytest.approx(
                    sum(expected) / len(expected)
                )
                local = [
                    get_reward(name, **EXTRACT)(
                        c["completions"], prompts=c["prompts"], prompt_id=c["prompt_id"]
                    )
                    for c in (c0, c1)
                ]
                differs_locally |= local[0] + local[1] != expected
    assert differs_locally, "a per-process vote should differ from the gathered vote somewhere"
