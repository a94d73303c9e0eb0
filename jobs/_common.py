"""Shared by the job entry points: Ray start-up (local or an existing cluster), logging and CLI parsing."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import socket
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from simhand_ray.config import Bounds, config_class  # noqa: E402  (needs the repo on sys.path)


class NumberArg:
    """argparse ``type=``: a number of ``kind`` within ``bounds``; a bad value exits 2 with
    "argument --every-n: must be >= 1, got 0"."""

    def __init__(self, kind: type, bounds: Bounds):
        self.kind, self.bounds = kind, bounds

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if self.kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if msg := self.bounds.error(value):
            raise argparse.ArgumentTypeError(msg)
        return value

    def __repr__(self) -> str:
        return f"{self.kind.__name__} {self.bounds}"


def int_range(lo: int | None = None, hi: int | None = None) -> NumberArg:
    """``type=`` of an integer option in [lo, hi] (an end that is None is unbounded)."""
    return NumberArg(int, Bounds(lo, hi))


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> NumberArg:
    """``type=`` of a float option in [lo, hi], or (lo, hi] with ``lo_open``."""
    return NumberArg(float, Bounds(lo, hi, lo_open))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The jobs' --help: the module docstring as written, and after each option its range and default
    ("(>= 1; default: 30)", as ArgumentDefaultsHelpFormatter would, but also for options without help and
    without None, False and empty defaults)."""

    def _format_action(self, action: argparse.Action) -> str:
        notes = [str(action.type.bounds)] if isinstance(action.type, NumberArg) else []
        help, default = action.help or "", action.default
        quiet = default is None or default is False or default is argparse.SUPPRESS or default in ("", [], ())
        if action.option_strings and not quiet and "%(default)" not in help:
            notes.append("default: %(default)s")
        if notes:
            action = copy.copy(action)
            action.help = f"{help} ({'; '.join(notes)})".lstrip()
        return super()._format_action(action)


NUMBER_TYPES = {"int": int, "float": float}


def _option(f: dataclasses.Field, dest: str, default):
    """(flags, add_argument kwargs) of one config field, from its type and its ``config.opt`` metadata."""
    meta, kind = f.metadata, str(f.type)
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    kw: dict = {"dest": dest, "help": meta.get("help") or None}
    if kind != "bool" and not meta.get("choices"):
        kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
    if kind == "bool":
        # on by default: --x / --no-x; off by default: --x
        kw.update(action=argparse.BooleanOptionalAction if default else "store_true", default=default)
    elif kind.startswith("tuple[str"):
        kw.update(action="append", default=[])
    elif kind.startswith(("tuple[int", "tuple[float")):     # one or more numbers: --seeds 0 1 2
        number, bounds = NUMBER_TYPES[kind[6:].split(",")[0].strip(" .]")], meta.get("bounds")
        kw.update(nargs="+", type=NumberArg(number, bounds) if bounds else number, default=default)
    elif kind in ("int", "float"):
        bounds = meta.get("bounds")
        kw.update(type=NumberArg(NUMBER_TYPES[kind], bounds) if bounds else NUMBER_TYPES[kind], default=default)
    elif kind == "str":
        kw.update(default=default, choices=meta.get("choices"))
    else:
        raise TypeError(f"{dest}: no command-line form for a field of type {kind}; mark it cli=False")
    return [flag], kw


def add_config_args(parser, cls: type, skip: tuple[str, ...] = (), _path: str = "") -> None:
    """Add an option for every field of the config dataclass ``cls`` (and of its sections, flattened), with
    the default, help, range and choices written in the dataclass; ``skip`` names fields (dotted for
    sections) the job adds itself. ``config_from_args`` builds the config back from the parsed options."""
    for f in dataclasses.fields(cls):
        dest = _path + f.name
        if not f.metadata.get("cli", True) or dest in skip:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if (sub := config_class(f.type)) is not None:
            add_config_args(parser, sub, skip, dest + ".")
            continue
        flags, kw = _option(f, dest, default)
        parser.add_argument(*flags, **kw)


def config_from_args(cls: type, args: argparse.Namespace, _path: str = "", **given):
    """The config ``cls`` from options added by ``add_config_args``; ``given`` sets fields directly (those the
    job parses itself). A list option becomes a tuple; an option left None keeps the field's default."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        dest = _path + f.name
        if f.name in given:
            kwargs[f.name] = given[f.name]
        elif (sub := config_class(f.type)) is not None:
            kwargs[f.name] = config_from_args(sub, args, dest + ".")
        elif getattr(args, dest, None) is not None:
            value = getattr(args, dest)
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("SIMHAND_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # faiss's loader says at INFO which CPU build it could not load before loading the one that works
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def init_ray(num_cpus: int | None = None, worker_logs: bool = True) -> bool:
    """Connect to the cluster this job was submitted to (RAY_ADDRESS), else start a local Ray. Returns True
    for an existing cluster (which may autoscale), False for a Ray of this process's own (which cannot).

    Only the non-secret S3 settings (region, endpoint) go to the workers through ``runtime_env``, which Ray
    logs and shows in its jobs API; credentials never do. A local Ray's workers inherit this process's
    environment, credentials included; a cluster's workers use their node's (README, "Credentials").
    ``worker_logs=False`` keeps the workers' output in Ray's log files instead of this terminal (for a job
    that drives many runs and prints a line for each).
    """
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")   # the jobs draw their own (simhand_ray.progress)
    import ray

    from simhand_ray import storage

    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    # Ray Data's INFO lines (execution plans, where its logs are) and its note about the bars switched off
    # above would stand between our stage lines; its warnings and errors still show
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    env_vars = storage.aws_env()
    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    kwargs = dict(ignore_reinit_error=True, logging_level="WARNING", log_to_driver=worker_logs)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env_vars}, **kwargs)
    else:
        # Ray Train's controller asks the state API about its actors; in a process without RAY_ADDRESS
        # that API auto-detects the cluster and fails when a second Ray runs on this machine. Pin it
        # to this cluster's dashboard, on a port chosen here so it is known before Ray starts.
        port = free_port()
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # address="local": a Ray of this job's own, even where `ray start` left a cluster that ray.init() would
        # otherwise join (found through /tmp/ray/ray_current_cluster) and refuse the arguments above for
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_port=port,
                 runtime_env={"env_vars": env_vars}, **kwargs)
    alive = sum(1 for n in ray.nodes() if n["Alive"])
    logging.getLogger("simhand").info("Ray cluster now: %d node(s), %s (an autoscaling cluster adds nodes "
                                      "for requests that do not fit)", alive, format_resources(ray.cluster_resources()))
    return bool(os.environ.get("RAY_ADDRESS"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def format_resources(res: dict) -> str:
    """{CPU, GPU, memory, object store, custom} of ``ray.cluster_resources()``, without per-node entries."""
    gib = 2.0 ** 30
    out = {"CPU": res.get("CPU", 0), "GPU": res.get("GPU", 0), "memory": f"{res.get('memory', 0) / gib:.1f} GiB",
           "object_store": f"{res.get('object_store_memory', 0) / gib:.1f} GiB"}
    out.update({k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")
                and not k.startswith(("node:", "accelerator_type:"))})
    return "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in out.items()) + "}"
