"""Recipe: CLIP ViT-B/32 at 224 px, global batch 4,096, on one host of 8 H100s (80 GB).

  mmjax data build '/data/cc12m/{00000..01242}.tar' --name cc12m --max_side 256
  mmjax train --config configs/recipe_gpu_8xh100.py        # launch/slurm_gpu.sbatch for SLURM

512 pairs per GPU, data parallel over the 8 GPUs (mesh data=8: NVLink all-reduces the
gradients), bfloat16 compute, cuDNN flash attention, dots rematerialisation, AdamW(1e-3,
wd 0.2), 60k steps (about 20 epochs of CC12M).

Memory: `mmjax compile` cannot target GPUs, so the step is compiled for the nearest TPU
stand-in, 8 chips of a v5p-16 slice (95 GiB each) with the same 512 pairs per device (and
XLA attention for cuDNN's); XLA:TPU's plan is a guide to XLA:GPU's, not a measurement:

  mmjax compile --config configs/recipe_gpu_8xh100.py --topology v5p-16

(jax 0.10.2, libtpu 0.0.42.1): peak 14.7 GiB per device (train state 1.69 GiB, replicated),
far under an H100's 80 GB. Speed, analytical: 1.68e+14 FLOPs a step (mmjax/flops.py) on 8 x
H100 at 989 TFLOP/s dense bf16 each (NVIDIA's H100 SXM datasheet) is at least 21 ms a step
at 100% MFU, 53 ms at 40% MFU (about 77k pairs/s).
"""

from mmjax.configs import recipe_clip_b16_32k


def get_config():
    """The v5p recipe's CLIP with ViT-B/32 images, data parallel at 512 pairs per GPU."""
    c = recipe_clip_b16_32k.get_config()
    c.data.update(train="cc12m", worker_count=12)
    c.model.update(remat="dots", attention="cudnn")
    c.model.image.patch_size = 32
    c.train.update(steps=60_000, batch_size=4096)
    c.optim.update(lr=1e-3)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.evals = {"retrieval": dict(type="retrieval", dataset="cc12m", split="validation")}
    c.eval.batch_size = 1024
    return c
