"""Data parallelism (src/latlab/parallel.py): two processes on CPU (gloo) train the same model as one process on the
whole batch; LAT's per-process adversaries still leave every process with the same weights; a training stage with
`model.processes: 2` reruns itself under the launcher and only process 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latlab import parallel
from latlab.config import ConfigError
from tests.settings import with_params

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def _worker(tmp_path: Path, method: str, processes: int) -> Path:
    out = tmp_path / f"{method}-{processes}"
    out.mkdir()
    command = ([sys.executable, "-m", "dp_worker"] if processes == 1
               else parallel.launch_command(processes, "dp_worker", []))
    done = subprocess.run([*command, str(out), method], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _weights(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"rank{rank}.pt")


def test_shard_takes_every_nth_item_and_refuses_uneven_batches(monkeypatch):
    monkeypatch.setattr(parallel, "world_size", lambda: 2)
    monkeypatch.setattr(parallel, "rank", lambda: 1)
    assert parallel.shard(list(range(8))) == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="batch of 7 does not split evenly over 2"):
        parallel.shard(list(range(7)))


def test_single_process_functions_are_no_ops():
    grad = torch.ones(3)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = grad.clone()
    parallel.average_gradients([param])
    assert not parallel.launched() and parallel.world_size() == 1 and parallel.is_main()
    assert torch.equal(param.grad, grad) and parallel.summed({"a": 2}) == {"a": 2}
    loss = torch.tensor(1.5)
    assert parallel.mean(loss) is loss


def test_params_refuse_batches_that_do_not_split_over_processes():
    with pytest.raises(ConfigError, match=r"base\.batch_size 64 does not split over model\.processes 3"):
        with_params({"model": {"processes": 3}})
    with pytest.raises(ConfigError, match="model.processes"):
        with_params({"model": {"processes": 0}})
    assert with_params({"model": {"processes": 2}}).model.processes == 2


def test_two_processes_train_like_one_process_on_the_whole_batch(tmp_path):
    one = _worker(tmp_path, "sft", 1)
    two = _worker(tmp_path, "sft", 2)
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert single["world"] == 1 and single["seen"] == [8] * 4
    assert [r["world"] for r in ranks] == [2, 2] and all(r["seen"] == [4] * 4 for r in ranks)
    # the logged loss is the mean over processes = the whole batch's loss
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    reference = _weights(one, 0)
    for rank in (0, 1):
        for name, value in _weights(two, rank).items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(v, _untrained()[k]) for k, v in reference.items())


def _untrained() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(TESTS))
    try:
        from dp_worker import tiny_model
    finally:
        sys.path.remove(str(TESTS))
    return tiny_model().state_dict()


def test_lat_processes_end_with_the_same_weights_and_count_all_work(tmp_path):
    one = _worker(tmp_path, "lat", 1)
    two = _worker(tmp_path, "lat", 2)
    first, second = _weights(two, 0), _weights(two, 1)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6, msg=name)
    # each process attacked and trained on its half of each batch; summed, the work is exactly the one-process run's
    single = json.loads((one / "rank0.json").read_text())["compute"]
    assert json.loads((two / "rank0.json").read_text())["compute"] == single and single["forward_tokens"] > 0


def test_gpu_launch_command_is_one_accelerate_accepts(monkeypatch):
    from accelerate.commands.launch import launch_command_parser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    command = parallel.launch_command(4, "stages.lat", ["--section", "lat"])
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(command[3:])
    assert args.multi_gpu and args.num_processes == 4 and args.module
    assert args.training_script == "stages.lat" and args.training_script_args == ["--section", "lat"]
