"""The TensorBoard tracker's writer (the optional package: pip install "ddpmctl[tensorboard]").

    RUN/tensorboard/events.out.tfevents.*
      scalars   loss, grad_norm, lr, time (each loss record); METRIC/KEY (each evaluation's values);
                EVENT/KEY (the numbers of another event, such as skipped/skipped_total)
      text      events: the JSON of each record with an "event" (evaluations, skipped steps)
      images    grids: the sample grids of RUN/grids/; loss, convergence, samples-over-training: the
                run's plots when a session ends

A resumed session writes from the step after its checkpoint again; the writer's purge_step
makes TensorBoard's reader drop the earlier session's events from there on, as metrics.jsonl
drops its records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from ddpmctl.trackers.base import Tracker

SKIP = {"step", "event"}  # not values: the x axis, and the kind of record


class TensorBoard(Tracker):
    def __init__(self, folder: Path, start_step: int, flush_secs: int):
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1, flush_secs=flush_secs)

    def record(self, rec: dict) -> None:
        step = int(rec.get("step", 0))
        if "event" in rec:
            self.writer.add_text("events", json.dumps(rec), step)
        event = rec.get("event")
        if event == "eval":
            values = {f"{rec.get('metric', 'eval')}/{k}": v for k, v in (rec.get("values") or {}).items()}
        else:  # a loss record's values under their own names; another event's under its name
            values = {(f"{event}/{k}" if event else k): v for k, v in rec.items() if k not in SKIP}
        for tag, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def picture(self, tag: str, step: int, path: Path) -> None:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(tag, arr, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
