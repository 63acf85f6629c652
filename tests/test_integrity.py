"""Tests for dmrilib.integrity: sha256 sidecars and value checks of stored arrays."""
import numpy as np
import pytest

from dmrilib.integrity import IntegrityError, load_npy, read_sidecar, save_npy, sha256_file, sidecar_path


def test_save_npy_writes_a_sha256sum_sidecar_that_load_npy_checks(tmp_path):
    path = tmp_path / "maps-test.npy"
    digest = save_npy(path, np.arange(6, dtype=np.float32))
    assert sidecar_path(path).read_text() == f"{digest}  maps-test.npy\n" and digest == sha256_file(path)
    assert read_sidecar(path) == digest
    np.testing.assert_array_equal(load_npy(path), np.arange(6, dtype=np.float32))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"maps-test.npy: sha256 .* does not match its record"):
        load_npy(path)


def test_load_npy_refuses_a_file_without_sidecar(tmp_path):
    path = tmp_path / "old.npy"
    np.save(path, np.zeros(3))  # written before dmrilib recorded sha256s
    with pytest.raises(IntegrityError, match=r"old.npy: no sha256 record \(old.npy.sha256 is missing\)"):
        load_npy(path)


def test_load_npy_names_the_callers_remedy_for_every_problem(tmp_path):
    path = tmp_path / "maps-test.npy"
    remedy = "Run the evaluate job of dae/lsd16-linear fold 0 again."
    save_npy(path, np.array([0.5, np.nan], np.float32))
    with pytest.raises(IntegrityError, match=r"maps-test.npy: 1 value\(s\) are NaN or infinite.*" + remedy):
        load_npy(path, what_to_do=remedy)
    assert np.isnan(load_npy(path, finite=False)[1])
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # the NaN's last byte changed after writing
    with pytest.raises(IntegrityError, match=r"does not match its record.*" + remedy):
        load_npy(path, what_to_do=remedy)
    with pytest.raises(FileNotFoundError, match=r"missing.npy: no such file.*" + remedy):
        load_npy(tmp_path / "missing.npy", what_to_do=remedy)
