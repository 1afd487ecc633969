"""Run training from a saved config in a child process, optionally killed (SIGKILL) at the Nth atomic file
write: ``python fault_child.py CONFIG RUN_DIR [N before|inside]``. ``inside`` kills after half of the file's
bytes reached its temporary file; ``before`` kills before the write starts."""

from __future__ import annotations

import io
import os
import signal
import sys

import torch
from omegaconf import OmegaConf

from mqreid.engine import checkpoint, trainer


def main() -> None:
    cfg = OmegaConf.load(sys.argv[1])
    run_dir = sys.argv[2]
    if len(sys.argv) > 3:
        kill_at, where = int(sys.argv[3]), sys.argv[4]
        original, calls = checkpoint.write_atomic, [0]

        def write_atomic(path, write, mode="wb"):
            calls[0] += 1
            if calls[0] == kill_at:
                if where == "before":
                    os.kill(os.getpid(), signal.SIGKILL)

                def half_then_die(f):
                    buffer = io.BytesIO() if "b" in mode else io.StringIO()
                    write(buffer)
                    data = buffer.getvalue()
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

                return original(path, half_then_die, mode)
            return original(path, write, mode)

        checkpoint.write_atomic = write_atomic
        trainer.write_atomic = write_atomic
    torch.set_num_threads(1)
    trainer.Trainer(cfg, run_dir).fit()


if __name__ == "__main__":
    main()
