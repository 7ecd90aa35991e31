"""The backbone: a causal LM over the unified vocabulary (Hugging Face transformers).

Two builders, one result (a ``transformers`` causal LM whose vocabulary is ``vocab.size``):

* :func:`from_scratch`: a small Llama-architecture model built from config (Chameleon's
  backbone is Llama-2 style), randomly initialised; the CPU default.
* :func:`from_pretrained`: a local checkpoint (``AutoModelForCausalLM.from_pretrained``),
  its embeddings resized to the unified vocabulary (new rows for ``<boi>``/``<eoi>`` and
  the image codes), trained fully or with LoRA through ``peft`` (the paper: r = 8,
  alpha = 16 on q/k/v/o projections, ``lm_head`` trained fully). No hub access: the path
  must exist on disk.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mvot.errors import MvotError
from mvot.vocab import Vocab


class ModelError(MvotError, RuntimeError):
    """A backbone cannot be built or loaded; the message names the path and the fix."""


def from_scratch(vocab: Vocab, d_model: int, n_layer: int, n_head: int, d_ff: int, max_len: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
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
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def from_pretrained(path: str | Path, vocab: Vocab, lora_r: int = 0, lora_alpha: int = 16):
    """A local pretrained causal LM resized to ``vocab``; LoRA adapters when ``lora_r > 0``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; point train.model.pretrained at a local transformers checkpoint directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
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
            modules_to_save=["lm_head", "embed_tokens"],  # new image rows must be learnt
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    return model


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}
