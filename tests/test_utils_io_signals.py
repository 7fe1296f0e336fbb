"""A requeue signal arriving during a checkpoint write is handled after the write, not inside it."""

import os
import signal

import torch

from sf_mamba.utils import io


def test_signal_during_atomic_torch_save_is_deferred_until_the_file_is_complete(tmp_path, monkeypatch):
    events = []
    target = tmp_path / "last.pth"

    def handler(signum, frame):  # like submitit's: it must find a complete checkpoint
        events.append(("handled", target.exists() and torch.load(target, weights_only=True)["step"]))

    previous = signal.signal(signal.SIGUSR2, handler)
    real_save = torch.save

    def save_and_get_signalled(obj, fh, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR2)
        events.append(("saving", None))
        return real_save(obj, fh, **kwargs)

    monkeypatch.setattr(torch, "save", save_and_get_signalled)
    try:
        io.atomic_torch_save({"step": 7}, target)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert events == [("saving", None), ("handled", 7)]
    assert signal.getsignal(signal.SIGUSR2) is previous
