"""The bad-input matrix over every built-in backend, read back from the real store: awkward
values, names, params and steps never raise into training; each is stored (converted the
backend's way) or dropped and counted with its reason, with one warning per cause."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from bad_inputs import (
    BACKENDS,
    NAME_CASES,
    PARAMS_STORED,
    STEP_CASES,
    VALUE_CASES,
    Dropped,
    expected_drops,
    log_everything,
    name_value,
    render_tables,
    stored_steps,
    stored_value,
)
from helpers import clearml_series, mlflow_run, mlflow_series, wandb_series

import tracelet
from tracelet import journal
from tracelet.events import Metric, Params

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"


def _read_back(backend: str, location) -> tuple[dict, dict]:
    """(series name -> [(step, value)], params) as the backend's own store holds them."""
    if backend == "mlflow":
        return mlflow_series(location.run_id), dict(mlflow_run(location.run_id).data.params)
    if backend == "wandb":
        series, run = wandb_series(location.uri)
        return series, {k: v for k, v in run["config"].items() if k != "_wandb"}
    if backend == "clearml":
        series, task = clearml_series(location.uri)
        general = task["hyperparams"]["General"]
        return series, {k: entry.get("value") for k, entry in general.items()}
    series: dict = {}
    params: dict = {}
    for event in journal.events(journal.load(location.uri)):
        if isinstance(event, Metric):
            series.setdefault(event.name, []).append((event.step, event.value))
        elif isinstance(event, Params):
            params.update(event.values)
    return {k: sorted(v, key=lambda p: (p[0] is not None, p[0] or 0)) for k, v in series.items()}, params


def _same_points(got, want) -> bool:
    return len(got) == len(want) and all(
        gs == ws and (gv == wv or (math.isnan(gv) and math.isnan(wv)))
        for (gs, gv), (ws, wv) in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_bad_input_is_stored_converted_or_counted_never_raised(backend, caplog):
    caplog.set_level(logging.WARNING, logger="tracelet")
    backends = [backend] if backend != "journal" else ["journal"]
    exp = tracelet.start_logging(backend=backends, config={"journal": backend == "journal"})
    log_everything(exp)  # raises nothing: the test would stop here otherwise
    report = tracelet.stop_logging()
    stats = report.backends[backend]
    assert report.done and stats.failed == 0, report.lines()
    series, params = _read_back(backend, stats.location)
    problems = []

    for case in VALUE_CASES:
        got = series.pop(f"value/{case.slug}", None)
        want = case.outcome if isinstance(case.outcome, Dropped) else stored_value(backend, case.outcome)
        if isinstance(want, Dropped):
            if got is not None:
                problems.append(f"value {case.slug}: stored {got}, expected {want}")
        elif got is None or not _same_points(got, [(0, want)]):
            problems.append(f"value {case.slug}: stored {got}, expected {want!r}")

    for index, case in enumerate(NAME_CASES):
        stored_name = str(case.name) if backend == "journal" else case.stored[backend]
        got = series.pop(stored_name, None)
        if got != [(1, name_value(index))]:
            problems.append(f"name {case.name!r}: expected {stored_name!r} -> {got}")

    for case in STEP_CASES:
        got = series.pop(f"step/{case.slug}", None)
        want = stored_steps(backend, case)
        if (got is not None) if isinstance(want, Dropped) else (got != want):
            problems.append(f"step {case.slug}: stored {got}, expected {want}")

    if series:
        problems.append(f"series nobody logged: {sorted(series)}")
    expected_params = PARAMS_STORED[backend]
    for key, want in expected_params.items():
        if params.get(key) != want:
            problems.append(
                f"param {key!r}: stored {str(params.get(key))[:80]!r}, expected {str(want)[:80]!r}"
            )
    if set(params) - set(expected_params):
        problems.append(f"params nobody logged: {sorted(set(params) - set(expected_params))}")
    assert not problems, "\n".join(problems)

    drops = {reason: n for reason, n in stats.reasons.items()}
    assert drops == expected_drops(backend)
    # one warning per cause, not per call: each drop reason is named by exactly one warning
    for reason in expected_drops(backend):
        said = [r for r in caplog.records if f"'{reason}'" in r.getMessage()]
        assert len(said) == 1, f"{len(said)} warnings for {reason!r}"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(set(messages)), "a warning was repeated"
    assert "sk-planted-secret" not in caplog.text


def test_one_warning_per_cause_however_many_calls_have_it(caplog):
    caplog.set_level(logging.WARNING, logger="tracelet")
    exp = tracelet.start_logging(backend="mlflow")
    for step in range(1_000):
        exp.log_metric("acc", "high", iteration=step)
        exp.log_metric(f"odd name {step} (%)", 1.0, iteration=step)  # a rename each: capped
    report = tracelet.stop_logging()
    assert report.backends["mlflow"].reasons == {"invalid metric: not a number": 1_000}
    assert caplog.text.count("'invalid metric: not a number'") == 1
    renames = [r for r in caplog.records if "MLflow does not accept the metric name" in r.getMessage()]
    assert (
        len(renames) == 10
        and "further MLflow renamed-name warnings are not shown" in renames[-1].getMessage()
    )
    assert len(mlflow_series(report.backends["mlflow"].location.run_id)) == 1_000


def test_the_docs_table_is_what_the_stores_hold():
    page = DOCS_PAGE.read_text(encoding="utf-8")
    begin, end = "<!-- matrix: generated from tests/bad_inputs.py -->\n", "<!-- end of matrix -->"
    assert begin in page and end in page
    table = page.split(begin, 1)[1].split(end, 1)[0]
    assert table == render_tables(), "docs/bad-input.md is out of date; paste render_tables() into it"


def test_cpu_tensors_read_at_capture_equal_their_item_and_the_rest_is_left_alone():
    """The training thread's read (``read_cpu_scalar``): every zero-dimensional CPU tensor
    becomes exactly what ``.item()`` gives, per dtype; anything else stays as it was."""
    import torch

    from tracelet.values import read_cpu_scalar

    one_value = torch.tensor([5.0])  # not zero-dimensional: left for to_float
    meta = torch.tensor(1.0, device="meta")  # not on the CPU: left for to_float to refuse
    rows = [
        (torch.tensor(0.1), torch.tensor(3, dtype=torch.int64)),
        (torch.tensor(True), torch.tensor(1.5, dtype=torch.float16), one_value, torch.tensor(0.7), meta),
        (torch.tensor(2**53 + 1, dtype=torch.int64),),
    ]
    read = [tuple(map(read_cpu_scalar, row)) for row in rows]
    assert read[0] == (torch.tensor(0.1).item(), 3)
    assert read[1][:2] == (True, 1.5) and read[1][2] is one_value and read[1][4] is meta
    assert read[1][3] == torch.tensor(0.7).item()
    assert read[2] == (2**53 + 1,)  # ints are not promoted to floats on the way
