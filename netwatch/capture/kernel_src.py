"""Kernel headers for bcc when none match the running kernel (DESIGN §9).

bcc compiles the C in `capture/bpf/` at load time and wants a kernel build tree. On the
project's machines `/lib/modules/$(uname -r)/build` is missing and only Debian's
`linux-headers-<ver>-common` + `linux-headers-<ver>-<arch>` pair is installed, for another
kernel version. The program only includes uapi headers (stable ABI), so any such tree
works once the two halves are merged the way Debian's kbuild expects: a symlink farm of
`-common` overlaid with the arch directory (what `cp -rs common/. D/ && cp -rsf arch/. D/`
produces). This module builds that farm once (under `/var/cache/netwatch/kernel-src`),
atomically, and points `BCC_KERNEL_SOURCE` at it; `ebpf.py` calls it before importing bcc.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path("/var/cache/netwatch/kernel-src")
ENV = "BCC_KERNEL_SOURCE"
_COMPLETE = ".netwatch-complete"
_COMMON = re.compile(r"^linux-headers-(?P<ver>.+)-common$")


class KernelSourceError(RuntimeError):
    """No usable kernel header tree: bcc cannot compile the capture program."""


@dataclass(frozen=True, slots=True)
class HeaderPair:
    common: Path
    arch: Path

    @property
    def name(self) -> str:
        return self.arch.name


def find_header_pairs(usr_src: Path = Path("/usr/src")) -> list[HeaderPair]:
    """Debian header pairs (`-common` + one arch flavour), newest version first."""
    pairs: list[HeaderPair] = []
    if not usr_src.is_dir():
        return pairs
    for common in sorted(usr_src.iterdir()):
        match = _COMMON.match(common.name)
        if not match or not common.is_dir():
            continue
        for arch in sorted(usr_src.glob(f"linux-headers-{match['ver']}-*")):
            if arch != common and arch.is_dir() and (arch / "include").exists():
                pairs.append(HeaderPair(common=common, arch=arch))
    pairs.sort(key=lambda p: _version_key(p.arch.name), reverse=True)
    return pairs


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _overlay(src: Path, dst: Path) -> None:
    """`cp -rsf src/. dst/`: real directories, symlinks to the source's files."""
    for root, dirs, files in os.walk(src, followlinks=False):
        rel = Path(root).relative_to(src)
        target_dir = dst / rel
        target_dir.mkdir(parents=True, exist_ok=True)
        linked_dirs = [d for d in dirs if (Path(root) / d).is_symlink()]
        for name in [*files, *linked_dirs]:
            link = target_dir / name
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.is_dir():
                shutil.rmtree(link)
            link.symlink_to(Path(root) / name)
        dirs[:] = [d for d in dirs if d not in linked_dirs]


def build_tree(pair: HeaderPair, cache: Path) -> Path:
    """The merged tree for `pair` under `cache`, built once and renamed into place."""
    final = cache / pair.name
    if (final / _COMPLETE).exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{pair.name}.", dir=cache))
    try:
        _overlay(pair.common, work)
        _overlay(pair.arch, work)
        (work / _COMPLETE).write_text(f"{pair.common}\n{pair.arch}\n")
        try:
            work.rename(final)
        except OSError:  # another process won the race, or a stale incomplete tree
            if not (final / _COMPLETE).exists():
                shutil.rmtree(final, ignore_errors=True)
                work.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final


def ensure_kernel_source(
    *,
    cache: Path = DEFAULT_CACHE,
    usr_src: Path = Path("/usr/src"),
    modules: Path = Path("/lib/modules"),
    release: str | None = None,
) -> Path | None:
    """Make bcc find kernel headers; returns the tree used (None: bcc's own lookup works).

    Order: an explicit `BCC_KERNEL_SOURCE`; `/lib/modules/<release>/build` (bcc finds it
    itself); else the merged Debian tree, built on first use.
    """
    explicit = os.environ.get(ENV)
    if explicit and Path(explicit, "include").is_dir():
        return Path(explicit)
    release = release or os.uname().release
    if (modules / release / "build" / "include").is_dir():
        return None
    pairs = find_header_pairs(usr_src)
    if not pairs:
        raise KernelSourceError(
            f"no kernel headers: /lib/modules/{release}/build is missing and no "
            f"linux-headers-*-common/-<arch> pair is installed in {usr_src} "
            "(install linux-headers-amd64, or set BCC_KERNEL_SOURCE)"
        )
    tree = build_tree(pairs[0], cache)
    os.environ[ENV] = str(tree)
    return tree
