"""Where a train step's host memory goes: resident MB after each phase of start-up and steps.

  python -m benchmarks.host_memory configs/bench_clip_s.py [--steps 20] [--config.KEY=VALUE ...]
  MMJAX_MALLOC=system|glibc|tcmalloc|jemalloc python -m benchmarks.host_memory ...

Phases: imports, setup, the init step compiled, the state made, the train step compiled,
then each step. The allocator is chosen as `mmjax train` chooses it (mmjax/allocator.py,
$MMJAX_MALLOC). Prints one JSON line: {phase: resident MB}, the peak, and XLA's own
figures for the init and train programs (temporaries, arguments, outputs).
"""

import argparse
import json
import os
import resource
import sys


def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main(argv=None):
    from mmjax import allocator
    allocator.configure(reexec=argv is None)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=20)
    args, overrides = p.parse_known_args(argv)
    phases = {"python": resident_mb()}

    import flax.linen as nn
    import jax

    from benchmarks.workload import stand_in_tokenizer, synthetic_batches
    from mmjax import config as config_lib
    from mmjax import sharding
    from mmjax.train.setup import setup
    from mmjax.train.state import init_fn
    phases["imports"] = resident_mb()

    config = config_lib.load(args.config, overrides)
    run = setup(config, tokenizer=stand_in_tokenizer(config))
    phases["setup"] = resident_mb()
    with nn.logical_axis_rules(run.rules):
        init = init_fn(run.task, run.model, run.tx)
        init_program = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=run.state_shardings
                               ).lower(jax.random.PRNGKey(config.seed)).compile()
        phases["init compiled"] = resident_mb()
        state = jax.block_until_ready(init_program(jax.random.PRNGKey(config.seed)))
    phases["state made"] = resident_mb()
    host_batches = synthetic_batches(config)
    put = lambda b: sharding.global_batch(b, run.mesh)  # noqa: E731
    step = run.train_step()
    step_program = step.compile(state, put(host_batches[0]))
    phases["step compiled"] = resident_mb()
    for i in range(args.steps):
        state, metrics = step(state, put(host_batches[i % len(host_batches)]))
        jax.block_until_ready(metrics)
        phases[f"step {i + 1}"] = resident_mb()

    def xla(program):
        m = program.memory_analysis()
        return {k: round(getattr(m, f"{k}_size_in_bytes") / 2 ** 20, 1)
                for k in ("temp", "argument", "output")} if m else None

    record = {"config": os.path.basename(args.config), "malloc": os.environ.get(allocator.ENV, "auto"),
              "preloaded": os.environ.get("LD_PRELOAD", ""),
              "resident_mb": {k: round(v) for k, v in phases.items()},
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "xla_init_mb": xla(init_program), "xla_step_mb": xla(step_program)}
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
