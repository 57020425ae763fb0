"""Building the merged Debian header tree bcc compiles against (fake /usr/src on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from netwatch.capture import kernel_src


def fake_usr_src(root: Path, version: str = "6.1.0-56") -> Path:
    common = root / f"linux-headers-{version}-common"
    arch = root / f"linux-headers-{version}-amd64"
    kbuild = root / "kbuild-scripts"
    (common / "include" / "uapi" / "linux").mkdir(parents=True)
    (common / "include" / "uapi" / "linux" / "bpf.h").write_text("/* common */")
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "kconfig.h").write_text("/* common */")
    (arch / "include" / "generated").mkdir(parents=True)
    (arch / "include" / "generated" / "autoconf.h").write_text("/* arch */")
    (arch / "include" / "linux").mkdir(parents=True)
    (arch / "include" / "linux" / "kconfig.h").write_text("/* arch wins */")
    kbuild.mkdir(exist_ok=True)
    (arch / "scripts").symlink_to(kbuild)
    return root


def test_the_tree_overlays_arch_on_common_with_symlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # setenv first so that monkeypatch restores the original state (usually: unset)
    # after ensure_kernel_source() sets it: a leaked fake tree breaks every later bcc
    # compile in this session (the privileged tests' subprocesses inherit it).
    monkeypatch.setenv(kernel_src.ENV, "")
    monkeypatch.delenv(kernel_src.ENV)
    usr_src = fake_usr_src(tmp_path / "src")
    tree = kernel_src.ensure_kernel_source(
        cache=tmp_path / "cache", usr_src=usr_src, modules=tmp_path / "modules", release="x"
    )
    assert tree == tmp_path / "cache" / "linux-headers-6.1.0-56-amd64"
    assert (tree / "include" / "uapi" / "linux" / "bpf.h").read_text() == "/* common */"
    assert (tree / "include" / "linux" / "kconfig.h").read_text() == "/* arch wins */"
    assert (tree / "include" / "generated" / "autoconf.h").is_symlink()
    assert (tree / "scripts").is_symlink()
    assert kernel_src.os.environ[kernel_src.ENV] == str(tree)
    # built once: a second call reuses it
    again = kernel_src.build_tree(kernel_src.find_header_pairs(usr_src)[0], tmp_path / "cache")
    assert again == tree


def test_newest_header_pair_first(tmp_path: Path) -> None:
    usr_src = fake_usr_src(tmp_path, "6.1.0-9")
    fake_usr_src(tmp_path, "6.1.0-56")
    names = [p.name for p in kernel_src.find_header_pairs(usr_src)]
    assert names == ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-9-amd64"]


def test_an_explicit_source_or_a_modules_build_link_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine" / "include").mkdir(parents=True)
    monkeypatch.setenv(kernel_src.ENV, str(tmp_path / "mine"))
    assert kernel_src.ensure_kernel_source(usr_src=tmp_path / "none") == tmp_path / "mine"
    monkeypatch.delenv(kernel_src.ENV)
    (tmp_path / "modules" / "r1" / "build" / "include").mkdir(parents=True)
    got = kernel_src.ensure_kernel_source(
        usr_src=tmp_path / "none", modules=tmp_path / "modules", release="r1"
    )
    assert got is None


def test_no_headers_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernel_src.ENV, raising=False)
    with pytest.raises(kernel_src.KernelSourceError, match="linux-headers"):
        kernel_src.ensure_kernel_source(
            usr_src=tmp_path, modules=tmp_path / "modules", release="r1"
        )


def test_one_capture_per_scope_and_no_lock_file_left(tmp_path: Path) -> None:
    from netwatch.capture.bpffs import BpffsError, ScopeLock

    first = ScopeLock("netns-1", lock_dir=tmp_path)
    with pytest.raises(BpffsError, match="another netwatch capture"):
        ScopeLock("netns-1", lock_dir=tmp_path)
    other = ScopeLock("netns-2", lock_dir=tmp_path)
    first.release()
    first.release()  # idempotent
    again = ScopeLock("netns-1", lock_dir=tmp_path)
    again.release()
    other.release()
    assert list(tmp_path.iterdir()) == []
