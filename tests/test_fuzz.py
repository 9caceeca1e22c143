"""Property-based tests over random tables, designs and contrast strings: every run either completes with a complete
manifest or is refused with one RunnerError line (which the CLI prints as ``error: ...`` with exit code 2, see
test_bad_inputs.py) -- never another exception (a traceback), never a hang, never a file outside the run directory.
"""

from __future__ import annotations

import json
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_bad_inputs import SHAPE, brain_mask, save_map

N_POOL = 10
TIME_LIMIT_SECONDS = 30  # per example; a run of ten tiny maps takes well under a second

AGES = st.one_of(st.floats(-100, 100, allow_nan=False).map(lambda v: round(v, 3)), st.integers(-5, 90))
ODD_AGES = st.sampled_from([None, "12,5", "n/a", "abc", "inf", "1e400", " 7 ", 1e300])
ODD_SEXES = st.sampled_from(["x y", "", None, "1", "Ä", "a/b", "C(sex)"])
VALID_TERMS = ["1", "age", "C(sex)", "sex", "group", "score", "age:C(sex)", "center(age)", "I(age**2)",
               "C(group, Treatment('B'))", "Q('age')", "standardize(score)", "age*score"]
HOSTILE_TERMS = ["0", "-1", "log(score)", "agee", "C(age)", "__import__('os')", "age +", "((", "", "sex.upper()",
                 "I(age**99)", "exp(age)", "C(sex)[T.M]", "participant_id", "I('a' * 10**9)", "open('x')"]
FORMULA_TERMS = st.one_of(st.sampled_from(VALID_TERMS), st.sampled_from(VALID_TERMS), st.sampled_from(HOSTILE_TERMS))
CONTRAST_EXPRESSIONS = st.one_of(
    st.just("Intercept"),
    st.sampled_from(["Intercept", "age", "C(sex)[T.M]", "sex[T.M]", "score", "group[T.B]", "Intercept - age",
                     "2*age", "C(group, Treatment('B'))[T.A]", "I(age ** 2)", "center(age)", "standardize(score)"]),
    st.sampled_from(["age = 0", "", "age + ", "Intercept*age", "1/0", "agee", "__import__('os')", "age[0]"]),
    st.text(max_size=12),
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=4),
    st.lists(st.sampled_from(["Intercept", "age", "C(sex)[T.M]", "score"]), min_size=1, max_size=3),
)
CONTRAST_NAMES = st.one_of(st.sampled_from(["mean", "age", "effect", "sexMale", "b-a"]),
                           st.sampled_from(["../../etc/x", "/abs", "a;rm -rf ~", "$(id)", "..", "Mean", "m e a n",
                                            "-", "x\ty", "a" * 200]),
                           st.text(min_size=1, max_size=20))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """Ten valid maps shared by every example (tables point at them)."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(1)
    for i in range(N_POOL):
        save_map(root / f"map-{i}.nii.gz", np.where(brain_mask(), rng.normal(0.5, 1.0, SHAPE), 0.0))
    return root


def sometimes(draw, chance: int = 8) -> bool:
    """True about once in ``chance`` draws: most examples are valid enough to reach the model."""
    return draw(st.sampled_from(range(chance))) == chance // 2  # not 0: Hypothesis favours the simplest value


@st.composite
def studies(draw):
    """A random study; half of them hostile (odd cells, formula terms and contrasts), half plausible, so that a good
    share of examples reach the model, the thresholds and the writers instead of stopping at a check."""
    hostile = draw(st.booleans())
    n = draw(st.integers(3 if hostile else 6, N_POOL))
    paths = [f"map-{i}.nii.gz" for i in draw(st.permutations(range(N_POOL)))[:n]]
    ids = [f"sub-{i + 1:02d}" for i in range(n)]
    if hostile and sometimes(draw):
        paths[draw(st.integers(0, n - 1))] = draw(st.sampled_from(["missing.nii.gz", "", "table.tsv", paths[0]]))
    if hostile and sometimes(draw):
        ids[-1] = ids[0]
    ages = draw(st.lists(AGES, min_size=n, max_size=n))
    sexes = draw(st.lists(st.sampled_from(["M", "F"]), min_size=n, max_size=n))
    if hostile and sometimes(draw):
        ages[draw(st.integers(0, n - 1))] = draw(ODD_AGES)
    if hostile and sometimes(draw):
        sexes[draw(st.integers(0, n - 1))] = draw(ODD_SEXES)
    table = pd.DataFrame({
        "participant_id": ids,
        "path": paths,
        "age": ages,
        "score": draw(st.lists(st.floats(0, 50), min_size=n, max_size=n)),
        "sex": sexes,
        "group": draw(st.lists(st.sampled_from(["A", "B"]), min_size=n, max_size=n)),
    })
    # a plausible study has one term: several valid terms can still be collinear (sex and C(sex)) or outnumber the maps
    formula = " + ".join(draw(st.lists(FORMULA_TERMS, min_size=1, max_size=3)) if hostile
                         else [draw(st.sampled_from(VALID_TERMS))])
    contrast = (st.fixed_dictionaries({"name": CONTRAST_NAMES, "expr": CONTRAST_EXPRESSIONS}) if hostile
                else st.fixed_dictionaries({"name": st.sampled_from(["mean", "effect", "Mean2"]),
                                            "expr": st.just("Intercept")}))
    contrasts = draw(st.lists(contrast, min_size=1, max_size=3, unique_by=lambda c: c["name"]))
    data = {"mask_strategy": draw(st.sampled_from(["nonzero", "nonzero", "absolute", "relative"])),
            "mask_threshold": draw(st.sampled_from([0.0, 0.2, 5.0] if hostile else [0.0, 0.2])),
            "nan_policy": draw(st.sampled_from(["exclude", "error"])),
            "smoothing_fwhm": draw(st.sampled_from([None, 0.0, 4.0])),
            "dtype": draw(st.sampled_from(["float64", "float32"]))}
    correction = draw(st.lists(st.sampled_from(["fpr", "fdr", "bonferroni"]), max_size=3, unique=True))
    budget = draw(st.sampled_from([None, 1e-6, 0.001]))
    return table, formula, contrasts, data, correction, budget


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"the run took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


MIN_COMPLETED_SHARE = 0.25  # of examples; about half complete (0.40-0.78 over 15 runs)


def test_random_studies_complete_or_are_refused_in_one_line(pool):
    """Each example completes or is refused in one line; and enough complete that the model, the thresholds and the
    writers are exercised, not only the checks that refuse (a generator gone too hostile would pass unnoticed)."""
    outcomes: dict[str, int] = {"complete": 0, "refused": 0}

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(study=studies())
    def check(study):
        outcomes[run_one(study, pool)] += 1

    check()
    total = sum(outcomes.values())
    assert total >= 30, outcomes
    assert outcomes["complete"] >= MIN_COMPLETED_SHARE * total, outcomes
    assert outcomes["refused"] > 0, outcomes  # the hostile half of the generator still reaches the checks


def run_one(study, pool: Path) -> str:
    """Run one random study; "complete" or "refused" (anything else fails the test)."""
    from runner import app
    from runner.config import build_settings
    from runner.errors import RunnerError

    table, formula, contrasts, data, correction, budget = study
    folder = pool / uuid.uuid4().hex
    folder.mkdir()
    table.assign(path=["../" + p if p else p for p in table["path"]]).to_csv(folder / "table.tsv", sep="\t",
                                                                             index=False)
    config = {"data": {"table": str(folder / "table.tsv"), **data}, "design": {"formula": formula},
              "contrasts": contrasts, "correction": correction, "report": False, "progress": False, "cache": False,
              "n_jobs": 1, "memory_budget_gb": budget, "output_root": str(folder)}
    run_dir = folder / "run"
    before = set(pool.rglob("*"))
    try:
        with time_limit(TIME_LIMIT_SECONDS):
            app.run(build_settings(config), run_dir, resolved_config=config)
    except RunnerError as error:
        message = str(error)
        assert message and "\n" not in message and "Traceback" not in message
        manifest = run_dir / "manifest.json"
        assert not manifest.is_file() or json.loads(manifest.read_text())["status"] != "complete"
        return "refused"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert any(entry["kind"] == "map" for entry in manifest["outputs"])
    for entry in manifest["outputs"]:
        assert (run_dir / entry["path"]).resolve().parent == run_dir.resolve()
    created = set(pool.rglob("*")) - before
    assert all(p == run_dir or run_dir in p.parents for p in created), created
    assert not list(run_dir.rglob(".tmp-*"))
    return "complete"


@settings(max_examples=40, deadline=None, database=None)
@given(names=st.lists(st.text(max_size=30), min_size=1, max_size=4))
def test_output_names_from_any_contrast_names_stay_plain_file_names(names):
    """Whatever the contrast names, output names are plain names inside the run directory (or refused as clashing)."""
    from runner.errors import RunnerError
    from runner.outputs import naming

    try:
        naming.check_distinct_labels(names)
    except RunnerError as error:
        assert "\n" not in str(error)
        return
    built = [naming.map_name(name, "z", "fdr") for name in names] + [naming.table_name("clusters", contrast=name)
                                                                     for name in names]
    assert len(set(n.lower() for n in built)) == len(built)
    for name in built:
        assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
        assert Path(name).name == name and name.isascii()
