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


def test_auto_prefers_tcmalloc_where_installed_else_tunes_glibc(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    calls = []
    monkeypatch.setattr(allocator, "tune_glibc", lambda: calls.append("glibc"))
    monkeypatch.setattr(allocator, "preload", calls.append)
    monkeypatch.setattr(allocator, "installed", lambda name: "/lib/libtcmalloc_minimal.so.4")
    allocator.configure()
    allocator.configure(reexec=False)  # a library call never re-executes
    monkeypatch.setattr(allocator, "installed", lambda name: None)
    allocator.configure()
    assert calls == ["tcmalloc", "glibc", "glibc"]
