"""One process of a multi-process linear-probe evaluation (tests/test_linear_probe.py starts
1, 2 or 4 of them over 4 CPU devices in all): a tiny CLIP with seeded random weights on the
digits; process 0 prints the metrics as one JSON line.

    python tests/linear_probe_processes.py DATA_DIR COORDINATOR NUM_PROCESSES PROCESS_ID
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import eval as evaluators
from mmjax.sharding import initialize_distributed
from mmjax.train.setup import setup
from tiny_configs import TOKENIZER, tiny_config

PROBE = dict(type="linear_probe", dataset="digit_captions", split="test", batch_size=200,
             max_train_examples=300, l2_grid=(1e-4, 1e-2, 1.0), max_iter=100, shots=(1, 5))


def main(data_dir, coordinator, num_processes, process_id):
    if num_processes > 1:
        initialize_distributed(coordinator, num_processes, process_id)
    config = tiny_config("clip")
    config.evals = {"probe": PROBE}
    run = setup(config, tokenizer=TOKENIZER, check_batch=False)
    rng = np.random.default_rng(0)   # the same random weights in every process
    replicated = NamedSharding(run.mesh, P())
    params = jax.tree.map(
        lambda a: (lambda x: jax.make_array_from_callback(x.shape, replicated, lambda i: x[i]))(
            (0.2 * rng.standard_normal(a.shape)).astype(a.dtype)), run.abstract_state.params)
    metrics = evaluators.build(run, data_dir)["probe"].run(params)
    if jax.process_index() == 0:
        print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                          **metrics}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
