"""Puts a finished build in place with renames, and cleans up what killed builds left behind."""

from __future__ import annotations

import os
import shutil
import socket

from mmjax.data.build.records import BuildError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_folder(data_dir: str, name: str, what: str = 'building') -> str:
    """A dot-folder only this process writes: readers never look at dot-folders."""
    return os.path.join(data_dir, f'.{name}.{what}-{socket.gethostname()}-{os.getpid()}')


def clean_stale(data_dir: str, name: str) -> None:
    """Removes what killed builds of `name` on this host left behind (their process is gone); an
    old copy moved aside by a killed --overwrite goes back in place when nothing replaced it."""
    host = socket.gethostname()
    for entry in sorted(os.listdir(data_dir)):
        for what in ('building', 'old'):
            prefix = f'.{name}.{what}-{host}-'
            pid = entry[len(prefix):]
            if not entry.startswith(prefix) or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            path, target = os.path.join(data_dir, entry), os.path.join(data_dir, name)
            if what == 'old' and not os.path.exists(target):
                os.rename(path, target)
            else:
                shutil.rmtree(path, ignore_errors=True)


def put_in_place(built: str, data_dir: str, name: str, replace: bool) -> None:
    """Renames the finished temp folder into place; an existing dataset is moved aside first and
    removed only once the new one is in."""
    target = os.path.join(data_dir, name)
    old = None
    if replace and os.path.exists(target):
        old = temp_folder(data_dir, name, 'old')
        os.rename(target, old)
    try:
        os.rename(built, target)
    except OSError as err:
        if old:
            os.rename(old, target)
        raise BuildError(f'cannot move the build into {target} ({err.strerror}); another build of '
                         f'{name!r} may have finished first: rerun with --overwrite') from None
    if old:
        shutil.rmtree(old, ignore_errors=True)
