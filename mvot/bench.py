"""Benchmarks that print figures (never timed assertions in tests)."""

from __future__ import annotations

import os
import time

from mvot.config import Params
from mvot.data import draw_instance
from mvot.render import Renderer


def bench_generate(params: Params, n: int, tasks) -> list[dict]:
    """Instances per second for drawing, rendering and PNG-encoding, one process, per task,
    plus the projected wall time of the task's default data with all workers."""
    rows = []
    for task in tasks:
        renderer = Renderer.from_params(params, task)
        t0 = time.perf_counter()
        insts = [draw_instance(params, task, "train", i) for i in range(n)]
        t1 = time.perf_counter()
        states = [s for inst in insts for s in inst.states]
        frames = [renderer.render_array(s) for s in states]
        t2 = time.perf_counter()
        for s in states:
            renderer.png(s)  # renders again: png_frames_per_s counts rendering + encoding
        t3 = time.perf_counter()
        total = sum(params.generate.task(task).splits.of(s) for s in ("train", "val", "test"))
        per_inst = ((t1 - t0) + (t3 - t2)) / n
        workers = params.generate.workers or os.cpu_count() or 1
        rows.append({
            "task": task,
            "instances": n,
            "frames": len(frames),
            "draw_inst_per_s": round(n / (t1 - t0), 1),
            "render_frames_per_s": round(len(frames) / (t2 - t1), 1),
            "render_png_frames_per_s": round(len(frames) / (t3 - t2), 1),
            "end_to_end_inst_per_s": round(n / ((t1 - t0) + (t3 - t2)), 1),
            "default_instances": total,
            "projected_default_s": round(total * per_inst / workers, 1),
            "workers": workers,
        })
    return rows


def _perturbations(renderer: Renderer, state, rng):
    """The degraded versions of a clean render that ``bench_parse`` scores."""
    import io

    import numpy as np
    from PIL import Image, ImageFilter

    img = renderer.render(state)
    arr = np.asarray(img, dtype=np.float32)
    yield "clean", img
    yield "noise_sigma30", np.clip(arr + rng.normal(0, 30, arr.shape), 0, 255).astype(np.uint8)
    yield "blur_radius1", img.filter(ImageFilter.GaussianBlur(1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=50)
    yield "jpeg_q50", Image.open(buf)
    half = renderer.image_size // 2
    yield "half_resolution", img.resize((half, half), Image.Resampling.BILINEAR)


def bench_parse(params: Params, n: int, tasks) -> list[dict]:
    """Share of states that ``parse`` reads back exactly, clean and under perturbations."""
    import numpy as np

    rows = []
    for task in tasks:
        renderer = Renderer.from_params(params, task)
        rng = np.random.default_rng(0)
        hits: dict[str, list[bool]] = {}
        t0 = time.perf_counter()
        for i in range(n):
            for state in draw_instance(params, task, "test", i).states:
                for name, img in _perturbations(renderer, state, rng):
                    hits.setdefault(name, []).append(renderer.parse(img) == state)
        rows.append({"task": task, "states": len(hits["clean"])} | {k: round(float(np.mean(v)), 4) for k, v in hits.items()}
                    | {"parse_ms": round(1000 * (time.perf_counter() - t0) / sum(len(v) for v in hits.values()), 3)})
    return rows
