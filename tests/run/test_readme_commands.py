"""The README's everyday nsl-train commands run as written (each cut short with debug=fast)."""
from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO, run_train
from nsl_lab.compose import CONF_DIR

# End-to-end runs in a subprocess: part of CI, outside the fast inner loop.
pytestmark = pytest.mark.slow


def readme_commands() -> list[list[str]]:
    """The overrides of every ``NSL_LAB_DATA=... nsl-train ...`` line of the README (set-up lines included)."""
    readme = (REPO / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.splitlines():
            command = line.split("#")[0].split("&&")[-1].strip()
            words = shlex.split(command)
            if "nsl-train" in words:
                found.append(words[words.index("nsl-train") + 1:])
    return found


COMMANDS = readme_commands()


def test_the_readme_has_its_commands():
    assert ["data.label_frac=0.01"] in COMMANDS  # the main job
    assert len(COMMANDS) >= 4


@pytest.mark.parametrize("overrides", [c for c in COMMANDS if "-m" not in c], ids=" ".join)
def test_readme_run_command_works(overrides, tmp_path, data_root, cache_dir):
    _, metrics = run_train([*overrides, "debug=fast", "logger=none"], tmp_path / "run", cache_dir, data_root)
    assert metrics is not None and "test/acc" in metrics


@pytest.mark.parametrize("overrides", [c for c in COMMANDS if "-m" in c], ids=" ".join)
def test_readme_sweep_command_composes(overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if o != "-m"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params  # a preset that sweeps
