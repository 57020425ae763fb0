"""bpffs: mounting it, the pin directory of one capture scope, and a single-drainer lock.

Pinned maps are what make a capture restart lossless (see `bpf/flows.c`): the program
and the process come and go, the maps stay under `/sys/fs/bpf/netwatch/<scope>`. The
scope is the network namespace the programs are attached in (`netns-<inode>`), so two
node namespaces of the lab on one machine never share maps.

Caveat: every `mount -t bpf` creates a NEW bpffs instance, and `ip netns exec` remounts
/sys in a private mount namespace — pins made under `ip netns exec` are invisible to the
next process. `netwatch capture --netns NAME` enters only the network namespace and
keeps the host's bpffs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "netwatch"
LOCK_DIR = Path("/run/netwatch")


class BpffsError(RuntimeError):
    """bpffs could not be mounted, or a pinned map does not fit this program."""


def mounted_fs_types(path: Path, *, mounts: Path = Path("/proc/self/mounts")) -> list[str]:
    """Filesystem types mounted exactly at `path` (innermost last)."""
    found: list[str] = []
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == str(path):
            found.append(parts[2])
    return found


def ensure_mounted(path: Path = BPFFS, *, fstype: str = "bpf") -> bool:
    """Mount `fstype` at `path` when it is not there; True when this call mounted it."""
    types = mounted_fs_types(path)
    if types and types[-1] == fstype:
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", fstype, fstype, str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BpffsError(f"cannot mount {fstype} at {path}: {result.stderr.strip()}")
    return True


def netns_inode(path: str = "/proc/self/ns/net") -> int:
    return os.stat(path).st_ino


def default_pin_dir() -> Path:
    return PIN_ROOT / f"netns-{netns_inode()}"


def remove_pins(pin_dir: Path) -> None:
    """Unpin every map of the scope (the kernel frees them once no program holds them)."""
    shutil.rmtree(pin_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        pin_dir.parent.rmdir()  # only when empty: other scopes may live there


class ScopeLock:
    """At most one capture per network namespace: two would replace each other's TC filters
    (same priority and handle) and split each other's deltas."""

    def __init__(self, name: str, *, lock_dir: Path = LOCK_DIR) -> None:
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.path = lock_dir / f"{name}.lock"
        while True:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                raise BpffsError(
                    f"another netwatch capture is running in this scope ({name}, lock {self.path})"
                ) from None
            try:  # the holder we waited behind may have unlinked the file meanwhile
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return
            except FileNotFoundError:
                pass
            os.close(self._fd)

    def release(self) -> None:
        """Unlink, then unlock: no lock file outlives its capture."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class MapInfo:
    map_type: int
    key_size: int
    value_size: int
    max_entries: int


class _BpfMapInfo(ctypes.Structure):
    # struct bpf_map_info prefix (uapi/linux/bpf.h); the kernel fills what fits.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def pinned_map_info(path: Path) -> MapInfo | None:
    """Type and sizes of a pinned map (BPF_OBJ_GET + BPF_OBJ_GET_INFO_BY_FD), None if absent."""
    if not path.exists():
        return None
    lib = ctypes.CDLL("libbcc.so.0", use_errno=True)
    lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
    lib.bpf_obj_get.restype = ctypes.c_int
    lib.bpf_obj_get_info.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_obj_get_info.restype = ctypes.c_int
    fd = lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            return None
        raise BpffsError(f"cannot open pinned map {path}: {os.strerror(err)}")
    try:
        info = _BpfMapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if lib.bpf_obj_get_info(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
            raise BpffsError(f"cannot read {path}: {os.strerror(ctypes.get_errno())}")
        return MapInfo(
            map_type=info.type,
            key_size=info.key_size,
            value_size=info.value_size,
            max_entries=info.max_entries,
        )
    finally:
        os.close(fd)
