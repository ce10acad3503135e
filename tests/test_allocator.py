"""mmjax.allocator: $MMJAX_MALLOC choices (the glibc tuning runs in a child process)."""

import subprocess
import sys

import pytest

from mmjax import allocator


def test_unknown_choice_is_refused(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "nope")
    with pytest.raises(ValueError, match="glibc"):
        allocator.configure()


def test_system_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "system")
    monkeypatch.setattr(allocator, "tune_glibc", lambda: pytest.fail("tuned"))
    monkeypatch.setattr(allocator, "preload", lambda name: pytest.fail("preloaded"))
    allocator.configure()


def test_glibc_tuning_applies_in_process():
    code = "from mmjax import allocator; print(allocator.tune_glibc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
