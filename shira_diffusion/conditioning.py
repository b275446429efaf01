"""Text conditioning as the SD and SDXL pipelines build it, for training loops."""

from __future__ import annotations

import torch


def encode_prompts(pipe, family: str, captions: list[str], device, size: int) -> tuple[torch.Tensor, dict]:
    """Prompt embeddings and, for SDXL, the added conditions (pooled text embeddings, time ids).

    SD uses the text encoder's last hidden state; SDXL concatenates both encoders' penultimate
    hidden states and takes the pooled output of the second, as ``StableDiffusionXLPipeline``
    does. Differentiable through the encoders (wrap in ``torch.no_grad()`` when they are frozen).
    ``size`` is the image size the time ids describe (no crop).
    """
    ids = pipe.tokenizer(captions, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids.to(device)
    if family == "sd":
        return pipe.text_encoder(ids).last_hidden_state, {}
    ids_2 = pipe.tokenizer_2(captions, padding="max_length", truncation=True,
                             max_length=pipe.tokenizer_2.model_max_length, return_tensors="pt").input_ids.to(device)
    first = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    second_out = pipe.text_encoder_2(ids_2, output_hidden_states=True)
    embeds = torch.cat([first, second_out.hidden_states[-2]], dim=-1)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(captions), dtype=embeds.dtype, device=device)
    return embeds, {"added_cond_kwargs": {"text_embeds": second_out.text_embeds, "time_ids": time_ids}}
