"""MLM-S at bfloat16 compute (float32 params and optimizer state); otherwise bench_mlm_s.py.

  python -m benchmarks.train_step configs/bench_mlm_s_bf16.py

Hardware: any; on a CPU without native bfloat16 matmuls (AVX2) it is slower than float32,
on GPU/TPU it is the setting to use. Expected: see benchmarks/README.md.
"""

from mmjax.configs import bench_mlm_s


def get_config():
    c = bench_mlm_s.get_config()
    c.model.dtype = "bfloat16"
    return c
