"""torch, imported lazily (the [convert] extra): a guard for a CUDA-only torchvision, .pt <-> numpy."""

import glob
import importlib.util
import os

import numpy as np

_STUB_LIBRARIES = []  # torch.library.Library objects must stay alive for their definitions to last


def import_torch():
    """torch, after making sure open_clip and transformers can import torchvision.

    PyPI's torchvision is a CUDA build: next to the CPU torch its `_C` extension does not
    load, and its import then fails registering fake kernels for `torchvision::nms`/`qnms`.
    When `_C` does not load, those two schemas are defined (no kernels: nothing here calls them).
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError('conversion needs the [convert] extra: '
                          'pip install -c constraints/torch.txt -e ".[convert]"') from e
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.submodule_search_locations and not _STUB_LIBRARIES:
        extensions = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
        try:
            torch.ops.load_library(extensions[0])
        except (OSError, IndexError):
            library = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                if not hasattr(torch.ops.torchvision, op):  # another module may have stubbed it
                    library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _STUB_LIBRARIES.append(library)
    return torch


def to_numpy(state_dict):
    """{name: float32 numpy array} of a torch state_dict (or of a dict of arrays)."""
    out = {}
    for name, x in state_dict.items():
        if hasattr(x, "detach"):
            x = x.detach().cpu()
            x = x.float().numpy() if x.is_floating_point() else x.numpy()
        out[name] = np.asarray(x)
    return out


def save_pt(tensors, path):
    """Writes {name: numpy array} as a torch state_dict file (torch.save)."""
    torch = import_torch()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, path)


def load_pt(path):
    """{name: numpy array} of a torch state_dict file (tensors only: weights_only=True)."""
    torch = import_torch()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return to_numpy(state.get("state_dict", state))
