"""`mmjax compile`: every recipe compiled for a TPU slice of its generation, per-chip batch kept.

The `tpu_compile` tests need libtpu (`launch/install.sh compile`, CI's last step); each
compile runs as `mmjax compile` in a subprocess, two at a time. The rest (topology names,
the out-of-memory message, the knobs) run in the default suite.
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from mmjax import aot
from mmjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"topology", "devices", "peak_bytes_per_device", "hbm_bytes", "fits", "flops_per_step",
        "step_time_bound_s"}
# recipe: (the slice it is sized for, the smaller slice of that generation it is tested on,
# slices in the test). The BERT one doubles as the multi-slice check.
RECIPES = {
    "recipe_clip_b16_32k": ("v5p-256", "v5p-8", 1),
    "recipe_siglip_b16": ("v5e-256", "v5e-4", 1),
    "recipe_bert_base_512": ("v4-32", "v4-8", 2),
    "recipe_clip_mlm": ("v4-256", "v4-8", 1),
    "recipe_gpu_8xh100": ("v5p-16", "v5p-8", 1),
    "recipe_lm_2k": ("v5p-32", "v5p-8", 1),
    "recipe_itm_b16": ("v4-64", "v4-8", 1),
    "recipe_electra_base_512": ("v4-8", "v4-8", 1),
}


def _recipe_args(name, per_chip_factor=1, topology=None):
    sized_for, tested_on, slices = RECIPES[name]
    path = os.path.join(ROOT, "configs", f"{name}.py")
    per_chip = config_lib.load(path).train.batch_size // aot.parse_topology(sized_for).chips
    topology = topology or tested_on
    chips = aot.parse_topology(topology, slices).chips
    return ["--config", path, "--topology", topology, "--num_slices", str(slices),
            f"--config.train.batch_size={per_chip * per_chip_factor * chips}"]


def _cases():
    cases = {name: _recipe_args(name) for name in RECIPES}
    # 8x the per-chip batch of the CLIP recipe on 16 GiB v5e chips: cannot fit.
    cases["oversized"] = _recipe_args("recipe_clip_b16_32k", 8, "v5e-4")
    return cases


def _compile(args):
    proc = subprocess.run([sys.executable, "-m", "mmjax.cli", "compile", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    return proc


@pytest.fixture(scope="module")
def compiled(request):
    """{case: CompletedProcess} of the cases the selected tests ask for, compiled 2 at a time."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:   # selected by `-m tpu_compile`: a missing libtpu is a failure, not a skip
        pytest.fail(f"libtpu does not import ({e}): run launch/install.sh compile first", pytrace=False)
    cases = _cases()
    wanted = sorted({item.callspec.params["case"] for item in request.session.items
                     if item.module is request.module and hasattr(item, "callspec")})
    with concurrent.futures.ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        return dict(zip(wanted, pool.map(_compile, [cases[c] for c in wanted])))


def _result(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= result.keys()
    return result


# CI compiles the BERT recipe (it doubles as the 2-slice check) and the oversized case: ~4 min
# on 2 cores. Every recipe (~13 min): `python -m pytest -m "tpu_compile or tpu_compile_recipes"
# tests/test_compile.py`, before changing a recipe or its README figures.
CI_RECIPES = ("recipe_bert_base_512",)


@pytest.mark.parametrize("case", [
    pytest.param(name, marks=pytest.mark.tpu_compile if name in CI_RECIPES
                 else pytest.mark.tpu_compile_recipes) for name in RECIPES])
def test_every_recipe_fits_its_generation(compiled, case):
    result = _result(compiled[case])
    _, tested_on, slices = RECIPES[case]
    assert result["topology"] == tested_on and result["num_slices"] == slices
    assert result["fits"], compiled[case].stdout
    assert 0 < result["peak_bytes_per_device"] <= result["hbm_bytes"]
    assert result["flops_per_step"] > 0 and result["step_time_bound_s"] > 0
    assert 0 < result["state_bytes_per_device"] < result["peak_bytes_per_device"]


@pytest.mark.tpu_compile
@pytest.mark.parametrize("case", ["recipe_bert_base_512"])
def test_two_slices_compile_with_the_slices_on_dcn(compiled, case):
    result = _result(compiled[case])
    assert result["num_slices"] == 2 and result["devices"] == 8 and result["hosts"] == 2
    assert result["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}   # dcn_data=2 x fsdp=4


@pytest.mark.tpu_compile
@pytest.mark.parametrize("case", ["oversized"])
def test_an_oversized_batch_does_not_fit_and_names_a_knob(compiled, case):
    proc = compiled[case]
    result = _result(proc)   # exit 0: not fitting is an answer, not an error
    assert result["fits"] is False
    assert result["peak_bytes_per_device"] is None or result["peak_bytes_per_device"] > result["hbm_bytes"]
    assert any("grad_accum_steps" in k for k in result["knobs"])
    assert "DOES NOT FIT" in proc.stdout and "to fit, try" in proc.stdout


def test_tpu_names_map_to_topologies():
    assert aot.parse_topology("v5p-256").topology_name == "v5:4x4x8"
    assert aot.parse_topology("v5p-256").chips == 128          # v5p counts TensorCores
    assert aot.parse_topology("v4-32").topology_name == "v4:2x2x4"
    assert aot.parse_topology("v5e-256").topology_name == "v5e:16x16"
    assert aot.parse_topology("v5litepod-16").topology_name == "v5e:4x4"
    assert aot.parse_topology("v6e-256", 2).chips == 512
    assert aot.parse_topology("v5p-8").desc_kwargs()["chip_config_name"] == "megacore"
    assert aot.parse_topology("v5e-256").accelerator_type == "v5litepod-256"
    for bad in ("v5e-12", "v5p-3", "h100-8", "v4"):
        with pytest.raises(aot.TopologyError):
            aot.parse_topology(bad)


def test_out_of_memory_message_and_knobs():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
               "temporaries (31.40G) exceeds available HBM (30.75G).")   # libtpu 0.0.42.1
    assert aot.bytes_from_error(message) == int(31.40 * 2**30)
    older = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
             "space hbm. Used 20.35G of 15.75G hbm. Exceeded hbm capacity by 4.60G.")
    assert aot.bytes_from_error(older) == int(20.35 * 2**30)
    assert aot.bytes_from_error("RESOURCE_EXHAUSTED: something else") is None
    config = ml_collections.ConfigDict(dict(
        task="clip",
        model=dict(remat="none", scan=False), train=dict(grad_accum_steps=1, batch_size=64),
        mesh=dict(data=-1, fsdp=1)))
    activations_first = aot.knobs(config, state_fraction=0.1)
    assert activations_first[0].startswith("--config.model.remat=dots")
    assert any("--config.train.grad_accum_steps=2" in k for k in activations_first)
    assert aot.knobs(config, state_fraction=0.9)[0].startswith("--config.mesh.fsdp=-1")
