"""Cost of one full system sample (psutil system + process tree, NVML where present).

python benchmarks/bench_system_sample.py [--samples 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tracelet.collectors.system import SystemSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    sampler = SystemSampler()
    sampler.sample()
    timings = []
    for _ in range(args.samples):
        started = time.perf_counter()
        values = sampler.sample()
        timings.append(time.perf_counter() - started)
    sampler.close()
    gpus = len({k.split("/")[1] for k in values if k.startswith("gpu/")})
    print(
        f"one system sample: median {statistics.median(timings) * 1e6:.0f} us, "
        f"p90 {statistics.quantiles(timings, n=10)[-1] * 1e6:.0f} us over {args.samples} samples "
        f"({len(values)} values, {gpus} GPUs)"
    )


if __name__ == "__main__":
    main()
