"""The bad-input matrix: every awkward value, name, param and step a user can hand tracelet,
and what each built-in backend is expected to keep of it.

``log_everything`` sends each case through the manual API under a name of its own, so what a
backend stored can be told apart case by case when it is read back. ``render_tables`` writes
the expectations as the Markdown tables of ``docs/bad-input.md``; the test checks the page
holds exactly them, so the documentation cannot drift from what the stores hold.
"""

from __future__ import annotations

import hashlib
import math
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any, NamedTuple

BACKENDS = ("mlflow", "wandb", "clearml", "journal")
TITLES = {"mlflow": "MLflow", "wandb": "W&B", "clearml": "ClearML", "journal": "journal"}
NAN = math.nan
MAX = sys.float_info.max


class ReprFails:
    def __repr__(self) -> str:
        raise RuntimeError("this object cannot be shown")

    __str__ = __repr__


class Dropped(NamedTuple):
    reason: str  # the key in the stop summary's counts


class ValueCase(NamedTuple):
    slug: str  # the metric is value/<slug>
    shown: str  # how the docs show the input
    make: Any  # () -> the value
    outcome: Any  # the float every backend stores, or Dropped


def _np(dtype: str) -> Any:
    import numpy as np

    return np.array(1, dtype=dtype)[()]


def _torch(dtype: str, value: float = 1) -> Any:
    import torch

    return torch.tensor(value, dtype=getattr(torch, dtype))


def _t(expression: str) -> Any:
    import numpy as np  # noqa: F401 - used by the expressions
    import torch  # noqa: F401

    return eval(expression)  # the docs show the very expression that made the value


_NOT_A_NUMBER = Dropped("invalid metric: not a number")
_NOT_ONE = Dropped("invalid metric: not one number")

VALUE_CASES: list[ValueCase] = [
    ValueCase("nan", "`float('nan')`", lambda: math.nan, NAN),
    ValueCase("inf", "`float('inf')`", lambda: math.inf, math.inf),
    ValueCase("neg_inf", "`-float('inf')`", lambda: -math.inf, -math.inf),
    ValueCase("int", "`3`", lambda: 3, 3.0),
    ValueCase("bool", "`True`", lambda: True, 1.0),
    ValueCase("big_int", "`2**70`", lambda: 2**70, float(2**70)),
    ValueCase("huge_int", "`10**400`", lambda: 10**400, Dropped("invalid metric: out of float range")),
    ValueCase("decimal", "`Decimal('0.25')`", lambda: Decimal("0.25"), 0.25),
    ValueCase("fraction", "`Fraction(1, 4)`", lambda: Fraction(1, 4), 0.25),
    *(
        ValueCase(f"np_{d}", f"NumPy `{d}` scalar", lambda d=d: _np(d), 1.0)
        for d in (
            "float16",
            "float32",
            "float64",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "uint64",
            "bool",
        )
    ),
    ValueCase("np_0d", "`np.array(2.5)`", lambda: _t("np.array(2.5)"), 2.5),
    ValueCase("np_1", "`np.array([2.5])`", lambda: _t("np.array([2.5])"), 2.5),
    *(
        ValueCase(f"torch_{d}", f"0-dim `torch.{d}` tensor", lambda d=d: _torch(d), 1.0)
        for d in (
            "float16",
            "bfloat16",
            "float32",
            "float64",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "bool",
        )
    ),
    ValueCase(
        "torch_bf16_tenth",
        "`torch.tensor(0.1, dtype=torch.bfloat16)`",
        lambda: _torch("bfloat16", 0.1),
        0.10009765625,
    ),
    ValueCase("torch_1", "`torch.tensor([2.5])`", lambda: _t("torch.tensor([2.5])"), 2.5),
    ValueCase("torch_1x1", "`torch.tensor([[2.5]])`", lambda: _t("torch.tensor([[2.5]])"), 2.5),
    ValueCase(
        "torch_grad",
        "a tensor that requires grad",
        lambda: _t("torch.tensor(2.5, requires_grad=True) * 1"),
        2.5,
    ),
    ValueCase("torch_nan", "`torch.tensor(float('nan'))`", lambda: _t("torch.tensor(float('nan'))"), NAN),
    ValueCase(
        "torch_meta",
        "a tensor on the `meta` device",
        lambda: _t("torch.empty((), device='meta')"),
        Dropped("invalid metric: unreadable tensor"),
    ),
    ValueCase("torch_2", "`torch.tensor([1., 2.])`", lambda: _t("torch.tensor([1., 2.])"), _NOT_ONE),
    ValueCase("torch_empty", "`torch.tensor([])`", lambda: _t("torch.tensor([])"), _NOT_ONE),
    ValueCase("np_2", "`np.array([1, 2])`", lambda: _t("np.array([1, 2])"), _NOT_ONE),
    ValueCase("list", "`[1, 2]`", lambda: [1, 2], _NOT_A_NUMBER),
    ValueCase("str", "`'0.5'`", lambda: "0.5", _NOT_A_NUMBER),
    ValueCase("none", "`None`", lambda: None, _NOT_A_NUMBER),
    ValueCase("complex", "`1+2j`", lambda: 1 + 2j, _NOT_A_NUMBER),
    ValueCase("object", "`object()`", lambda: object(), _NOT_A_NUMBER),
]


def stored_value(backend: str, value: float) -> Any:
    """What ``backend`` keeps of a value tracelet sent it."""
    if math.isfinite(value):
        return value
    if backend == "clearml":
        return Dropped("non-finite value")
    if backend == "mlflow" and math.isinf(value):
        return math.copysign(MAX, value)
    return value


class NameCase(NamedTuple):
    name: Any
    stored: dict[str, str]  # backend -> the name it keeps (journal: always the name itself)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _same(name: str, **others: str) -> dict[str, str]:
    return {
        "mlflow": others.get("mlflow", name),
        "wandb": others.get("wandb", name),
        "clearml": others.get("clearml", name),
    }


NAME_CASES: list[NameCase] = [
    NameCase("val acc (%)", _same("val acc (%)", mlflow="val acc ___")),
    NameCase("back\\slash", _same("back\\slash", mlflow="back_slash")),
    NameCase("at@hash#", _same("at@hash#", mlflow="at_hash_")),
    NameCase("tab\there", _same("tab\there", mlflow="tab_here")),
    NameCase("new\nline", _same("new\nline", mlflow="new_line")),
    NameCase("loss/../up", _same("loss/../up", mlflow="loss/__/up")),
    NameCase("/leading", _same("/leading", mlflow="leading", clearml="leading")),
    NameCase("trailing/", _same("trailing/", mlflow="trailing", clearml="trailing")),
    NameCase("double//slash", _same("double//slash", mlflow="double/slash")),
    NameCase("dots.in.name", _same("dots.in.name")),
    NameCase("glob*name", _same("glob*name", wandb="glob_name", mlflow="glob_name")),
    NameCase("", _same("", mlflow="_", wandb="unnamed", clearml="unnamed")),
    NameCase("n" * 500, _same("n" * 500, mlflow="n" * 241 + "_" + _sha1("n" * 500))),
    NameCase("损失/准确率", _same("损失/准确率")),
    NameCase("λ_rate", _same("λ_rate")),
    NameCase("🔥loss", _same("🔥loss", mlflow="_loss")),
    NameCase("_private", _same("_private", wandb="metric_private")),
    NameCase("trainer/global_step", _same("trainer/global_step", wandb="metric/trainer/global_step")),
    NameCase("collide_a", _same("collide_a")),
    NameCase("collide?a", _same("collide?a", mlflow="collide_a_" + _sha1("collide?a"))),
    NameCase(42, _same("42")),
]


def name_value(index: int) -> float:
    return 100.0 + index


class StepCase(NamedTuple):
    slug: str
    shown: str
    steps: list[Any]  # () -> step, logged in order with values 1.0, 2.0, ...
    outcome: Any  # [(step, value)] every backend stores, or Dropped


def _np_step() -> Any:
    import numpy as np

    return np.int64(3)


def _torch_step() -> Any:
    import torch

    return torch.tensor(4)


STEP_CASES: list[StepCase] = [
    StepCase("negative", "`-5`", [lambda: -5], [(-5, 1.0)]),
    StepCase("float_whole", "`2.0`", [lambda: 2.0], [(2, 1.0)]),
    StepCase(
        "backwards",
        "`10`, then `5`, then `7`",
        [lambda: 10, lambda: 5, lambda: 7],
        [(5, 2.0), (7, 3.0), (10, 1.0)],
    ),
    StepCase("numpy", "`np.int64(3)`", [_np_step], [(3, 1.0)]),
    StepCase("tensor", "`torch.tensor(4)`", [_torch_step], [(4, 1.0)]),
    StepCase("big", "`2**62`", [lambda: 2**62], [(2**62, 1.0)]),
    StepCase("none", "`None` (no step)", [lambda: None], "none"),
    StepCase("fraction", "`2.5`", [lambda: 2.5], Dropped("invalid metric: step not a whole number")),
    StepCase("nan", "`float('nan')`", [lambda: math.nan], Dropped("invalid metric: step not a whole number")),
    StepCase("too_big", "`2**64`", [lambda: 2**64], Dropped("invalid metric: step out of int64 range")),
    StepCase("text", "`'3'`", [lambda: "3"], Dropped("invalid metric: step not a number")),
]
LAST_STEP_BEFORE_NONE = 2**62  # W&B puts a point without a step at the latest step logged


def stored_steps(backend: str, case: StepCase) -> Any:
    if case.outcome != "none":
        return case.outcome
    if backend == "wandb":
        return [(LAST_STEP_BEFORE_NONE, 1.0)]
    if backend == "journal":
        return [(None, 1.0)]
    return [(0, 1.0)]


def param_cases() -> dict[Any, Any]:
    import torch

    return {
        "nested": {"a": {"b": 1, "c": [1, 2]}},
        "list": [1, [2, 3], "x"],
        "none": None,
        "empty_dict": {},
        "tuple": (1, 2),
        "set": {3},
        "tensor": torch.tensor([1.0, 2.0]),
        "scalar_tensor": torch.tensor(0.5),
        "repr_fails": ReprFails(),
        "long": "x" * 100_000,
        "path": PurePosixPath("/data/train"),
        "unicode_λ": "值",
        "with space": 1,
        7: "an int key",
        "api_key": "sk-planted-secret",
    }


# what each backend keeps of param_cases(): (backend -> {key: value}); "x"*n stands for the long value
PARAMS_STORED: dict[str, dict[str, Any]] = {
    "mlflow": {
        "nested/a/b": "1",
        "nested/a/c": "[1, 2]",
        "list": "[1, [2, 3], 'x']",
        "none": "None",
        "empty_dict": "{}",
        "tuple": "[1, 2]",
        "set": "[3]",
        "tensor": "[1.0, 2.0]",
        "scalar_tensor": "0.5",
        "repr_fails": "<ReprFails (repr failed)>",
        "long": "x" * 6000,
        "path": "/data/train",
        "unicode_λ": "值",
        "with space": "1",
        "7": "an int key",
        "api_key": "***",
    },
    "wandb": {
        "nested": {"a": {"b": 1, "c": [1, 2]}},
        "list": [1, [2, 3], "x"],
        "none": None,
        "empty_dict": {},
        "tuple": [1, 2],
        "set": [3],
        "tensor": [1.0, 2.0],
        "scalar_tensor": 0.5,
        "repr_fails": "<ReprFails (repr failed)>",
        "long": "x" * 100_000,
        "path": "/data/train",
        "unicode_λ": "值",
        "with space": 1,
        "7": "an int key",
        "api_key": "***",
    },
    "clearml": {
        "nested/a/b": "1",
        "nested/a/c": "[1, 2]",
        "list": "[1, [2, 3], 'x']",
        "none": "",
        "empty_dict": "{}",
        "tuple": "[1, 2]",
        "set": "[3]",
        "tensor": "[1.0, 2.0]",
        "scalar_tensor": "0.5",
        "repr_fails": "<ReprFails (repr failed)>",
        "long": "x" * 100_000,
        "path": "/data/train",
        "unicode_λ": "值",
        "with space": "1",
        "7": "an int key",
        "api_key": "***",
    },
}
PARAMS_STORED["journal"] = {k: v for k, v in PARAMS_STORED["wandb"].items()}


def log_everything(exp: Any) -> None:
    """Every case through the manual API; none of these calls may raise."""
    for case in VALUE_CASES:
        exp.log_metric(f"value/{case.slug}", case.make(), iteration=0)
    for index, case in enumerate(NAME_CASES):
        exp.log_metric(case.name, name_value(index), iteration=1)
    exp.log_params(param_cases())
    for case in STEP_CASES:
        for position, make in enumerate(case.steps):
            exp.log_metric(f"step/{case.slug}", float(position + 1), iteration=make())


def expected_drops(backend: str) -> dict[str, int]:
    drops: dict[str, int] = {}
    outcomes = [c.outcome for c in VALUE_CASES] + [c.outcome for c in STEP_CASES]
    for outcome in outcomes:
        if isinstance(outcome, Dropped):
            drops[outcome.reason] = drops.get(outcome.reason, 0) + 1
    if backend == "clearml":
        drops["non-finite value"] = sum(
            1 for c in VALUE_CASES if not isinstance(c.outcome, Dropped) and not math.isfinite(c.outcome)
        )
    return drops


# -- the documentation's tables -------------------------------------------------------------
def _cell(outcome: Any) -> str:
    if isinstance(outcome, Dropped):
        return f"dropped: *{outcome.reason.removeprefix('invalid metric: ')}*"
    if isinstance(outcome, list):
        return ", ".join(f"step {s}: {v:g}" for s, v in outcome) if outcome else "nothing"
    if isinstance(outcome, float):
        if math.isnan(outcome):
            return "NaN"
        if math.isinf(outcome):
            return "inf" if outcome > 0 else "-inf"
        if abs(outcome) == MAX:
            return ("-" if outcome < 0 else "") + "1.8e308 (float max)"
        return f"{outcome:g}"
    return str(outcome)


def _shown_name(name: Any) -> str:
    text = repr(name) if isinstance(name, str) else f"{name!r} (an int)"
    return "`" + (text if len(text) < 40 else text[:12] + f"...' ({len(name)} chars)") + "`"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_tables() -> str:
    header = _row(["input", *(TITLES[b] for b in BACKENDS)])
    rule = "|" + "---|" * (len(BACKENDS) + 1)
    lines = ["### Metric values", "", header, rule]
    for case in VALUE_CASES:
        if isinstance(case.outcome, Dropped):
            cells = [_cell(case.outcome)] * len(BACKENDS)
        else:
            cells = [_cell(stored_value(b, case.outcome)) for b in BACKENDS]
        lines.append(_row([case.shown, *cells]))
    lines += ["", "### Metric names", "", header, rule]
    for case in NAME_CASES:
        stored = {**case.stored, "journal": str(case.name)}
        cells = ["as given" if stored[b] == case.name else _shown_name(stored[b]) for b in BACKENDS]
        lines.append(_row([_shown_name(case.name), *cells]))
    lines += ["", "### Steps", "", header, rule]
    for case in STEP_CASES:
        cells = [_cell(stored_steps(b, case)) for b in BACKENDS]
        if case.outcome == "none":
            cells = [_NO_STEP[b] for b in BACKENDS]
        lines.append(_row([case.shown, *cells]))
    lines += ["", "### Params", "", header, rule]
    shown = {
        7: "`7` (an int key)",
        "long": "a 100,000-character string",
        "repr_fails": "an object whose `repr` raises",
    }
    for key, value in param_cases().items():
        cells = []
        for backend in BACKENDS:
            kept = {
                k: v for k, v in PARAMS_STORED[backend].items() if k == str(key) or k.startswith(f"{key}/")
            }
            cells.append("; ".join(f"`{k}` = {_shown_value(v)}" for k, v in kept.items()))
        lines.append(_row([shown.get(key, f"`{key}`: `{_safe(value)}`"), *cells]))
    return "\n".join(lines) + "\n"


_NO_STEP = {
    "mlflow": "step 0 (MLflow's default)",
    "wandb": "the latest step logged before it",
    "clearml": "step 0",
    "journal": "no step (a replay applies the target's rule)",
}


def _safe(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return "..."


def _shown_value(value: Any) -> str:
    if isinstance(value, str) and len(value) > 40:
        return (
            f"all {len(value):,} characters"
            if len(value) == 100_000
            else f"the first {len(value):,} characters"
        )
    return f"`{value!r}`"
