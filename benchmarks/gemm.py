"""GEMM rates at the train steps' own matmul shapes, in XLA (jax) and in torch, side by side.

The S configs are matmul-bound, so what the machine's GEMMs reach at their shapes sets the
ceiling on throughput for any implementation, mmjax and the peers alike:

  python -m benchmarks.gemm [--reps 20] [--out benchmarks/results/gemm_cpu.jsonl]

One JSON line per (library, shape) with GFLOP/s at the median of `--reps` timed calls,
alternating libraries per shape so machine noise hits both.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# (m, k, n): CLIP-S image tokens 64 x 65 = 4160 through qkv / MLP / weight gradients, the
# MLM-S head's 640 gathered slots against the 30522-word table, and the square peak size.
SHAPES = {
    "square_2048": (2048, 2048, 2048),
    "qkv_4160x256x768": (4160, 256, 768),
    "fc1_4160x256x1024": (4160, 256, 1024),
    "fc2_4160x1024x256": (4160, 1024, 256),
    "wgrad_256x4160x1024": (256, 4160, 1024),
    "mlm_head_640x256x30522": (640, 256, 30522),
}


def _median_rate(call, flops, reps):
    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return flops / float(np.median(times)) / 1e9


def jax_rate(m, k, n, reps):
    a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    return _median_rate(lambda: matmul(a, b).block_until_ready(), 2 * m * k * n, reps)


def torch_rate(m, k, n, reps):
    import torch
    a, b = torch.ones(m, k), torch.ones(k, n)
    return _median_rate(lambda: a @ b, 2 * m * k * n, reps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    libraries = {"jax": jax_rate}
    try:
        import torch
        libraries["torch"] = torch_rate
        versions = {"jax": jax.__version__, "torch": torch.__version__}
    except ImportError:
        versions = {"jax": jax.__version__}
    for name, shape in SHAPES.items():
        for library, rate in libraries.items():
            record = {"shape": name, "mkn": shape, "library": library, "version": versions[library],
                      "gflops": round(rate(*shape, args.reps), 1), "backend": jax.default_backend(),
                      "load_avg": os.getloadavg()[0]}
            print(json.dumps(record))
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
