"""atomic_open gives its file the permissions a plain open() would, and stays atomic."""
import os
import stat

import pytest

from vos_det.engine.checkpoint import AtomicWritePathManager
from vos_det.utils.file_io import atomic_open


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    previous = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_mode_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.json", "w") as f:
        f.write("{}")
    with atomic_open(str(tmp_path / "atomic.json"), "w") as f:
        f.write("{}")
    assert _mode(tmp_path / "atomic.json") == 0o666 & ~mask == _mode(tmp_path / "plain.json")
    assert sorted(os.listdir(tmp_path)) == ["atomic.json", "plain.json"]  # renamed, no temp left


def test_replaced_file_keeps_its_mode_and_content_is_swapped_whole(tmp_path, umask):
    target = tmp_path / "last_checkpoint"
    target.write_text("model_0000999.pth")
    os.chmod(target, 0o640)
    inode_before = os.stat(target).st_ino
    with atomic_open(str(target), "w") as f:
        f.write("model_0001999.pth")
        assert target.read_text() == "model_0000999.pth"  # not visible before the rename
    assert target.read_text() == "model_0001999.pth"
    assert _mode(target) == 0o640
    assert os.stat(target).st_ino != inode_before  # a rename, not an in-place rewrite


def test_checkpointer_path_manager_writes_readable_checkpoints(tmp_path, umask):
    from detectron2.utils.file_io import PathManager

    umask(0o022)
    manager = AtomicWritePathManager(PathManager)
    with manager.open(str(tmp_path / "model_final.pth"), "wb") as f:
        f.write(b"weights")
    assert _mode(tmp_path / "model_final.pth") == 0o644
    assert (tmp_path / "model_final.pth").read_bytes() == b"weights"
