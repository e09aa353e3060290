"""Ships conf/ (kept at the repository's top, where users expect it) inside the wheel as
nsl_lab/conf, so a non-editable install composes the same configs (see nsl_lab.compose)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "nsl_lab" / "conf"
        shutil.copytree(HERE / "conf", target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithConfigs})
