"""One writer per folder: saves into one adapter folder are serialized, and one run holds an output folder at a time
(`neat_hf.io.folder_lock`: flock on the folder, dropped by the OS when the holder dies)."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import load_file
from testing_common import randomize_adapter

from neat_hf import NeatConfig, NeatModel, get_neat_model
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, TRAINING_INFO_NAME
from neat_hf.errors import FolderInUseError
from neat_hf.io import WEIGHTS_SHA_KEY, check_saved_together, folder_lock, read_weights_metadata, recorded_weights_stamp
from neat_hf.cli.train.main import cli


def _adapter(seed: int) -> NeatModel:
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, target_modules=["q_proj"]))
    torch.manual_seed(seed)
    randomize_adapter(model)
    return model


def _hold_in_child(folder: Path) -> tuple[int, int]:
    """Fork a child that holds `folder`'s lock until killed; returns (pid, fd of a pipe it wrote 'held' to)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            with folder_lock(folder, timeout=0):
                os.write(write_fd, b"held")
                time.sleep(600)
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 4) == b"held"
    os.close(read_fd)
    return pid


def _assert_one_save(folder: Path) -> None:
    """The folder is one save's files: config, weights and training record agree."""
    check_saved_together(folder / ADAPTER_CONFIG_NAME, folder / ADAPTER_WEIGHTS_NAME)
    stamp = read_weights_metadata(folder / ADAPTER_WEIGHTS_NAME)[WEIGHTS_SHA_KEY]
    assert recorded_weights_stamp(folder / TRAINING_INFO_NAME) == stamp


def test_a_save_waits_for_another_save_into_the_same_folder(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    pid = _hold_in_child(folder)  # another process in the middle of a save into the folder
    model = _adapter(1)
    saver = threading.Thread(target=model.save_pretrained, args=(folder,))
    try:
        saver.start()
        time.sleep(1.0)
        assert saver.is_alive() and os.listdir(folder) == []  # waiting, nothing written
    finally:
        os.kill(pid, signal.SIGKILL)  # the OS drops a dead holder's lock
        os.waitpid(pid, 0)
    saver.join(timeout=60)
    assert not saver.is_alive()
    _assert_one_save(folder)


def test_a_save_gives_up_in_one_line_when_the_folder_stays_busy(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    pid = _hold_in_child(folder)
    try:
        with pytest.raises(FolderInUseError, match="is in use"):
            with folder_lock(folder, timeout=0.2):
                pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with folder_lock(folder, timeout=0):  # free again once the holder died
        with folder_lock(folder, timeout=0):  # and re-entrant in one thread
            pass


def test_concurrent_saves_into_one_folder_never_mix(tmp_path):
    """Two processes saving different adapters into one folder 8 times each: no error, and the folder is always one
    save's files (before the lock, writers deleted each other's temporary files and could leave B's weights under
    A's card)."""
    folder = tmp_path / "adapter"
    pids = []
    for seed in (1, 2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                torch.set_num_threads(1)
                model = _adapter(seed)
                for _ in range(8):
                    model.save_pretrained(folder)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    assert statuses == [0, 0]
    _assert_one_save(folder)
    saved = load_file(folder / ADAPTER_WEIGHTS_NAME)
    assert any(all(torch.equal(saved[k], v) for k, v in load_file(_save(tmp_path, seed)).items()) for seed in (1, 2))


def _save(tmp_path: Path, seed: int) -> Path:
    out = tmp_path / f"single{seed}"
    _adapter(seed).save_pretrained(out)
    return out / ADAPTER_WEIGHTS_NAME


def test_a_second_neat_train_into_a_busy_output_dir_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def fail(*args, **kwargs):
        raise AssertionError("data or model was loaded before the check")

    monkeypatch.setattr("neat_hf.cli.train.job.data_sources.load_raw_datasets", fail)
    pid = _hold_in_child(out)  # another run holds the folder
    try:
        assert cli(["--max_steps", "1", "--output_dir", str(out)]) == 2
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("neat-train:")]
    assert len(err) == 1 and "is in use by another run" in err[0], err
    assert os.listdir(out) == []


def test_neat_train_holds_its_output_dir_while_it_runs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []

    def probe(job):  # stands in for the training: is the folder held against another process?
        pid = os.fork()
        if pid == 0:  # a fresh open file description, as another process has (a fork inherits this one's hold)
            try:
                fcntl.flock(os.open(out, os.O_RDONLY | os.O_DIRECTORY), fcntl.LOCK_EX | fcntl.LOCK_NB)
                os._exit(0)
            except BlockingIOError:
                os._exit(3)
            os._exit(1)
        seen.append(os.waitpid(pid, 0)[1] >> 8)
        raise FolderInUseError("stop here")

    monkeypatch.setattr("neat_hf.cli.train.job._run", probe)
    assert cli(["--max_steps", "1", "--output_dir", str(out), "--max_train_samples", "8", "--max_eval_samples", "4"]) == 2
    assert seen == [3]
    with folder_lock(out, timeout=0):  # released when the run ended
        pass
