"""End to end through the nsl-train entry point, in this process: adversarial runs on digits, with the
graph regularizer on Cora and with propagated labels on the digits graph."""
import pytest

from conftest import run_train

DIGITS = ["experiment=digits_cnn", "trainer.max_epochs=3", "logger=none", "backbone.channels=[8,16]",
          "backbone.convs_per_stage=1", "data.label_frac=0.5",
          "backbone.hidden_size=32", "eval.settings.pgd.steps=3"]


def test_adversarial_run_on_digits_writes_robust_accuracies(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    _, metrics = run_train([*DIGITS, "regularizer=adversarial_pgd", "regularizer.adversarial.pgd_iterations=2"],
                           run_dir, cache_dir, in_process=True)
    keys = [f"test/robust_acc/pgd/eps={e}" for e in ("0", "0.05", "0.1", "0.2", "0.3")]
    assert set(keys) <= set(metrics)
    robust = [metrics[k] for k in keys]
    assert metrics[keys[0]] == metrics["test/acc"] > 0.3  # eps 0 is the clean accuracy (chance: 0.1)
    assert all(a >= b for a, b in zip(robust, robust[1:]))  # stronger attacks never help
    assert robust[-1] < metrics["test/acc"]
    resolved = (run_dir / "config_resolved.yaml").read_text()
    assert "AdversarialRegularizer" in resolved and "pgd_iterations: 2" in resolved


def test_graph_and_adversarial_regularizers_combine_on_cora(tmp_path, data_root, cache_dir):
    # Three epochs of one step each: log every step, so the CSV holds the training terms.
    _, metrics = run_train(["regularizer=graph_adversarial", "data.label_frac=0.05", "trainer.max_epochs=3",
                            "trainer.log_every_n_steps=1", "logger=csv"], tmp_path / "run", cache_dir, data_root,
                           in_process=True)
    assert not any(k.startswith("test/robust") for k in metrics)
    logged = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/adversarial_loss" in logged and "train/graph_loss" in logged


def test_propagated_labels_and_vat_combine_on_the_digits_graph(tmp_path, cache_dir):
    # Six steps on 1% labels: both terms train on the unlabeled images of every batch.
    _, metrics = run_train(["experiment=digits_label_frac", "regularizer=[propagated,vat]", "trainer.max_steps=6",
                            "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "logger=csv",
                            "eval.settings.pgd.steps=2"], tmp_path / "run", cache_dir, in_process=True)
    assert metrics["n_labeled"] == 10
    assert 0.0 <= metrics["test/robust_acc/pgd/eps=0.1"] <= metrics["test/acc"]
    logged = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/vat_loss" in logged and "train/propagated_loss" in logged


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.attacks=[cw]"], "eval.attacks='cw' is not supported; allowed: 'fgsm', 'pgd', 'apgd-ce', 'apgd-t', "
                                "'square', 'autoattack'"),
        (["eval.eps=[0.1,-1]"], "eval.eps=-1 is out of range"),
        (["+eval.steps=3"], "eval.steps=3 is not a setting of the robust evaluation; allowed: attacks"),
        (["+eval.settings.pgd.stepz=3"], "eval.settings.pgd.stepz=3 is not a setting of attack 'pgd'"),
        (["regularizer=adversarial", "regularizer.adversarial.adv_grad_norm=l3"],
         "adversarial.adv_grad_norm='l3' is not supported; allowed: 'linf', 'l2', 'l1'"),
    ],
)
def test_bad_adversarial_settings_fail_in_one_line(tmp_path, cache_dir, overrides, message):
    completed, metrics = run_train([*DIGITS, *overrides], tmp_path / "run", cache_dir, check=False, in_process=True)
    errors = [line for line in completed.stderr.splitlines() if line.startswith("nsl_lab: error:")]
    assert completed.returncode == 2 and metrics is None
    assert len(errors) == 1 and message in errors[0], completed.stderr[-2000:]


def test_the_robust_preset_tests_and_saves_the_averaged_weights(tmp_path, cache_dir):
    """experiment=digits_robust (callbacks=ema): model.pt holds the exponential moving average
    that the last checkpoint keeps beside the raw weights, not the raw ones."""
    import torch

    run_dir = tmp_path / "run"
    small = [o for o in DIGITS if not o.startswith("experiment=")]
    _, metrics = run_train(["experiment=digits_robust", *small, "trainer.max_epochs=2", "checkpoint.every_n_epochs=1", "checkpoint.keep=true",
                            "regularizer.adversarial.pgd_iterations=2", "eval.eps=[0.1]"], run_dir, cache_dir,
                           in_process=True)
    assert "test/robust_acc/pgd/eps=0.1" in metrics
    (last,) = run_dir.glob("checkpoints/*/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    average = {k.removeprefix("backbone."): v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
    raw = {k.removeprefix("backbone."): v for k, v in checkpoint["current_model_state"].items()
           if k.startswith("backbone.")}
    floats = [k for k, v in saved.items() if v.is_floating_point()]
    assert floats and all(torch.equal(saved[k], average[k]) for k in floats)
    assert not all(torch.equal(saved[k], raw[k]) for k in floats)
