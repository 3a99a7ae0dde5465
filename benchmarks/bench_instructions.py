"""What tracking adds to a training step, counted in CPU instructions (valgrind's callgrind).

Wall-clock ratios on a shared 2-vCPU VM move by 2 to 3% between identical runs, more than what
is being measured. Instructions executed do not move with the machine's load: the same
program, inputs and environment give the same count. This runs one process under callgrind
with counting off, and turns it on only around ``trainer.fit``: an untracked fit and a
tracked one (everything on, the writer warm) of N and of 2N steps, so that what a step costs
is told apart from what a fit costs once (``on_fit_start`` params, ``start``/``end`` hooks).
``--cache`` adds callgrind's cache and branch-predictor simulation (about twice as slow): L1
and last-level cache misses and mispredicted branches, and KCachegrind's cycle estimate
(instructions + 10 x L1 misses + 100 x last-level misses + 10 x mispredicts), which says
whether tracking makes the training thread's instructions slower (evicting its data and
code, confusing its branch predictor) on top of adding some.
Counted per thread: the training thread, and tracelet's own threads in the training process
(sender, collectors). The writer process runs outside valgrind, natively: its CPU per point
is ``bench_writer.py``'s. Instructions are not time (cache misses and a busy hyperthread
sibling cost time, not instructions): this is the lower bound of the cost, measured exactly.

    python benchmarks/bench_instructions.py              # 150 and 300 steps, ~2 minutes
    python benchmarks/bench_instructions.py --cache      # misses and a cycle estimate too, ~5 minutes
    python benchmarks/bench_instructions.py --steps 20   # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PHASES = ("untracked", "tracked")


def _inner(steps: int, config: dict) -> None:
    """Runs under callgrind: fits with counting switched on around them."""
    os.chdir(tempfile.mkdtemp(prefix="tracelet-instructions-"))
    from tiny import module_and_data, trainer

    import tracelet
    from tracelet import bus

    Tiny, data = module_and_data(steps * 2)

    def fit(n: int) -> None:
        trainer(n).fit(Tiny(), data)

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(os.getpid())], capture_output=True, check=True)

    def counted(label: str, n: int) -> None:
        gc.collect()  # every counted fit starts from the same collector state
        control("--instr=on")
        fit(n)
        control(f"--dump={label}")
        control("--instr=off")

    # valgrind runs ~50x slower: waking every 0.5 s, the sender would take the buffer every few
    # steps instead of every ~330 (0.5 s of this fit natively), and the training process would
    # never hold what it holds natively between wakes; it wakes when 300 events wait instead
    bus.SEND_INTERVAL_S = 3600.0
    bus.CHUNK = 300
    fit(20)  # warm-up, both ways: imports, first-call caches, the patches' first application
    tracelet.start_logging(project="instructions", config=config).flush()
    fit(20)
    tracelet.stop_logging()
    for n in (steps, 2 * steps):
        counted(f"untracked-{n}", n)
        tracelet.start_logging(project="instructions", config=config).flush()
        counted(f"tracked-{n}", n)
        tracelet.stop_logging()


CACHE_EVENTS = {  # the simulated events, summed, and their weight in the cycle estimate
    "L1 misses": (("I1mr", "D1mr", "D1mw"), 10),
    "last-level misses": (("ILmr", "DLmr", "DLmw"), 100),
    "mispredicted branches": (("Bcm", "Bim"), 10),
}


def _read_dumps(directory: str) -> dict[tuple[str, int], dict[int, dict[str, int]]]:
    """(phase, steps) -> {thread number: {event (Ir, D1mr, ...): count}}; thread 1 is the
    training thread."""
    counts: dict[tuple[str, int], dict[int, dict[str, int]]] = {}
    for path in glob.glob(os.path.join(directory, "cg.*")):
        thread = re.search(r"-(\d+)$", path)
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()  # "totals:" closes the file
        trigger = re.search(r"^desc: Trigger: dump (\w+)-(\d+)$", text, re.MULTILINE)
        events = re.search(r"^events: (.+)$", text, re.MULTILINE)
        totals = re.search(r"^totals: ([\d ]+)$", text, re.MULTILINE)
        if not (thread and trigger and events and totals):
            continue
        key = (trigger.group(1), int(trigger.group(2)))
        values = dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=False))
        counts.setdefault(key, {})[int(thread.group(1))] = values
    return counts


def _report(counts: dict[tuple[str, int], dict[int, dict[str, int]]], steps: int) -> None:
    def training(phase: str, n: int, events: tuple[str, ...] = ("Ir",)) -> int:
        values = counts[(phase, n)].get(1, {})
        return sum(values.get(event, 0) for event in events)

    def others(phase: str, n: int) -> int:
        return sum(v.get("Ir", 0) for t, v in counts[(phase, n)].items() if t != 1)

    per_step = {p: (training(p, 2 * steps) - training(p, steps)) / steps for p in PHASES}
    per_fit = {p: training(p, steps) - per_step[p] * steps for p in PHASES}
    threads = (others("tracked", 2 * steps) - others("untracked", 2 * steps)) / (2 * steps)
    added = per_step["tracked"] - per_step["untracked"]
    print(f"\ninstructions per training step (fits of {steps} and {2 * steps} steps, callgrind):")
    print(f"  untracked, training thread      {per_step['untracked']:>12,.0f}")
    print(f"  tracked,   training thread      {per_step['tracked']:>12,.0f}   (+{added:,.0f})")
    print(f"  tracked,   tracelet's threads   {threads:>12,.0f}")
    share = (added + threads) / per_step["untracked"]
    print(
        f"tracelet adds {added / per_step['untracked']:.2%} on the training thread, "
        f"{share:.2%} with its threads"
    )
    print(
        f"once per fit: {per_fit['tracked'] - per_fit['untracked']:,.0f} instructions on the training thread"
    )
    if "D1mr" not in counts[("tracked", steps)].get(1, {}):
        return
    print("training thread per step, simulated (untracked -> tracked):")
    cycles = dict.fromkeys(PHASES, 0.0)
    for label, (events, weight) in CACHE_EVENTS.items():
        step = {p: (training(p, 2 * steps, events) - training(p, steps, events)) / steps for p in PHASES}
        for phase in PHASES:
            cycles[phase] += weight * step[phase]
        print(f"  {label:<24} {step['untracked']:>12,.0f} -> {step['tracked']:>12,.0f}")
    for phase in PHASES:
        cycles[phase] += per_step[phase]
    print(
        f"  {'cycle estimate':<24} {cycles['untracked']:>12,.0f} -> {cycles['tracked']:>12,.0f}"
        f"   (+{cycles['tracked'] / cycles['untracked'] - 1:.2%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--config", default="{}", help="tracelet config as JSON")
    parser.add_argument("--cache", action="store_true", help="simulate caches and branch prediction too")
    parser.add_argument(
        "--last-level",
        type=int,
        metavar="KIB",
        help="with --cache, the simulated last-level cache's size (default: the machine's own; "
        "1024 = this VM's per-core L2, the L3 being shared with other tenants)",
    )
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = json.loads(args.config)
    if args.inner:
        _inner(args.steps, config)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is not installed: nothing measured")
        return
    with tempfile.TemporaryDirectory() as directory:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--separate-threads=yes",
            *(["--cache-sim=yes", "--branch-sim=yes"] if args.cache else []),
            *([f"--LL={args.last_level * 1024},16,64"] if args.cache and args.last_level else []),
            f"--callgrind-out-file={os.path.join(directory, 'cg.%p')}",
            sys.executable,
            os.path.abspath(__file__),
            "--inner",
            "--steps",
            str(args.steps),
            "--config",
            args.config,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"the measured process failed:\n{out.stderr[-3000:]}")
        counts = _read_dumps(directory)
    missing = [(p, n) for p in PHASES for n in (args.steps, 2 * args.steps) if (p, n) not in counts]
    if missing:
        raise SystemExit(f"no callgrind dump for {missing}")
    _report(counts, args.steps)


if __name__ == "__main__":
    main()
