"""Where the configs are, composing them from Python (benchmarks, notebooks, tests) without
the Hydra CLI, and checking group options before Hydra sees them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from nsl_lab.errors import ConfigError, check_overrides_list
from nsl_lab.resume import drop_checkpoints
from nsl_lab.run import train


def find_conf_dir() -> Path:
    """``conf/`` at the top of a source checkout (editable installs), else the copy packaged
    inside the installed library."""
    here = Path(__file__).resolve().parent
    checkout = here.parents[1] / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    return here / "conf"


CONF_DIR = find_conf_dir()
#: group values Hydra accepts that are not files
NOT_OPTIONS = {"null", "None", ""}


def compose_train(overrides: list[str], conf_dir: str | Path = CONF_DIR) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``; an override Hydra cannot apply (a key the config
    does not have, a delete of a missing key) raises one line instead of Hydra's several."""
    try:
        with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    except Exception as error:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors, in one line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:2]) or type(error).__name__, "overrides") from None


def compose_config(overrides: list[str], output_dir: str | Path, conf_dir: str | Path = CONF_DIR) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, writing into ``output_dir``."""
    overrides = check_overrides_list(overrides, "data.label_frac=0.05")
    if not isinstance(output_dir, (str, Path)) or Path(output_dir).is_file():
        raise ConfigError(f"output_dir={output_dir!r} must be a folder path (made if missing)", "output_dir")
    check_group_options(overrides, conf_dir)
    return compose_train([*overrides, f"paths.output_dir={output_dir}"], conf_dir)


def parse_overrides(arguments: list[str]) -> list[tuple[str, Any]]:
    """Each override of a command line (flags such as ``-m`` left out) with Hydra's parse of
    it; one that does not parse stops in one line naming it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    # key=value, +key=value, ~key; a bare word is the value of a Hydra flag (--cfg job, -cn train)
    for argument in (a for a in arguments if not a.startswith("-") and ("=" in a or a.startswith("~"))):
        try:
            (override,) = parser.parse_overrides([argument])
        except Exception as error:  # noqa: BLE001 - the grammar's message, named by its override
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"override {argument!r} cannot be parsed: {message}", "overrides") from None
        parsed.append((argument, override))
    return parsed


def check_overrides(arguments: list[str], conf_dir: str | Path = CONF_DIR) -> None:
    """The command line checked before Hydra runs it: a group option that does not exist
    (:func:`check_group_options`), a value that does not parse, or a key the config lacks
    stops in one line (exit 2 in ``nsl-train``) instead of Hydra's several lines and exit 1.
    The command line is composed once for that (a sweep: its first job); Hydra's own modes are
    left to Hydra."""
    parsed = check_group_options(arguments, conf_dir)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in arguments):
        return  # --config-name, --cfg, --info ...: Hydra's own modes
    first_job = []
    for argument, override in parsed:
        if override.key_or_group.startswith("hydra"):
            continue
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return  # a range or interval for a sweeper plugin: left to Hydra
            # A sweep's first job: a misspelt key fails here; a value that breaks only some
            # jobs is their own failed.json.
            first = next(iter(override.sweep_string_iterator()), None)
            argument = f"{override.get_key_element()}={first}" if first is not None else argument
        first_job.append(argument)
    compose_train(first_job, conf_dir)


def run_overrides(overrides: list[str], output_dir: str | Path) -> dict[str, float]:
    """Trains and tests one configuration in this process; returns its metrics. As ``nsl-train``,
    it drops the run's resume checkpoint once the run finished (``checkpoint.keep=true`` keeps it)."""
    cfg = compose_config(overrides, output_dir)
    metrics = train(cfg, output_dir)
    drop_checkpoints(cfg, output_dir)
    return metrics


def group_options(conf_dir: str | Path, group: str) -> list[str] | None:
    """The options of a config group (``regularizer`` -> ``[adversarial, ...]``), ``None``
    when ``group`` is not a group."""
    folder = Path(conf_dir) / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _option_names(value: Any) -> Iterable[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _option_names(item)
    elif value is not None:
        yield str(value)


def check_group_options(arguments: list[str], conf_dir: str | Path = CONF_DIR) -> list[tuple[str, Any]]:
    """An override that picks an option a config group does not have (``regularizer=grpah``)
    stops here with one line listing the options, instead of Hydra's search-path dump;
    returns the parsed overrides (:func:`parse_overrides`)."""
    parsed = parse_overrides(arguments)
    for _, override in parsed:
        group = override.key_or_group
        if group.startswith("hydra"):  # launchers and sweepers are Hydra plugins, not files here
            continue
        options = group_options(conf_dir, group)
        if options is None or override.is_delete():
            continue
        if group == "sweep" and override.is_sweep_override():  # a preset is a whole sweep: Hydra would run plain jobs
            raise ConfigError(f"sweep={','.join(override.sweep_string_iterator())} picks several sweep presets; run one "
                              "preset per command (nsl-train -m sweep=<name>)", "sweep")
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                continue
            values = list(override.sweep_string_iterator())
        else:
            values = list(_option_names(override.value()))
        for value in values:
            names = [v.strip() for v in value.strip("[]").split(",")] if value.startswith("[") else [value]
            for name in names:
                if name not in NOT_OPTIONS and name not in options:
                    raise ConfigError(f"{group}={name} is not an option of the {group} group; allowed: "
                                      f"{', '.join(options)}", group)
    return parsed
