"""Atomic writes: the file appears whole or not at all, with the permissions a plain open() would give."""

import os

import pytest
import torch
from safetensors.torch import save_file

from steerlens.files import atomic_write, read_json, write_json


def _mode(p):
    return os.stat(p).st_mode & 0o777


def test_permissions_follow_umask_for_every_writer(tmp_path):
    old = os.umask(0o027)
    try:
        text = atomic_write(tmp_path / "a.txt", lambda t: t.write_text("x"))
        st = atomic_write(tmp_path / "v.safetensors", lambda t: save_file({"x": torch.zeros(2)}, str(t)))
    finally:
        os.umask(old)
    assert _mode(text) == 0o640
    assert _mode(st) == 0o640  # safetensors recreates the temp file; mkstemp's 0600 must not survive


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = write_json(tmp_path / "m.json", {"a": 1})

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, boom)
    assert read_json(p) == {"a": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.json"]
