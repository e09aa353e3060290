"""A non-editable install ships the configs and the nsl-train command, which behaves exactly
as the checkout's scripts/train.py, from any directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, run_train


@pytest.mark.slow
def test_wheel_ships_configs_and_nsl_train_matches_the_checkout(tmp_path, data_root, cache_dir):
    wheels, target, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("nsl_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nsl_lab/conf/train.yaml" in names and "nsl_lab/conf/regularizer/graph_kl.yaml" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)

    overrides = ["data.label_frac=0.01", "trainer.max_epochs=20", "logger=none", "num_threads=1"]
    env = {**os.environ, "NSL_LAB_DATA": str(data_root), "NSL_LAB_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(target)}  # the installed copy, not the checkout
    installed = subprocess.run([sys.executable, str(target / "bin" / "nsl-train"), *overrides], cwd=empty, env=env,
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    (metrics_path,) = empty.glob("outputs/*/*/metrics.json")
    assert (metrics_path.parent / "config_resolved.yaml").is_file()
    assert str(target / "nsl_lab" / "conf") in subprocess.run(
        [sys.executable, "-c", "import nsl_lab.compose as c; print(c.CONF_DIR)"], cwd=empty, env=env,
        capture_output=True, text=True).stdout

    _, checkout = run_train(overrides, tmp_path / "checkout", cache_dir, data_root)
    assert json.loads(metrics_path.read_text())["test/acc"] == checkout["test/acc"]
