"""States to images and back (Pillow + NumPy).

Every task draws its grid top-left on a square canvas of ``canvas_cells`` x ``canvas_cells``
cells of ``cell_px`` pixels each (canvas = the task's largest grid, from params); canvas
cells beyond a smaller grid are a flat grey *outside*. So every grid cell is exactly one
pixel block and lines up with the image tokenizer's patches whatever the grid size.

A state is first turned into one *cell key* per grid cell (what that cell shows: tile and
agent, walls and arrows, furniture...). Each distinct key is drawn once with Pillow and
cached; an image is the mosaic of its cells' patches, so rendering is deterministic (same
state, same bytes) and fast.

``parse`` is the inverse: it cuts the image into cells, reads each cell's key by nearest
template (L2 over pixels; MAZE reads walls from the edge strips and the rest from the cell
interior), picks the grid size whose inside/outside pattern fits best, and assembles a
state. On clean renders it is exact; on noisy or decoded images it returns its best
reading and never raises. ``read_cells`` exposes the per-cell reading itself, which is what
the visualisation metrics compare.

Legend:

* FROZENLAKE: ice-blue frozen tile, green-framed start, dark-blue hole, gold goal (gift),
  red disc = agent.
* MAZE: white passages, black walls, tinted candidate cells with their letter (A blue,
  B green, C yellow, D violet), red dot = start, red arrows = path so far (the last arrow
  head marks the agent).
* MINIBEHAVIOR: dark walls, beige floor, brown table, teal furniture,
  violet printer (white paper on top), red triangle = agent (with a printer
  badge while carrying it). With ``render.minibehavior.reach`` the agent's *reach*, the
  four cells next to it where pick-up and put-down act, is framed in yellow (like
  MiniGrid's highlighted view), so "is the printer / a table cell next to the agent" is
  one cell's drawing (``printer_reach``, ``table_reach``) instead of two cells' positions.
"""

from __future__ import annotations

import io
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mvot.worlds import maze as maze_world
from mvot.worlds.base import Cell
from mvot.worlds.frozenlake import FrozenLakeState
from mvot.worlds.maze import MazeState
from mvot.worlds.minibehavior import MiniBehaviorState

Key = Any  # a hashable description of what one cell shows
OUTSIDE: Key = "outside"
RGB = tuple[int, int, int]

OUTSIDE_RGB: RGB = (150, 150, 150)
RED: RGB = (220, 30, 30)
DIRS = ("up", "down", "left", "right")


def _unit(px: int, frac: float) -> int:
    return max(1, round(px * frac))


# --------------------------------------------------------------------------------------
# FROZENLAKE


class _FrozenLakePainter:
    ICE: RGB = (205, 232, 250)
    ICE_LINE: RGB = (150, 190, 220)
    START: RGB = (40, 160, 70)
    HOLE: RGB = (20, 35, 80)
    GOAL: RGB = (240, 190, 30)
    GOAL_RIBBON: RGB = (170, 60, 20)

    def keys(self, s: FrozenLakeState) -> dict[Cell, Key]:
        return {(r, c): (s.desc[r][c], (r, c) == s.agent) for r in range(s.size) for c in range(s.size)}

    def all_keys(self) -> list[Key]:
        return [(t, a) for t in "SFHG" for a in (False, True)]

    def draw(self, d: ImageDraw.ImageDraw, key: Key, px: int) -> None:
        tile, agent = key
        d.rectangle([0, 0, px - 1, px - 1], fill=self.ICE, outline=self.ICE_LINE)
        m = _unit(px, 0.12)
        if tile == "S":
            d.rectangle([m, m, px - 1 - m, px - 1 - m], outline=self.START, width=_unit(px, 0.1))
        elif tile == "H":
            d.ellipse([m, m, px - 1 - m, px - 1 - m], fill=self.HOLE)
        elif tile == "G":
            d.rectangle([m, m, px - 1 - m, px - 1 - m], fill=self.GOAL)
            w = _unit(px, 0.1)
            d.rectangle([px // 2 - w // 2 - 0, m, px // 2 + (w - 1) // 2, px - 1 - m], fill=self.GOAL_RIBBON)
            d.rectangle([m, px // 2 - w // 2, px - 1 - m, px // 2 + (w - 1) // 2], fill=self.GOAL_RIBBON)
        if agent:
            a = _unit(px, 0.22)
            d.ellipse([a, a, px - 1 - a, px - 1 - a], fill=RED, outline=(90, 0, 0))

    def assemble(self, keys: dict[Cell, Key], n: int, agent_score: dict[Cell, float]) -> FrozenLakeState:
        desc = tuple("".join(keys[(r, c)][0] for c in range(n)) for r in range(n))
        agents = [c for c, k in keys.items() if k[1]]
        agent = agents[0] if len(agents) == 1 else min(agent_score, key=agent_score.get)
        return FrozenLakeState(desc, agent)

    def agent_score(self, costs: dict[Key, np.ndarray]) -> np.ndarray:
        """Per cell: best agent-template cost minus best empty-template cost (lower = agent)."""
        with_agent = np.min([v for k, v in costs.items() if k[1]], axis=0)
        without = np.min([v for k, v in costs.items() if not k[1]], axis=0)
        return with_agent - without


# --------------------------------------------------------------------------------------
# MINIBEHAVIOR


class _MiniBehaviorPainter:
    WALL: RGB = (55, 55, 65)
    FLOOR: RGB = (238, 232, 215)
    FLOOR_LINE: RGB = (205, 198, 180)
    TABLE: RGB = (150, 95, 45)
    TABLE_EDGE: RGB = (100, 60, 25)
    FURNITURE: RGB = (60, 125, 135)
    PRINTER: RGB = (110, 60, 160)
    PAPER: RGB = (252, 252, 252)
    REACH: RGB = (255, 205, 0)
    KINDS = ("wall", "floor", "table", "furniture", "printer", "printer_on_table", "agent", "agent_carrying")
    REACHABLE = ("wall", "floor", "table", "furniture", "printer", "printer_on_table")  # what a cell next to the agent can hold
    SUFFIX = "_reach"

    def __init__(self, reach: bool = False):
        self.reach = reach

    @classmethod
    def kind(cls, key: Key) -> str:
        """What a cell holds, whether or not it is in the agent's reach."""
        return key.removesuffix(cls.SUFFIX)

    def keys(self, s: MiniBehaviorState) -> dict[Cell, Key]:
        around = {(s.agent[0] + dr, s.agent[1] + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))} if self.reach else set()
        out: dict[Cell, Key] = {}
        for r in range(s.size):
            for c in range(s.size):
                cell = (r, c)
                if s.is_wall(cell):
                    k = "wall"
                elif cell == s.agent:
                    k = "agent_carrying" if s.carrying else "agent"
                elif cell == s.printer:
                    k = "printer_on_table" if cell in s.table else "printer"
                elif cell in s.table:
                    k = "table"
                elif cell in s.furniture:
                    k = "furniture"
                else:
                    k = "floor"
                out[cell] = k + self.SUFFIX if cell in around else k
        return out

    def all_keys(self) -> list[Key]:
        return [*self.KINDS, *(k + self.SUFFIX for k in self.REACHABLE if self.reach)]

    def _printer(self, d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], px: int) -> None:
        x0, y0, x1, y1 = box
        d.rectangle([x0, y0 + (y1 - y0) // 3, x1, y1], fill=self.PRINTER)
        inset = max(1, (x1 - x0) // 4)
        d.rectangle([x0 + inset, y0, x1 - inset, y0 + (y1 - y0) // 3], fill=self.PAPER, outline=self.PRINTER)

    def draw(self, d: ImageDraw.ImageDraw, key: Key, px: int) -> None:
        full = [0, 0, px - 1, px - 1]
        kind = self.kind(key)
        if kind == "wall":
            d.rectangle(full, fill=self.WALL)
            d.line([0, px // 2, px - 1, px // 2], fill=(85, 85, 95))
        else:
            d.rectangle(full, fill=self.FLOOR, outline=self.FLOOR_LINE)
        m = _unit(px, 0.15)
        if kind in ("table", "printer_on_table"):
            d.rectangle(full, fill=self.TABLE, outline=self.TABLE_EDGE)
        if key != kind:  # in reach: a yellow frame under what stands in the cell
            d.rectangle(full, outline=self.REACH, width=_unit(px, 0.125))
        if kind == "furniture":
            d.rectangle([m // 2, m // 2, px - 1 - m // 2, px - 1 - m // 2], fill=self.FURNITURE)
            d.line([m, px // 2, px - 1 - m, px // 2], fill=(30, 70, 80), width=_unit(px, 0.08))
        if kind in ("printer", "printer_on_table"):
            self._printer(d, (m // 2, m // 2, px - 1 - m // 2, px - 1 - m // 2), px)
        if kind in ("agent", "agent_carrying"):
            d.polygon([(px // 2, m), (px - 1 - m, px - 1 - m), (m, px - 1 - m)], fill=RED)
            if kind == "agent_carrying":
                b = px // 2
                self._printer(d, (b, b, px - 1, px - 1), px)

    def assemble(self, keys: dict[Cell, Key], n: int, agent_score: dict[Cell, float]) -> MiniBehaviorState:
        kinds = {c: self.kind(k) for c, k in keys.items()}
        table = tuple(sorted(c for c, k in kinds.items() if k in ("table", "printer_on_table")))
        furniture = tuple(sorted(c for c, k in kinds.items() if k == "furniture"))
        agents = [c for c, k in kinds.items() if k in ("agent", "agent_carrying")]
        agent = agents[0] if len(agents) == 1 else min(agent_score, key=agent_score.get)
        printers = [c for c, k in kinds.items() if k in ("printer", "printer_on_table")]
        printer = None if kinds.get(agent) == "agent_carrying" or not printers else printers[0]
        return MiniBehaviorState(n, table, furniture, agent, printer)

    def agent_score(self, costs: dict[Key, np.ndarray]) -> np.ndarray:
        with_agent = np.minimum(costs["agent"], costs["agent_carrying"])
        without = np.min([v for k, v in costs.items() if k not in ("agent", "agent_carrying")], axis=0)
        return with_agent - without


# --------------------------------------------------------------------------------------
# MAZE


class _MazePainter:
    PASSAGE: RGB = (255, 255, 255)
    WALL: RGB = (0, 0, 0)
    TINT: dict[str, RGB] = {"A": (140, 180, 255), "B": (150, 235, 150), "C": (250, 230, 120), "D": (215, 165, 255)}
    INK: dict[str, RGB] = {"A": (20, 50, 160), "B": (20, 100, 30), "C": (70, 95, 0), "D": (100, 30, 150)}

    def keys(self, s: MazeState) -> dict[Cell, Key]:
        inn: dict[Cell, str] = {}
        out: dict[Cell, str] = {}
        for a, b in zip(s.path, s.path[1:], strict=False):
            move = {(-1, 0): "up", (1, 0): "down", (0, -1): "left", (0, 1): "right"}[(b[0] - a[0], b[1] - a[1])]
            out[a] = move
            inn[b] = move
        label = {c: maze_world.LETTERS[i] for i, c in enumerate(s.candidates)}
        keys = {}
        for r in range(s.size):
            for c in range(s.size):
                cell = (r, c)
                walls = tuple(not s.is_open(cell, m) for m in DIRS)
                keys[cell] = (walls, label.get(cell, ""), cell == s.start, inn.get(cell, ""), out.get(cell, ""))
        return keys

    def content_keys(self) -> list[Key]:
        """Everything but the walls: (label, start, in-move, out-move)."""
        moves = ("", *DIRS)
        flows = [(i, o) for i in moves for o in moves if not i or not o or i != _opposite(o)]
        return [(lab, st, i, o) for lab in ("", *"ABCD") for st in (False, True) for i, o in flows]

    def wall(self, px: int) -> int:
        return _unit(px, 0.125)

    def draw(self, d: ImageDraw.ImageDraw, key: Key, px: int) -> None:
        walls, label, start, inn, out = key
        d.rectangle([0, 0, px - 1, px - 1], fill=self.TINT.get(label, self.PASSAGE))
        w = self.wall(px)
        if label:
            font = ImageFont.load_default(size=max(6, round(px * 0.45)))
            d.text((w, w - _unit(px, 0.15)), label, fill=self.INK[label], font=font)
        c = (px - 1) / 2
        lw = _unit(px, 0.19)
        edge = {"up": (c, 0), "down": (c, px - 1), "left": (0, c), "right": (px - 1, c)}
        if out:
            d.line([(c, c), edge[out]], fill=RED, width=lw)
        if inn:
            d.line([edge[_opposite(inn)], (c, c)], fill=RED, width=lw)
            h = px * 0.28  # arrow head at the centre, pointing along the move
            dy, dx = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}[inn]
            tip = (c + dx * h * 0.6, c + dy * h * 0.6)
            back = (c - dx * h * 0.6, c - dy * h * 0.6)
            d.polygon([tip, (back[0] + dy * h, back[1] + dx * h), (back[0] - dy * h, back[1] - dx * h)], fill=RED)
        if start:
            r = px * 0.22
            d.ellipse([c - r, c - r, c + r, c + r], fill=RED)
        for m, closed in zip(DIRS, walls, strict=True):
            if closed:
                box = {"up": [0, 0, px - 1, w - 1], "down": [0, px - w, px - 1, px - 1],
                       "left": [0, 0, w - 1, px - 1], "right": [px - w, 0, px - 1, px - 1]}[m]
                d.rectangle(box, fill=self.WALL)

    def assemble(self, keys: dict[Cell, Key], n: int, start_score: dict[Cell, float]) -> MazeState:
        down = ["F"] * (n * n)
        right = ["F"] * (n * n)
        for (r, c), k in keys.items():
            walls = k[0]
            # a passage is open when both sides show it open (one side suffices at a blurred edge
            # only if the other is unknown; here both are read, so require agreement by vote)
            if r + 1 < n and (not walls[1]) + (not keys[(r + 1, c)][0][0]) >= 2:
                down[r * n + c] = "T"
            if c + 1 < n and (not walls[3]) + (not keys[(r, c + 1)][0][2]) >= 2:
                right[r * n + c] = "T"
        starts = [c for c, k in keys.items() if k[2]]
        start = starts[0] if len(starts) == 1 else min(start_score, key=start_score.get)
        cand: dict[str, Cell] = {}
        for cell, k in sorted(keys.items()):
            if k[1] and k[1] not in cand:
                cand[k[1]] = cell
        candidates = tuple(cand.get(x, (-1, -1)) for x in "ABCD")
        path = [start]
        while len(path) <= n * n:
            move = keys[path[-1]][4]
            if not move:
                break
            nxt = (path[-1][0] + {"up": -1, "down": 1}.get(move, 0), path[-1][1] + {"left": -1, "right": 1}.get(move, 0))
            if nxt not in keys or nxt in path:
                break
            path.append(nxt)
        return MazeState(n, "".join(down + right), start, candidates, tuple(path))


def _redness(rgb: np.ndarray) -> np.ndarray:
    """How red each pixel is, saturating in [0, 1]: R minus the larger of G and B, where the
    candidate tints stay at 0 and washed-out reds (JPEG, blur, VQ) still count fully."""
    rgb = np.asarray(rgb, np.float32)
    return np.clip((rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2]) - 40.0) / 40.0, 0.0, 1.0)


def _chroma(patches: np.ndarray) -> np.ndarray:
    """Per patch, the mean colour of its non-red pixels with each pixel's brightness removed:
    ``(N, h, w, 3) -> (N, 3)``. A patch with no non-red pixel uses all of them."""
    pix = np.asarray(patches, np.float32).reshape(len(patches), -1, 3)
    keep = (_redness(pix) < 0.5).astype(np.float32)
    keep[keep.sum(1) == 0] = 1.0
    centred = pix - pix.mean(-1, keepdims=True)
    return (centred * keep[..., None]).sum(1) / keep.sum(1)[:, None]


def _opposite(move: str) -> str:
    return {"up": "down", "down": "up", "left": "right", "right": "left", "": ""}[move]


PAINTERS = {"frozenlake": _FrozenLakePainter, "maze": _MazePainter, "minibehavior": _MiniBehaviorPainter}


# --------------------------------------------------------------------------------------
# The renderer


class Renderer:
    """Draws and reads the states of one task at a fixed geometry.

    ``sizes`` are the grid sides ``parse`` may read back (default: every side that fits);
    ``reach`` frames MINIBEHAVIOR's cells next to the agent (``render.minibehavior.reach``).
    """

    def __init__(self, task: str, cell_px: int, canvas_cells: int, sizes: tuple[int, ...] | None = None,
                 reach: bool = False):
        if task not in PAINTERS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(PAINTERS)}")
        if reach and task != "minibehavior":
            raise ValueError(f"`reach` frames the cells next to MINIBEHAVIOR's agent; {task} has no such drawing")
        self.task = task
        self.cell_px = int(cell_px)
        self.canvas_cells = int(canvas_cells)
        self.sizes = tuple(sorted(sizes)) if sizes else tuple(range(2, self.canvas_cells + 1))
        self.painter = PAINTERS[task](reach) if reach else PAINTERS[task]()
        self._patches: dict[Key, np.ndarray] = {}

    @classmethod
    def from_params(cls, params, task: str) -> Renderer:
        cfg = params.render.task(task)
        return cls(task, cfg.cell_px, params.canvas_cells(task), params.generate.task(task).sizes, reach=getattr(cfg, "reach", False))

    @property
    def image_size(self) -> int:
        return self.cell_px * self.canvas_cells

    # -- drawing ------------------------------------------------------------------------

    def patch(self, key: Key) -> np.ndarray:
        """The ``(cell_px, cell_px, 3)`` uint8 drawing of one cell key (cached)."""
        got = self._patches.get(key)
        if got is None:
            px = self.cell_px
            img = Image.new("RGB", (px, px), OUTSIDE_RGB)
            if key != OUTSIDE:
                self.painter.draw(ImageDraw.Draw(img), key, px)
            got = np.asarray(img, dtype=np.uint8)
            got.setflags(write=False)
            self._patches[key] = got
        return got

    def cells(self, state) -> dict[Cell, Key]:
        """The key of every grid cell of ``state`` (cells of the canvas beyond are OUTSIDE)."""
        if state.size > self.canvas_cells:
            raise ValueError(f"a {state.size}x{state.size} grid does not fit a canvas of {self.canvas_cells} cells; raise the task's sizes in params")
        return self.painter.keys(state)

    def render_array(self, state) -> np.ndarray:
        """``(H, W, 3)`` uint8 image of ``state``."""
        keys = self.cells(state)
        px, n = self.cell_px, self.canvas_cells
        out = np.empty((n * px, n * px, 3), dtype=np.uint8)
        for r in range(n):
            for c in range(n):
                out[r * px : (r + 1) * px, c * px : (c + 1) * px] = self.patch(keys.get((r, c), OUTSIDE))
        return out

    def render(self, state) -> Image.Image:
        return Image.fromarray(self.render_array(state), "RGB")

    def png(self, state) -> bytes:
        """PNG bytes of ``state`` (deterministic for a given Pillow/zlib). zlib level 1:
        encoding dominates data generation, and level 6 would make files ~40% smaller at
        ~35% more time."""
        buf = io.BytesIO()
        self.render(state).save(buf, format="PNG", optimize=False, compress_level=1)
        return buf.getvalue()

    # -- reading ------------------------------------------------------------------------

    @cached_property
    def _templates(self) -> tuple[list[Key], np.ndarray]:
        keys = self.painter.all_keys() if self.task != "maze" else []
        return keys, np.stack([self.patch(k) for k in [*keys, OUTSIDE]]).astype(np.float32)

    def _as_array(self, image) -> np.ndarray:
        """Any image-like input as a float32 ``(S, S, 3)`` array at this renderer's size."""
        size = self.image_size
        try:
            if isinstance(image, np.ndarray):
                arr = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
                if arr.ndim == 2:
                    arr = np.repeat(arr[..., None], 3, axis=2)
                if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
                    raise ValueError("not an image")
                arr = arr[..., :3] if arr.shape[2] >= 3 else np.repeat(arr[..., :1], 3, axis=2)
                if arr.max(initial=0) <= 1.0 and arr.min(initial=0) >= -1.0 and image.dtype.kind == "f":
                    arr = (arr.clip(0, 1)) * 255.0  # float images in [0, 1]
                image = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.float32)
        except Exception:  # unreadable input: read it as an empty canvas
            return np.broadcast_to(np.array(OUTSIDE_RGB, np.float32), (size, size, 3)).copy()

    def _cells_of(self, arr: np.ndarray) -> np.ndarray:
        """``(n*n, px, px, 3)`` view of the canvas cut into cells, row-major."""
        n, px = self.canvas_cells, self.cell_px
        return arr.reshape(n, px, n, px, 3).transpose(0, 2, 1, 3, 4).reshape(n * n, px, px, 3)

    @staticmethod
    def _sqdist(cells: np.ndarray, templates: np.ndarray) -> np.ndarray:
        """Mean squared distance of every cell to every template: ``(cells, templates)``."""
        a = cells.reshape(len(cells), -1)
        b = templates.reshape(len(templates), -1)
        d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
        return np.maximum(d, 0.0) / a.shape[1]

    def _fit_size(self, inside_cost: np.ndarray, outside_cost: np.ndarray) -> int:
        n = self.canvas_cells
        inside_cost = inside_cost.reshape(n, n)
        outside_cost = outside_cost.reshape(n, n)
        best, best_cost = self.sizes[-1], np.inf
        for k in self.sizes:
            if k > n:
                continue
            cost = outside_cost.sum() - outside_cost[:k, :k].sum() + inside_cost[:k, :k].sum()
            if cost < best_cost - 1e-6:
                best, best_cost = k, cost
        return best

    def read_cells(self, image) -> tuple[int, dict[Cell, Key]]:
        """Best reading of ``image``: the grid side and the key of every grid cell. Never raises."""
        arr = self._as_array(image)
        cells = self._cells_of(arr)
        if self.task == "maze":
            keys, inside, outside, start_score = self._read_maze(cells)
            n = self._fit_size(inside, outside)
            return n, {(r, c): keys[r * self.canvas_cells + c] for r in range(n) for c in range(n)}
        n, keys, _ = self._read_templates(cells)
        return n, keys

    def _read_templates(self, cells: np.ndarray):
        names, templates = self._templates
        d = self._sqdist(cells, templates)  # (cells, keys + outside)
        inside = d[:, :-1].min(1)
        n = self._fit_size(inside, d[:, -1])
        best = d[:, :-1].argmin(1)
        costs = {k: d[:, i] for i, k in enumerate(names)}
        score = self.painter.agent_score(costs)
        N = self.canvas_cells
        keys = {(r, c): names[best[r * N + c]] for r in range(n) for c in range(n)}
        agent_score = {(r, c): float(score[r * N + c]) for r in range(n) for c in range(n)}
        return n, keys, agent_score

    @cached_property
    def _maze_parts(self):
        """Templates of the three factors MAZE reads apart: label colour, red marks, walls."""
        px, w = self.cell_px, self.painter.wall(self.cell_px)
        no_walls = (False,) * 4
        labels = ("", *"ABCD")
        label_chroma = _chroma(np.stack([self.patch((no_walls, lab, False, "", ""))[w : px - w, w : px - w] for lab in labels]))
        flows = sorted({k[1:] for k in self.painter.content_keys()})  # (start, in, out)
        red = np.stack([_redness(self.patch((no_walls, "", *f)).astype(np.float32))[w : px - w, w : px - w] for f in flows])
        # edge strips without the corners and without the middle, where arrows cross
        third = max(1, (px - 2 * w) // 3)
        spans = [slice(w, w + third), slice(px - w - third, px - w)]
        strips = np.zeros((4, px, px), dtype=np.float32)  # one mask per wall: up, down, left, right
        for sp in spans:
            strips[0, :w, sp] = strips[1, px - w :, sp] = strips[2, sp, :w] = strips[3, sp, px - w :] = 1.0
        strips /= strips.sum(axis=(1, 2), keepdims=True)
        outside = self.patch(OUTSIDE).astype(np.float32)[w : px - w, w : px - w]
        return labels, label_chroma, flows, red, strips, outside

    def _read_maze(self, cells: np.ndarray):
        labels, label_chroma, flows, red, strips, outside_t = self._maze_parts
        px, w = self.cell_px, self.painter.wall(self.cell_px)
        inner = np.ascontiguousarray(cells[:, w : px - w, w : px - w])
        # label: mean colour (luminance removed) of the interior's non-red pixels
        chroma = _chroma(inner)
        label_cost = ((chroma[:, None, :] - label_chroma[None, :, :]) ** 2).sum(-1)
        lab_i = label_cost.argmin(1)
        # start dot and arrows: nearest template on the redness map only
        flow_cost = self._sqdist(_redness(inner), red)
        flow_i = flow_cost.argmin(1)
        # walls: an edge strip much darker than the cell's own background is a wall
        bg = np.median(inner.mean(-1).reshape(len(cells), -1), axis=1)
        strip_lum = np.einsum("nij,dij->nd", cells.mean(-1), strips)  # (cells, 4)
        walls = strip_lum < 0.5 * bg[:, None]
        keys: list[Key] = [
            (tuple(bool(x) for x in walls[i]), labels[lab_i[i]], *flows[flow_i[i]]) for i in range(len(cells))
        ]
        # grid-size evidence on one scale: the cell against the drawing of what was read vs outside
        no_walls = (False,) * 4
        drawn = np.stack([self.patch((no_walls, *k[1:]))[w : px - w, w : px - w] for k in keys]).astype(np.float32)
        inside = ((inner - drawn) ** 2).mean(axis=(1, 2, 3))
        outside = ((inner - outside_t[None]) ** 2).mean(axis=(1, 2, 3))
        is_start = np.array([f[0] for f in flows])
        start_cost = flow_cost[:, is_start].min(1) - flow_cost[:, ~is_start].min(1)
        N = self.canvas_cells
        start_score = {(i // N, i % N): float(start_cost[i]) for i in range(len(cells))}
        return keys, inside, outside, start_score

    def parse(self, image):
        """Best-reading state of ``image``; exact on clean renders, never raises."""
        arr = self._as_array(image)
        cells = self._cells_of(arr)
        N = self.canvas_cells
        if self.task == "maze":
            keys_list, inside, outside, start_score = self._read_maze(cells)
            n = self._fit_size(inside, outside)
            keys = {(r, c): keys_list[r * N + c] for r in range(n) for c in range(n)}
            score = {c: v for c, v in start_score.items() if c in keys}
            return self.painter.assemble(keys, n, score)
        n, keys, agent_score = self._read_templates(cells)
        return self.painter.assemble(keys, n, agent_score)
