"""Grain pipelines from task buffers to padded device batches (see pipeline.py)."""

from azr_jax.data.pipeline import (
    PipelineState,
    PromptBatch,
    batch_from_prompts,
    build_prompt_batch,
    collate,
    concat_rows,
    left_pad,
    prompt_stream,
    stream_seed,
)

__all__ = [
    "PipelineState", "PromptBatch", "batch_from_prompts", "build_prompt_batch", "collate", "concat_rows", "left_pad",
    "prompt_stream", "stream_seed",
]
