"""Every numeric option of every job is range-checked by argparse ("argument --every-n: must be >= 1, got 0",
exit 2), the defaults pass their own checks, and --help shows ranges and defaults. Parsing only: no Ray."""
from __future__ import annotations

import pytest

from conftest import load_job
from simhand_ray.config import Bounds, FilterConfig, GraphConfig, IndexConfig, LabelConfig, LabelerConfig, PairsConfig

JOBS = {  # job -> its required arguments (all it needs to parse)
    "mine": ["--output", "out"],
    "pretrain": ["--pairs", "pairs", "--output", "out"],
    "finetune": ["--data-root", "data", "--output", "out"],
    "evaluate": [],
    "synth": ["--output", "out"],
    "compare": ["--mine", "mine", "--output", "out"],
}

MODULES = {name: load_job(name) for name in JOBS}      # loading a job puts jobs/ on sys.path

from _common import NumberArg  # noqa: E402


def job(name: str):
    return MODULES[name]


def parser(name: str):
    return job(name).build_parser()


def ranged(name: str) -> list:
    """The range-checked options of a job."""
    return [a for a in parser(name)._actions if isinstance(a.type, NumberArg)]


def rejects(name: str, argv: list[str], capsys) -> str:
    """argparse's message for ``argv`` after the required arguments; asserts it exits with code 2."""
    with pytest.raises(SystemExit) as e:
        parser(name).parse_args(JOBS[name] + argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def outside(action) -> list[str]:
    """Values just outside an option's range: below the low end (the end itself when open), above the high."""
    b, kind = action.type.bounds, action.type.kind
    out = []
    if b.lo is not None:
        out.append(b.lo if b.lo_open else b.lo - 1)
    if b.hi is not None:
        out.append(b.hi + 1)
    return [str(kind(v)) for v in out]


CASES = [(name, a.option_strings[0], text) for name in JOBS for a in ranged(name) for text in outside(a)]


@pytest.mark.parametrize("flag, text, message", [
    ("--max-frames-per-video", "-3", "must be >= 0, got -3"),
    ("--labeler-batch-size", "0", "must be >= 1, got 0"),
    ("--num-workers", "-1", "must be >= 0, got -1"),
    ("--max-hands", "-1", "must be >= 1, got -1"),
    ("--cpus-per-labeler", "-1", "must be > 0, got -1.0"),
    ("--cpus-per-labeler", "0", "must be > 0, got 0.0"),
    ("--every-n", "0", "must be >= 1, got 0"),
])
def test_mine_rejects_the_reported_values(flag, text, message, capsys):
    assert f"argument {flag}: {message}" in rejects("mine", [flag, text], capsys)


@pytest.mark.parametrize("name, flag, text", CASES, ids=[f"{n}{f}={t}" for n, f, t in CASES])
def test_value_outside_range_is_rejected_naming_the_flag(name, flag, text, capsys):
    err = rejects(name, [flag, text], capsys)
    assert f"argument {flag}: must be " in err and f", got {text}" in err


@pytest.mark.parametrize("name", JOBS)
def test_every_numeric_option_is_ranged(name):
    """No bare ``type=int`` / ``type=float`` and no numeric default without a checked type."""
    for a in parser(name)._actions:
        numeric = a.type in (int, float) or (isinstance(a.default, (int, float)) and not isinstance(a.default, bool))
        assert not numeric or isinstance(a.type, NumberArg), a.option_strings
    assert ranged(name)


@pytest.mark.parametrize("name", JOBS)
def test_range_ends_are_accepted(name):
    p = parser(name)
    for a in ranged(name):
        b, kind = a.type.bounds, a.type.kind
        for end in ([] if b.lo is None or b.lo_open else [b.lo]) + ([] if b.hi is None else [b.hi]):
            value = getattr(p.parse_args(JOBS[name] + [a.option_strings[0], str(kind(end))]), a.dest)
            value = value[0] if a.nargs == "+" else value        # a list option (--seeds 0 1): its first value
            assert value == end and type(value) is kind, a.option_strings


@pytest.mark.parametrize("name", JOBS)
def test_defaults_pass_their_own_checks(name):
    parser(name).parse_args(JOBS[name])
    for a in ranged(name):
        assert a.default is None or a.type.bounds.error(a.default) == "", (a.option_strings, a.default)


def test_default_cli_values_build_valid_configs():
    """The CLI defaults also satisfy the config classes' own checks (the second line of defence)."""
    mine = job("mine")
    args = mine.build_parser().parse_args(JOBS["mine"] + ["--input", "videos"])
    assert mine.label_config(args).every_n == 30 and mine.graph_config(args).index.k == 10
    pretrain = job("pretrain")
    assert pretrain.pretrain_config(pretrain.build_parser().parse_args(JOBS["pretrain"])).optim.batch_size == 8192
    cfg, num_cpus = job("finetune").parse(JOBS["finetune"])
    assert cfg.epochs == 50 and num_cpus is None


@pytest.mark.parametrize("name, flag, text, message", [
    ("mine", "--every-n", "ten", "must be an integer, got 'ten'"),
    ("mine", "--min-det-score", "high", "must be a number, got 'high'"),
    ("mine", "--min-det-score", "nan", "must be a finite number, got 'nan'"),
    ("pretrain", "--base-lr", "inf", "must be a finite number, got 'inf'"),
    ("synth", "--crf", "52", "must be in [0, 51], got 52"),
    ("mine", "--pca-dim", "43", "must be in [0, 42], got 43"),
])
def test_non_numbers_and_upper_ends(name, flag, text, message, capsys):
    assert f"argument {flag}: {message}" in rejects(name, [flag, text], capsys)


def test_mine_cross_field_error_exits_2_before_ray(capsys):
    with pytest.raises(SystemExit) as e:
        job("mine").main(["--output", "out", "--input", "videos", "--segment-frames", "10"])
    assert e.value.code == 2
    assert "segment_frames must be >= every_n (30), got 10" in capsys.readouterr().err


@pytest.mark.parametrize("name", JOBS)
def test_help_shows_ranges_and_defaults(name, capsys):
    with pytest.raises(SystemExit) as e:
        parser(name).parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for a in ranged(name):
        note = f"({a.type.bounds})" if a.default is None else f"({a.type.bounds}; default: {a.default})"
        assert note in text, a.option_strings
    assert "default: None" not in text and "default: False" not in text and "default: []" not in text


def test_help_shows_defaults_of_options_without_help(capsys):
    with pytest.raises(SystemExit):
        parser("mine").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--labeler {mediapipe,openmmlab,groundtruth} (default: mediapipe)" in text
    assert "--gpus-per-labeler GPUS_PER_LABELER (>= 0; default: 0.0)" in text


@pytest.mark.parametrize("make, message", [
    (lambda: LabelConfig(max_frames_per_video=-3), "max_frames_per_video must be >= 0, got -3"),
    (lambda: LabelConfig(num_workers=-1), "num_workers must be >= 0, got -1"),
    (lambda: LabelConfig(every_n=0), "every_n must be >= 1, got 0"),
    (lambda: LabelerConfig(batch_size=0), "batch_size must be >= 1, got 0"),
    (lambda: LabelerConfig(max_hands=-1), "max_hands must be >= 1, got -1"),
    (lambda: LabelerConfig(cpus_per_labeler=0), "cpus_per_labeler must be > 0, got 0"),
    (lambda: FilterConfig(min_det_score=1.5), "min_det_score must be in [0, 1], got 1.5"),
    (lambda: IndexConfig(nlist=-1), "nlist must be >= 0, got -1"),
    (lambda: GraphConfig(index=IndexConfig(k=3), pairs=PairsConfig(positive_rank=3)),
     "positive_rank must be in [0, k=3), got 3"),
])
def test_configs_refuse_the_same_values_for_library_callers(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


def test_bounds_wording():
    assert [str(Bounds(1)), str(Bounds(0, lo_open=True)), str(Bounds(0, 1)), str(Bounds(0, 1, lo_open=True)),
            str(Bounds(hi=5))] == [">= 1", "> 0", "in [0, 1]", "in (0, 1]", "<= 5"]
    assert Bounds(0, 1).error(float("nan")) == "must be in [0, 1], got nan"
    assert Bounds(0, 1).error(1) == Bounds(0, lo_open=True).error(1e-9) == ""


HEAVY = ("torch", "mediapipe", "mmdet", "mmpose", "faiss", "av", "cv2", "pandas", "tensorflow")


@pytest.mark.parametrize("name", JOBS)
def test_help_imports_no_heavy_library(name):
    """--help answers at once: nothing heavy is imported before the arguments are parsed (the libraries load
    after parsing), read from Python's own import log."""
    import subprocess
    import sys

    from conftest import REPO

    res = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "jobs" / f"{name}.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage:" in res.stdout
    top = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert not top & set(HEAVY), sorted(top & set(HEAVY))
