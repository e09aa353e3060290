"""Robust evaluation: counts that add up across DDP ranks, the sanity checks, and nsl-eval on a
saved run (in this process)."""
import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import run_train
from nsl_lab.attacks.evaluation import CorrectCounts, RobustEvaluation, consistency_warnings, sanity_checks
from nsl_lab.errors import ConfigError
from nsl_lab.evaluate import evaluate, main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        counts = CorrectCounts(["a", "b"])
        # rank 0: 3 of 4 and 1 of 4 correct; rank 1: 1 of 2 and 2 of 2
        if rank == 0:
            counts.update({"a": torch.tensor([1, 1, 1, 0]), "b": torch.tensor([0, 0, 1, 0])}, 4)
        else:
            counts.update({"a": torch.tensor([1, 0]), "b": torch.tensor([1, 1])}, 2)
        result = counts.compute()
        with open(f"{out}/{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and Lightning: ~20 s
def test_counts_add_up_across_two_ddp_processes(tmp_path):
    mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result == {"a": pytest.approx(4 / 6), "b": pytest.approx(3 / 6)}  # not each rank's own shard


def test_counts_without_ddp_and_without_rows():
    counts = CorrectCounts(["a"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(counts.compute()["a"])
    counts.update({"a": torch.tensor([True, False, True])}, 3)
    assert counts.compute() == {"a": pytest.approx(2 / 3)}


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) + torch.randn(x.shape[0], 3)


def test_sanity_checks_flag_softmax_outputs_noise_and_dead_gradients():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    linear = nn.Linear(4, 3)
    values, warnings = sanity_checks(linear, x, y)
    assert values == {"test/sanity/zero_grad_frac": 0.0, "test/sanity/probability_like": 0.0,
                      "test/sanity/forward_max_diff": 0.0} and warnings == []

    _, warnings = sanity_checks(nn.Sequential(linear, nn.Softmax(dim=-1)), x, y)
    assert len(warnings) == 1 and "look like probabilities" in warnings[0]

    values, warnings = sanity_checks(Noisy(), x, y)
    assert values["test/sanity/forward_max_diff"] > 1e-2 and "not deterministic" in warnings[0]

    dead = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        dead[0].bias.fill_(-100.0)  # every ReLU off: the input gradient is exactly zero
    values, warnings = sanity_checks(dead, x, y)
    assert values["test/sanity/zero_grad_frac"] == 1.0 and "all-zero input gradient" in warnings[0]


def test_sanity_checks_restore_the_mode():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    model.train()
    sanity_checks(model, torch.randn(4, 4), torch.tensor([0, 1, 2, -1]))
    assert model.training


def test_pgd_below_autoattack_is_reported():
    assert consistency_warnings({"test/robust_acc/pgd/eps=0.1": 0.5, "test/robust_acc/autoattack/eps=0.1": 0.6})
    assert consistency_warnings({"test/robust_acc/pgd/eps=0.1": 0.6, "test/robust_acc/autoattack/eps=0.1": 0.5}) == []
    assert consistency_warnings({"test/robust_acc/pgd/eps=0.1": 0.5}) == []


def test_evaluation_counts_clean_worst_and_unlabeled_rows():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    y[:4] = -1
    evaluation = RobustEvaluation(["fgsm", "pgd"], [0.0, 0.5], settings={"pgd": {"steps": 5}})
    evaluation.update(model, x, y)
    metrics = evaluation.compute()
    clean = float((model(x).argmax(-1) == y)[4:].float().mean())
    assert evaluation.clean_accuracy() == pytest.approx(clean)
    for name in ("fgsm", "pgd", "worst"):
        assert metrics[f"test/robust_acc/{name}/eps=0"] == pytest.approx(clean)
    worst = metrics["test/robust_acc/worst/eps=0.5"]
    assert worst <= min(metrics["test/robust_acc/fgsm/eps=0.5"], metrics["test/robust_acc/pgd/eps=0.5"])
    assert worst < clean


@pytest.mark.parametrize("kwargs, message", [
    ({"attacks": ["cw"], "eps": [0.1]}, "attacks='cw' is not supported; allowed: 'fgsm', 'pgd'"),
    ({"attacks": ["pgd", "pgd"], "eps": [0.1]}, "holds a name twice"),
    ({"attacks": ["pgd"], "eps": [0.1, 0.1]}, "eps=[0.1, 0.1] holds a value twice"),
    ({"attacks": ["pgd"], "eps": [0.1], "norm": "l3"}, "norm='l3' is not supported"),
    ({"attacks": ["pgd"], "eps": [0.1], "settings": {"pgd": {"stepz": 3}}},
     "settings.pgd.stepz=3 is not a setting of attack 'pgd'"),
])
def test_bad_evaluation_settings_fail_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        RobustEvaluation(**kwargs)


DIGITS = ["experiment=digits_cnn", "trainer.max_epochs=2", "logger=none", "backbone.channels=[8,16]",
          "backbone.convs_per_stage=1", "backbone.hidden_size=32", "eval.settings.pgd.steps=3", "eval.eps=[0.1]"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("digits") / "run"
    _, metrics = run_train(DIGITS, run_dir, cache_dir, in_process=True)
    return run_dir, metrics


def test_nsl_eval_reproduces_the_training_time_figures(digits_run, tmp_path):
    run_dir, trained = digits_run
    out = tmp_path / "eval.json"
    metrics = evaluate(run_dir, ["eval.settings.pgd.steps=3", "eval.eps=[0.1,0.3]",
                                 "eval.attacks=[pgd,square]", "eval.settings.square.n_queries=20"], out=out,
                       device="cpu", progress=False)
    # The same code, seed and weights as the test stage of training: the same figures.
    assert metrics["test/acc"] == pytest.approx(trained["test/acc"])
    assert metrics["test/robust_acc/pgd/eps=0.1"] == pytest.approx(trained["test/robust_acc/pgd/eps=0.1"])
    written = json.loads(out.read_text())
    assert written["test/robust_acc/pgd/eps=0.3"] <= written["test/robust_acc/pgd/eps=0.1"]
    assert "test/robust_acc/worst/eps=0.3" in written and written["warnings"] == []
    assert written["weights"].endswith("model.pt")


def test_nsl_eval_on_the_validation_split(digits_run, tmp_path):
    run_dir, trained = digits_run
    main([str(run_dir), "eval.settings.pgd.steps=3", "eval.eps=[0.1]", "--split", "val", "--no-progress"])
    written = json.loads((run_dir / "eval_val.json").read_text())
    assert not any(key.startswith("test/") for key in written)
    # The saved (last-epoch) weights on the 180 validation images: training's own val/acc.
    assert written["val/acc"] == pytest.approx(trained["val/acc"])
    assert 0.0 <= written["val/robust_acc/pgd/eps=0.1"] <= written["val/acc"]


@pytest.mark.parametrize("args, message", [
    (["{run}/nothing"], "does not exist"),
    (["{run}", "--split", "train"], "split='train' is not supported; allowed: 'test', 'val'"),
    (["{run}", "eval.eps=[]"], "eval.eps=[] gives nothing to evaluate"),
    (["{run}", "eval.attacks=[cw]"], "eval.attacks='cw' is not supported"),
    (["{run}", "eval.eps"], "override 'eval.eps' is not key=value"),
    (["{run}/corrupt.pt"], "cannot be read as weights"),
    (["{run}", "evl.eps=[0.1]"], "evl.eps is not a setting of the saved config"),
    (["{run}", "eval.epz=[0.1]"], "eval.epz is not a setting of the saved config"),
    (["{run}/weightless"], "holds no model.pt; the run kept no weights: train it again with "
                           "checkpoint.save_model=true"),
    (["{run}/kept"], "holds no model.pt; give its checkpoint instead: {run}/kept/checkpoints/0a1b/last.ckpt"),
    (["{run}/kept/checkpoints/0a1b"], "give its checkpoint instead: {run}/kept/checkpoints/0a1b/last.ckpt"),
    (["{run}", "eval.eps=[0.1]", "--device", "cuda"], "device='cuda' but torch sees no CUDA GPU here"),
    (["{run}", "eval.eps=[0.1]", "--out", "{run}"], "out='{run}' cannot be written: it is a folder"),  # before attacking
])
def test_nsl_eval_bad_input_fails_in_one_line(digits_run, capsys, monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same message on a GPU machine
    run_dir, _ = digits_run
    (run_dir / "corrupt.pt").write_bytes(b"not a checkpoint")
    (run_dir / "weightless").mkdir(exist_ok=True)  # a run saved with checkpoint.save_model=false
    (run_dir / "weightless" / "config_resolved.yaml").write_text((run_dir / "config_resolved.yaml").read_text())
    (run_dir / "kept" / "checkpoints" / "0a1b").mkdir(parents=True, exist_ok=True)  # checkpoint.keep=true
    (run_dir / "kept" / "config_resolved.yaml").write_text((run_dir / "config_resolved.yaml").read_text())
    (run_dir / "kept" / "checkpoints" / "0a1b" / "last.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(run=run_dir) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith("nsl_lab: error:") and message.format(run=run_dir) in err[0]
