"""The backbone: a causal LM over the unified vocabulary (Hugging Face transformers).

Two builders, one result (a ``transformers`` causal LM whose vocabulary is ``vocab.size``):

* :func:`from_scratch`: a small Llama-architecture model built from config (Chameleon's
  backbone is Llama-2 style), randomly initialised; the CPU default.
  With ``grid_pos > 0`` it is :class:`MvotLlamaForCausalLM`: the same Llama plus a
  learned 2D position (row and column embeddings) added to every image code token, so a
  cell can be found by where it is in the picture rather than by its 1D offset (ViT-style
  absolute 2D positions on top of the sequence's rotary positions).
  With ``step_pos > 0`` every token also gets a learned *step* embedding: the index of the
  question's action it belongs to, or of the response step it is in (``mvot/steps.py``),
  so the k-th action is fetched by matching indices rather than by counting. The model
  cannot read the index off token ids (it needs the text tokenizer), so ``forward`` takes
  it as ``step_index``; the training loop and the decoder pass it.
* :func:`from_pretrained`: a local checkpoint (``AutoModelForCausalLM.from_pretrained``),
  its embeddings resized to the unified vocabulary (new rows for ``<boi>``/``<eoi>`` and
  the image codes), trained fully or with LoRA through ``peft`` (the paper: r = 8,
  alpha = 16 on q/k/v/o projections, ``lm_head`` trained fully). No hub access: the path
  must exist on disk.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from mvot.errors import MvotError
from mvot.vocab import Vocab


class ModelError(MvotError, RuntimeError):
    """A backbone cannot be built or loaded; the message names the path and the fix."""


def image_grid(input_ids: torch.Tensor, boi: int, eoi: int, limit: int) -> torch.Tensor:
    """(row + 1, column + 1) of every image code token of ``input_ids`` (B, L); 0 elsewhere.

    An image is ``<boi>`` T codes ``<eoi>`` in raster order over a square W x W patch grid,
    W = sqrt(T), so T is read off each closed image. Codes of an image not yet closed in
    ``input_ids`` (a truncated sequence) get 0. Indices past ``limit`` are clamped."""
    n, length = input_ids.shape
    ar = torch.arange(length, device=input_ids.device).expand(n, length)
    last_boi = torch.where(input_ids == boi, ar, -1).cummax(dim=1).values
    last_eoi = torch.where(input_ids == eoi, ar, -1).cummax(dim=1).values
    big = torch.full_like(ar, 1 << 30)
    next_eoi = torch.where(input_ids == eoi, ar, big).flip(1).cummin(dim=1).values.flip(1)
    inside = (last_boi > last_eoi) & (ar > last_boi) & (next_eoi < big)
    k = ar - last_boi - 1
    width = torch.sqrt((next_eoi - last_boi - 1).clamp(min=1).float()).round().long().clamp(min=1)
    rows = torch.where(inside, (k // width + 1).clamp(max=limit), 0)
    cols = torch.where(inside, (k % width + 1).clamp(max=limit), 0)
    return torch.stack([rows, cols], dim=-1)


class MvotLlamaConfig(LlamaConfig):
    """Llama config plus the 2D image positions (``grid_pos``: largest rows / columns; 0 = none)
    and step positions (``step_pos``: largest step index; 0 = none)."""

    model_type = "mvot_llama"

    def __init__(self, grid_pos: int = 0, boi_token_id: int | None = None, eoi_token_id: int | None = None,
                 step_pos: int = 0, **kwargs):
        self.grid_pos = int(grid_pos)
        self.step_pos = int(step_pos)
        self.boi_token_id = boi_token_id
        self.eoi_token_id = eoi_token_id
        super().__init__(**kwargs)


class MvotLlamaForCausalLM(LlamaForCausalLM):
    """Llama whose image code tokens also get a learned row and column embedding, and whose
    tokens get a learned step embedding.

    ``forward`` takes an optional ``grid_index`` (B, L, 2) as :func:`image_grid` returns;
    without it the index is computed from ``input_ids``, which is right for whole sequences
    (training, a decoder's prompt). A KV-cached decoder feeding one token at a time passes
    the new token's index itself (``mvot/generate.py``). With ``step_pos``, ``step_index``
    (B, L) is required (:class:`mvot.steps.StepIndexer`)."""

    config_class = MvotLlamaConfig

    def __init__(self, config: MvotLlamaConfig):
        super().__init__(config)
        g = max(1, config.grid_pos)
        # index 0 (not an image code) is the padding row: initialised to zero, never trained
        self.grid_row = torch.nn.Embedding(g + 1, config.hidden_size, padding_idx=0)
        self.grid_col = torch.nn.Embedding(g + 1, config.hidden_size, padding_idx=0)
        if getattr(config, "step_pos", 0) > 0:
            self.step_emb = torch.nn.Embedding(config.step_pos + 1, config.hidden_size, padding_idx=0)
        self.post_init()

    def forward(self, input_ids=None, grid_index=None, step_index=None, inputs_embeds=None, **kwargs):
        steps = getattr(self.config, "step_pos", 0) > 0
        if steps and step_index is None and inputs_embeds is None:
            raise ModelError("this model has step positions (step_pos > 0): pass step_index (mvot.steps.StepIndexer)")
        if (self.config.grid_pos > 0 or steps) and input_ids is not None and inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if self.config.grid_pos > 0:
                if grid_index is None:
                    grid_index = image_grid(input_ids, self.config.boi_token_id, self.config.eoi_token_id, self.config.grid_pos)
                inputs_embeds = inputs_embeds + self.grid_row(grid_index[..., 0]) + self.grid_col(grid_index[..., 1])
            if steps:
                inputs_embeds = inputs_embeds + self.step_emb(step_index.clamp(0, self.config.step_pos))
            input_ids = None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


AutoConfig.register("mvot_llama", MvotLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(MvotLlamaConfig, MvotLlamaForCausalLM, exist_ok=True)


def from_scratch(vocab: Vocab, d_model: int, n_layer: int, n_head: int, d_ff: int, max_len: int, seed: int = 0,
                 grid_pos: int = 0, step_pos: int = 0):
    """A randomly initialised Llama; with ``grid_pos > 0`` plus 2D image positions, with
    ``step_pos > 0`` plus step positions."""
    ours = grid_pos > 0 or step_pos > 0
    kind, cls = (MvotLlamaConfig, MvotLlamaForCausalLM) if ours else (LlamaConfig, LlamaForCausalLM)
    extra = {"grid_pos": grid_pos, "step_pos": step_pos, "boi_token_id": vocab.boi, "eoi_token_id": vocab.eoi} if ours else {}
    config = kind(
        vocab_size=vocab.size,
        hidden_size=d_model,
        intermediate_size=d_ff,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_head,
        max_position_embeddings=max_len,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.eos_id,
        pad_token_id=vocab.pad_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        **extra,
    )
    torch.manual_seed(seed)
    return cls(config)


def from_pretrained(path: str | Path, vocab: Vocab, lora_r: int = 0, lora_alpha: int = 16):
    """A local pretrained causal LM resized to ``vocab``; LoRA adapters when ``lora_r > 0``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; point train.model.pretrained at a local transformers checkpoint directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load the pretrained model ({exc})") from None
    model.resize_token_embeddings(vocab.size)
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = vocab.bos_id, vocab.eos_id, vocab.pad_id
    if lora_r > 0:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            # new image rows must be learnt, and so must 2D / step positions of an mvot checkpoint
            modules_to_save=["lm_head", "embed_tokens",
                             *(name for name in ("grid_row", "grid_col", "step_emb") if hasattr(model, name))],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    return model


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}
