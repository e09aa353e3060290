"""``nsl-train``: train and test one model (or a sweep with ``-m``); see conf/train.yaml.

    nsl-train data.label_frac=0.01
    nsl-train -m regularizer=none,graph seed=0,1,2
    nsl-train -m sweep=cora_label_frac

``python scripts/train.py`` is the same command.
"""
from __future__ import annotations

import time

# Before the imports below: a process's first job counts them in its start-up time.
_STARTED_AT, _CPU_STARTED_AT = time.perf_counter(), time.process_time()

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nsl_lab import multirun  # noqa: E402
from nsl_lab.compose import CONF_DIR, check_overrides  # noqa: E402
from nsl_lab.errors import NslLabError, find_error, one_line_errors  # noqa: E402
from nsl_lab.files import FAILED_FILE, METRICS_FILE, clear_failure, read_json, write_failure  # noqa: E402
from nsl_lab.resume import drop_checkpoints, finished_metrics  # noqa: E402
from nsl_lab.run import summary_line, train  # noqa: E402

log = logging.getLogger("nsl_lab.train")
#: jobs this process has run (a joblib worker runs many): only the first counts the imports
_jobs_run = 0


def job(cfg: DictConfig) -> float:
    """One Hydra job: a run, or in a multirun one job of the sweep."""
    global _jobs_run
    _jobs_run += 1
    started_at, cpu_started_at = ((_STARTED_AT, _CPU_STARTED_AT) if _jobs_run == 1
                                  else (time.perf_counter(), time.process_time()))
    output_dir = HydraConfig.get().runtime.output_dir
    in_multirun = multirun.in_multirun()
    multirun.default_threads(cfg)
    multirun.ddp_inside_multirun(cfg)
    done = finished_metrics(cfg, output_dir)
    if in_multirun and done is not None:
        log.info("already finished in %s: skipped", output_dir)
        return done.get("test/acc", float("nan"))
    if done is None and (Path(output_dir) / METRICS_FILE).is_file():  # a sweep re-launched with other values
        log.warning("%s holds a finished run of another configuration: this run replaces it", output_dir)
    multirun.one_gpu_per_job(cfg)
    try:
        metrics = train(cfg, output_dir, started_at, cpu_started_at)
    except Exception as error:
        known = find_error(error, NslLabError)
        message = f"nsl_lab: error: {known}" if known is not None else None
        write_failure(output_dir, error, message)
        if in_multirun:
            # One bad job must not stop the sweep: the report lists it from failed.json.
            log.error("job failed (%s): %s", output_dir, message or repr(error))
            return float("nan")
        if known is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(2)
    clear_failure(output_dir)
    drop_checkpoints(cfg, output_dir)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(summary_line(metrics, output_dir), flush=True)
    return metrics.get("test/acc", float("nan"))


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): at the end of a multirun, one line per failed
    job and exit status 1 when any failed. The sweep itself goes on past a failed job. The jobs'
    ``failed.json`` are read from the sweep directory, so jobs in worker processes count too;
    only files written since this launch began, so a re-used sweep directory's old failures
    (of jobs this launch did not run) do not."""

    def __init__(self) -> None:
        self._began_ns = time.time_ns()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._began_ns = time.time_ns()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)

        def this_launch(path: Path) -> bool:
            return path.stat().st_mtime_ns >= self._began_ns

        failed = sorted(p for p in sweep_dir.glob(f"*/{FAILED_FILE}") if this_launch(p))
        if not failed:
            return
        jobs = sum(this_launch(p) for p in sweep_dir.glob("*/.hydra/overrides.yaml"))
        lines = [f"nsl_lab: error: {len(failed)} of {jobs} jobs failed (python scripts/report.py {sweep_dir} lists them):"]
        for path in failed:
            message = str((read_json(path) or {}).get("message", "no message")).strip()
            first_line = message.splitlines()[0] if message else "no message"
            lines.append(f"  {path.parent}: {first_line.removeprefix('nsl_lab: error: ')}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> None:
    """The console command: checks group options, then hands over to Hydra."""
    with one_line_errors():
        check_overrides(sys.argv[1:], CONF_DIR)
    try:
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(job)()
    finally:
        # Hydra leaves its runtime config set after the command: nsl_lab code called later in
        # this process (the Python API) would read this command's group choices and overrides.
        HydraConfig.instance().cfg = None


if __name__ == "__main__":
    main()
