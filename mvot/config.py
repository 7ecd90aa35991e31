"""Typed, validated view of ``params.yaml``.

``params.yaml`` is the one source of truth. It is grouped by pipeline stage (``generate``,
``render``, ...); every group becomes a frozen pydantic model whose fields carry their
range and a docstring. Loading fails *before any work* with a :class:`ConfigError` whose
message names the key, the value found and what is allowed, e.g.::

    params.yaml: generate.maze.sizes[0] = 9: must be <= 8 (input should be less than or equal to 8)

Derived values (image size, canvas size) are properties, never extra keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from mvot.errors import MvotError

TASKS: tuple[str, ...] = ("frozenlake", "maze", "minibehavior")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class ConfigError(MvotError, ValueError):
    """A params file is missing, unreadable or holds a bad value. The message says how to fix it."""


class _Section(BaseModel):
    # extra="forbid": an unknown (e.g. misspelt) key is an error, never silently ignored.
    # strict: "3" is not 3, 1.5 is not an int; YAML gives real types, so strings are typos.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _range(lo: int, hi: int, what: str):
    """An inclusive ``[min, max]`` pair of ints, each within ``[lo, hi]``."""
    item = Annotated[int, Strict(), Field(ge=lo, le=hi)]
    # YAML has lists, not tuples: the container is lax, its items stay strict ints
    return Annotated[tuple[item, item], Field(strict=False, description=f"[min, max] {what}, each in {lo}..{hi}")]


class SplitSizes(_Section):
    """Number of instances per split."""

    train: int = Field(ge=1, le=10_000_000, description="training instances")
    val: int = Field(ge=1, le=10_000_000, description="validation instances")
    test: int = Field(ge=1, le=10_000_000, description="test instances")

    def of(self, split: str) -> int:
        return int(getattr(self, split))


class _TaskGen(_Section):
    splits: SplitSizes
    """How many instances each split gets."""

    @model_validator(mode="after")
    def _check_ranges(self):
        for name in ("steps", "extra_actions", "furniture"):
            pair = getattr(self, name, None)
            if pair is not None and pair[0] > pair[1]:
                raise ValueError(f"{name} = {list(pair)}: min must not exceed max")
        sizes = self.sizes
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"sizes = {list(sizes)}: sizes must be distinct")
        return self


_FL_SIZE = Annotated[int, Strict(), Field(ge=3, le=8)]
_MAZE_SIZE = Annotated[int, Strict(), Field(ge=3, le=8)]
_MB_SIZE = Annotated[int, Strict(), Field(ge=6, le=12)]


class FrozenLakeGen(_TaskGen):
    """FROZENLAKE instances (DESIGN.md 2.1)."""

    sizes: tuple[_FL_SIZE, ...] = Field(strict=False, min_length=1, description="grid sides, each 3..8")
    hole_prob: float = Field(ge=0.05, le=0.6, description="chance that a tile is a hole")
    steps: _range(1, 40, "visualised actions per instance")
    extra_actions: _range(0, 10, "actions listed after the episode ended (not visualised)")


class MazeGen(_TaskGen):
    """MAZE instances (DESIGN.md 2.1)."""

    sizes: tuple[_MAZE_SIZE, ...] = Field(strict=False, min_length=1, description="grid sides, each 3..8")
    steps: _range(1, 60, "actions (= path length) per instance")


class MiniBehaviorGen(_TaskGen):
    """MINIBEHAVIOR (InstallingAPrinter) instances; rooms include their walls."""

    sizes: tuple[_MB_SIZE, ...] = Field(strict=False, min_length=1, description="room sides with walls, 6..12")
    steps: _range(1, 60, "visualised actions per instance")
    furniture: _range(0, 6, "blocking single-cell furniture pieces besides the table")
    extra_actions: _range(0, 10, "actions listed after the episode ended (not visualised)")


class GenerateConfig(_Section):
    """The ``generate`` stage: worlds -> instances -> rendered states."""

    workers: int = Field(ge=0, le=256, description="worker processes; 0 = one per CPU core")
    val_share: float = Field(gt=0.0, lt=0.5, description="share of layouts reserved for val")
    test_share: float = Field(gt=0.0, lt=0.5, description="share of layouts reserved for test")
    contact_sheet: int = Field(ge=1, le=32, description="instances shown on each contact sheet")
    frozenlake: FrozenLakeGen
    maze: MazeGen
    minibehavior: MiniBehaviorGen

    @model_validator(mode="after")
    def _check_shares(self):
        if self.val_share + self.test_share >= 0.9:
            raise ValueError(
                f"val_share + test_share = {self.val_share + self.test_share:g}: "
                "must stay below 0.9 so that training keeps most layouts"
            )
        return self

    def task(self, task: str) -> FrozenLakeGen | MazeGen | MiniBehaviorGen:
        return getattr(self, task)


class TaskRender(_Section):
    """Image geometry of one task. Grids are drawn top-left on a square canvas that fits
    the largest grid of the task, so every cell is ``cell_px`` pixels and cells line up
    with the image tokenizer's patches whatever the grid size."""

    cell_px: int = Field(ge=8, le=128, multiple_of=4, description="pixels per grid cell")


class MiniBehaviorRender(TaskRender):
    reach: bool = Field(
        default=False,
        description=(
            "frame the agent's reach, the four cells next to it where pick-up and put-down act, in yellow "
            "(MiniGrid highlights the agent's view likewise); whether the printer or a table cell is next to "
            "the agent is then one cell's drawing. Off: the drawing of results measured before issue 7's reach study"
        ),
    )


class RenderConfig(_Section):
    frozenlake: TaskRender
    maze: TaskRender
    minibehavior: MiniBehaviorRender

    def task(self, task: str) -> TaskRender:
        return getattr(self, task)


class TokenizerConfig(_Section):
    """The ``tokenizer`` stage: the image VQ tokenizer and the text tokenizer, then frozen."""

    patch_px: int = Field(ge=2, le=128, description="pixels per image-token side; tokens per image = (image side / patch_px)^2")
    codebook_size: int = Field(ge=16, le=65536, description="number of image codes")
    code_dim: int = Field(ge=4, le=1024, description="dimension of a code embedding")
    hidden: int = Field(ge=16, le=4096, description="width of the per-patch encoder/decoder")
    depth: int = Field(ge=0, le=16, description="residual blocks in encoder and in decoder")
    steps: int = Field(ge=1, le=1_000_000, description="optimiser steps")
    batch: int = Field(ge=8, le=1_000_000, description="patches per step (capped at the number of distinct patches)")
    lr: float = Field(gt=0.0, le=1.0, description="AdamW learning rate (cosine decay to 10%)")
    augment_max_k: int = Field(ge=0, le=32, description="input images get k encode->decode round trips, k uniform in 0..this (paper: 8)")
    fidelity_frames: int = Field(ge=10, le=10_000_000, description="held-out (val) frames per task the fidelity is measured on")
    text_vocab: int = Field(ge=300, le=65536, description="text tokenizer vocabulary size (byte-level BPE)")


class TokenizeConfig(_Section):
    """The ``tokenize`` stage: traces of every variant -> token arrays."""

    variants: tuple[Annotated[str, Strict(), Field(pattern="^(direct|cot|interleaved|mvot)$")], ...] = Field(
        strict=False, min_length=1, description="sequence variants to tokenize: direct, cot, interleaved, mvot"
    )
    cot_layout_text: bool = Field(description="CoT traces start with a text description of the layout")
    index_hints: bool = Field(default=False, description="number the question's actions and the response's steps (1: Go up.)")
    inventory_after_image: bool = Field(
        default=False,
        description=("MINIBEHAVIOR's drawn steps (interleaved, mvot) write the inventory after the step's image, not before it: "
                     "`Pick up printer_0. <image> Carrying objects: printer_0.`; the picture shows the outcome, the text reads it"),
    )


class ModelConfig(_Section):
    """The backbone (mvot/model.py)."""

    d_model: int = Field(ge=16, le=16384, description="hidden size")
    n_layer: int = Field(ge=1, le=128, description="transformer blocks")
    n_head: int = Field(ge=1, le=128, description="attention heads")
    d_ff: int = Field(ge=16, le=65536, description="MLP width")
    max_len: int = Field(ge=64, le=131072, description="longest sequence (positions)")
    pretrained: str | None = Field(default=None, description="local transformers checkpoint dir; null = from scratch")
    lora_r: int = Field(default=0, ge=0, le=1024, description="LoRA rank for a pretrained backbone; 0 = full fine-tuning")
    lora_alpha: int = Field(default=16, ge=1, le=4096, description="LoRA alpha")
    grid_pos: int = Field(default=0, ge=0, le=256,
                          description="learned 2D (row, column) positions on image tokens, up to this many rows; 0 = none")
    step_pos: int = Field(default=0, ge=0, le=256,
                          description="learned step positions (k-th action of the question, k-th step of the response), "
                                      "up to this many steps; 0 = none")

    @model_validator(mode="after")
    def _check_heads(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model = {self.d_model} must be a multiple of n_head = {self.n_head}")
        for name in ("grid_pos", "step_pos"):
            if getattr(self, name) and self.pretrained:
                raise ValueError(f"{name} applies to a model built from scratch; set it to 0 with a pretrained backbone")
        return self


class RunSpec(_Section):
    """One trained model: which sequences it learns and how much L_D it gets."""

    variant: str = Field(pattern="^(direct|cot|interleaved|mvot)$", description="sequence variant trained on")
    ld_weight: float = Field(ge=0.0, le=100.0, description="w in L = L_C + w * L_D (paper: 1; 0 = MVoT without L_D)")

    @model_validator(mode="after")
    def _ld_only_for_mvot(self):
        if self.ld_weight > 0 and self.variant != "mvot":
            raise ValueError(f"ld_weight = {self.ld_weight}: L_D applies to image targets, which only the mvot variant has")
        return self


class DiscrepancyConfig(_Section):
    """How L_D measures distance (DESIGN.md 2.4); its weight is per run."""

    distance: str = Field(pattern="^(euclidean|mse)$", description="euclidean (released code) or mse (paper)")
    reduction: str = Field(pattern="^(mean|sum)$", description="mean (released code) or sum (paper)")
    from_step: int = Field(0, ge=0, description="L_D joins L_C from this step of the run on (0: from the first, as in the "
                           "paper; later: once the text is learned, so L_D's share of the clipped update costs the text less)")
    through: Literal["model", "head"] = Field(
        "model", description="what L_D's gradient reaches: model (every parameter, as in the paper) or head (the output "
        "layer only: the hidden states it reads are detached, so L_D shapes how the head ranks image codes and leaves "
        "the shared transformer, and so the text's AdamW statistics, to L_C; see `mvot grads`)")


class TrainConfig(_Section):
    """The ``train`` stage: one model over all tasks per run."""

    runs: dict[Annotated[str, Strict(), Field(pattern="^[a-z0-9_]+$")], RunSpec] = Field(
        strict=False, min_length=1, description="run name -> what it trains; the DVC stage trains each"
    )
    tasks: tuple[Annotated[str, Strict(), Field(pattern="^(frozenlake|maze|minibehavior)$")], ...] = Field(
        strict=False, min_length=1, description="tasks mixed into one model"
    )
    model: ModelConfig
    ld: DiscrepancyConfig
    steps: int = Field(ge=1, le=10_000_000, description="optimiser steps")
    batch_tokens: int = Field(ge=64, le=10_000_000, description="tokens per micro-batch (padding included)")
    grad_accum: int = Field(ge=1, le=1024, description="micro-batches per optimiser step")
    lr: float = Field(gt=0.0, le=1.0, description="peak AdamW learning rate")
    warmup: int = Field(ge=0, le=1_000_000, description="linear warm-up steps, then cosine decay to 10%")
    weight_decay: float = Field(ge=0.0, le=1.0)
    clip: float = Field(gt=0.0, le=1000.0, description="gradient-norm clip")
    label_smoothing: float = Field(ge=0.0, lt=1.0, description="cross-entropy label smoothing (paper: 0.1)")
    text_weight: float = Field(default=1.0, gt=0.0, le=1000.0,
                               description="weight of a text position against an image position in L_C (1 = plain average)")
    oversample: dict[Annotated[str, Strict(), Field(min_length=1, max_length=200)], Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=dict, strict=False,
        description="outcome label (`mvot outcomes`, e.g. 'B: pick-up, no printer adjacent') -> how many times each training "
                    "instance with that outcome is seen per epoch (1 = once; empty = plain epochs)")
    augment: bool = Field(description="swap the input image for a random encode->decode variant (tokenizer.augment_max_k)")
    checkpoint_every: int = Field(ge=1, le=10_000_000, description="steps between checkpoints")
    log_every: int = Field(ge=1, le=10_000_000, description="steps between logged metrics")

    @model_validator(mode="after")
    def _ld_starts_within_the_run(self):
        if self.ld.from_step >= self.steps:
            raise ValueError(f"ld.from_step = {self.ld.from_step} is not below steps = {self.steps}: L_D would never be added; "
                             "lower train.ld.from_step (0 = from the first step)")
        return self


class EvaluateConfig(_Section):
    """``evaluate``: recursive decoding of the test split and its scoring."""

    limit: int = Field(ge=0, le=10_000_000, description="test instances per task scored (first N of the split); 0 = all")
    batch_size: int = Field(ge=1, le=4096, description="instances decoded together")
    max_new_tokens: int = Field(ge=0, le=131072, description="length budget of a generated trace; 0 = up to the model's context")
    budget_factor: float = Field(default=1.5, ge=0.0, le=100.0,
                                 description="per-task budget: this x the longest output of the train split (0 = none)")
    temperature: float = Field(ge=0.0, le=10.0, description="0 = greedy (default); > 0 samples")
    top_k: int = Field(ge=0, le=65536, description="sample from the k likeliest tokens (0 = all)")
    strips: int = Field(ge=0, le=100, description="pictures of true vs drawn states per task, correct and wrong cases each")
    combine: tuple[str, str] = Field(strict=False, description="two runs whose upper bound and combined predictor are reported (paper: MVoT and CoT)")


class PromoteConfig(_Section):
    """``promote``: the model registry's rule for moving the ``champion`` alias."""

    model_name: str = Field("mvot", min_length=1, max_length=200, description="registered model name")
    run: str = Field("mvot", min_length=1, description="the run of train.runs whose model is the candidate")
    v_margin: float = Field(2.0, ge=0.0, le=100.0,
                            description="largest allowed V-Acc drop / V-Red rise (percentage points) against the champion")


class SweepGrid(_Section):
    """``sweep.grid``: every combination of these lists is one trial."""

    variant: list[Literal["direct", "cot", "interleaved", "mvot"]] = Field(["mvot"], min_length=1)
    ld_weight: list[float] = Field([0.0, 1.0], min_length=1)
    ld_distance: list[Literal["euclidean", "mse"]] = Field(["euclidean"], min_length=1)
    ld_reduction: list[Literal["mean", "sum"]] = Field(["mean"], min_length=1)
    patch_px: list[int] = Field([16], min_length=1, description="tokens per image: (image side / patch_px)^2")
    seed: list[int] = Field([0, 1, 2], min_length=1)

    @field_validator("ld_weight")
    @classmethod
    def _weights(cls, v):
        if any(w < 0 for w in v):
            raise ValueError("L_D weights must be >= 0")
        return v


class SweepConfig(_Section):
    """``sweep``: an ablation grid run by ``flows/sweep.py`` (trials in parallel)."""

    name: str = Field("ablation", pattern=r"^[A-Za-z0-9_.-]+$", description="sweeps/<name>/ and the MLflow parent run")
    grid: SweepGrid = SweepGrid()
    max_workers: int = Field(2, ge=1, le=256, description="trials at once (threads, or Dask workers with --dask)")
    train_steps: int = Field(0, ge=0, description="train.steps of each trial; 0 = train.steps")
    evaluate_limit: int = Field(0, ge=0, description="test instances per task of each trial; 0 = evaluate.limit")


class Params(_Section):
    """All of ``params.yaml``."""

    seed: int = Field(ge=0, le=2**31 - 1, description="root seed of every random draw")
    generate: GenerateConfig
    render: RenderConfig
    tokenizer: TokenizerConfig
    tokenize: TokenizeConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    promote: PromoteConfig = PromoteConfig()
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _check_patches(self):
        p = self.tokenizer.patch_px
        for task in TASKS:
            cell = self.render.task(task).cell_px
            if cell % p and p % cell:
                raise ValueError(
                    f"tokenizer.patch_px = {p} and render.{task}.cell_px = {cell}: one must divide the other "
                    "so that image tokens line up with grid cells"
                )
            if self.image_size(task) % p:
                raise ValueError(f"tokenizer.patch_px = {p} does not divide the {task} image side {self.image_size(task)}")
        return self

    def tokens_per_image(self, task: str) -> int:
        """Image tokens of one ``task`` image (derived: (image side / patch_px)^2)."""
        return (self.image_size(task) // self.tokenizer.patch_px) ** 2

    def canvas_cells(self, task: str) -> int:
        """Side of the square canvas in cells: the largest grid the task generates."""
        return max(self.generate.task(task).sizes)

    def image_size(self, task: str) -> int:
        """Side of every image of ``task`` in pixels (derived: cell_px x canvas cells)."""
        return self.render.task(task).cell_px * self.canvas_cells(task)


# --------------------------------------------------------------------------------------
# Loading and error messages


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that holds ``loc[-1]``."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def _explain(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = _fmt_loc(loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(Params, loc)) or "none"
        return f"{key}: unknown key (value {value!r}); allowed keys here: {allowed}"
    if kind == "missing":
        return f"{key}: required key is missing"
    ctx = err.get("ctx") or {}
    bound = {
        "greater_than_equal": ("must be >= {ge}", "ge"),
        "less_than_equal": ("must be <= {le}", "le"),
        "greater_than": ("must be > {gt}", "gt"),
        "less_than": ("must be < {lt}", "lt"),
        "multiple_of": ("must be a multiple of {multiple_of}", "multiple_of"),
    }.get(kind)
    if bound and bound[1] in ctx:
        allowed = bound[0].format(**ctx)
    elif kind.endswith("_type") or kind in ("int_from_float", "bool_parsing"):
        allowed = f"wrong type {type(value).__name__}"
    else:
        allowed = "not allowed"
    msg = err["msg"]
    if kind == "value_error":  # our own validators already name key and value
        return f"{key}: {msg.removeprefix('Value error, ')}"
    return f"{key} = {value!r}: {allowed} ({msg[0].lower() + msg[1:]})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raise :class:`ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {_explain(e)}" for e in exc.errors()]
        hint = "Fix the value(s) above in the params file (see README, 'Parameters')."
        raise ConfigError("\n".join([*lines, hint])) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file. Every problem is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the repository root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc}); pass a params.yaml") from None
    if raw is None:
        raise ConfigError(f"{path}: empty params file; restore it from git (`git checkout {path}`) or pass --params PATH")
    return parse_params(raw, str(path))


REPLACED_WHOLE = ("train.runs",)  # mappings an override replaces rather than merges into


def merge_overrides(raw: dict, overrides: dict, where: str = "") -> dict:
    """``raw`` with ``overrides`` merged in section by section (a profile, ``--set`` values):
    a mapping replaces only the keys it names (except ``train.runs``, a profile's list of
    runs, which it replaces whole), any other value replaces the whole entry."""
    out = dict(raw)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and f"{where}{key}" not in REPLACED_WHOLE:
            out[key] = merge_overrides(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out
