"""A CPU-kernel build that was killed leaves torch's build lock behind; later processes must not
wait for it forever (mlip.ops.cpu_message.wait_for_build_lock)."""
import logging
import os
import threading
import time

from mlip.ops.cpu_message import build_directory, wait_for_build_lock


def _lock(folder, age_s=0.0):
    path = os.path.join(folder, "lock")
    open(path, "w").close()
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_a_stale_lock_is_removed_at_once(tmp_path, caplog):
    lock = _lock(str(tmp_path), age_s=3600)
    t0 = time.time()
    with caplog.at_level(logging.WARNING, logger="mlip"):
        wait_for_build_lock(str(tmp_path), stale_after=300, poll=0.05)
    assert not os.path.exists(lock) and time.time() - t0 < 1.0
    assert "left by a build that was killed" in caplog.text


def test_a_live_build_is_waited_for_and_its_lock_left_to_it(tmp_path):
    """A young lock released by its build: wait until it goes, remove nothing."""
    lock = _lock(str(tmp_path))
    threading.Timer(0.3, os.remove, [lock]).start()
    t0 = time.time()
    wait_for_build_lock(str(tmp_path), stale_after=30, poll=0.05)
    assert 0.25 < time.time() - t0 < 5


def test_a_young_lock_that_never_goes_is_removed_once_stale(tmp_path):
    lock = _lock(str(tmp_path))
    t0 = time.time()
    wait_for_build_lock(str(tmp_path), stale_after=0.4, poll=0.05)
    assert not os.path.exists(lock) and 0.35 < time.time() - t0 < 5


def test_no_lock_returns_at_once(tmp_path):
    wait_for_build_lock(str(tmp_path), stale_after=300, poll=10)


def test_the_build_folder_follows_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert build_directory("mlip_cpu_x") == os.path.join(str(tmp_path), "mlip_cpu_x")
