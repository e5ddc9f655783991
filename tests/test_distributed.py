"""Data-parallel training under torchrun (2 CPU processes, gloo) and the sharding helpers of leanvision.distributed."""

import json
import os
import subprocess
import sys

import pytest
import torch

from leanvision.cli import main
from leanvision.device import launch_env, local_device_name
from leanvision.distributed import contiguous_slice, is_main, world_size
from leanvision.runs import load_run

TRAIN = ["train", "--dataset", "digits", "--model", "seed-shallow", "--epochs", "3", "--device", "cpu",
         "--no-progress"]


@pytest.mark.parametrize("total, parts", [(128, 2), (129, 2), (5, 3), (3, 3), (1000, 7)])
def test_contiguous_slice_matches_tensor_split(total, parts):
    expected = torch.tensor_split(torch.arange(total), parts)
    for part in range(parts):
        lo, hi = contiguous_slice(total, part, parts)
        assert torch.equal(torch.arange(total)[lo:hi], expected[part])


def test_single_process_defaults(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch_env() is None and world_size() == 1 and is_main()
    assert local_device_name("auto") == "auto"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_env().local_rank == 1 and not is_main()
    assert local_device_name("auto") == ("cuda:1" if torch.cuda.is_available() else "cpu")
    assert local_device_name("cpu") == "cpu"


def test_torchrun_two_processes_write_once_and_match_one_process(tmp_path, capsys):
    ddp_out, one_out = tmp_path / "ddp", tmp_path / "one"
    env = {**os.environ, "LEANVISION_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LEANVISION_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "leanvision", *TRAIN, "--out", str(ddp_out)],
                          capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("seed-shallow on digits: test accuracy") == 1  # rank 0 alone reports
    lines = (ddp_out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # written once, by rank 0
    result = json.loads((ddp_out / "result.json").read_text())
    assert result["world_size"] == 2 and result["epochs_run"] == 3
    assert json.loads((ddp_out / "config.json").read_text())["environment"]["world_size"] == 2
    run = load_run(ddp_out)  # weights load into the model described by model.json
    assert sum(p.numel() for p in run.model.parameters()) == result["num_params"]
    assert not list(ddp_out.glob("*.tmp")) and not list(ddp_out.glob(".*.tmp"))

    # same global batch (--batch-size is images per optimizer step in both) -> same accuracy within noise
    assert main([*TRAIN, "--out", str(one_out)]) == 0
    single = json.loads((one_out / "result.json").read_text())
    assert abs(result["test_accuracy"] - single["test_accuracy"]) <= 0.03
    first_ddp, first_one = json.loads(lines[0]), json.loads((one_out / "metrics.jsonl").read_text().splitlines()[0])
    assert first_ddp["train_loss"] == pytest.approx(first_one["train_loss"], rel=1e-3)  # exact loss weighting
