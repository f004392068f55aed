"""Checkpoints in every form the project reads or writes, in one room that training, synthesis,
evaluation and conversion all import (it imports none of them):

- ``megatron``: training checkpoints through ``megatron.core.dist_checkpointing`` (any TP/PP);
- ``hf``: Hugging Face Llama/Qwen2 folders <-> the canonical full state dict;
- ``trained``: a trained model for inference, checked against its tokenizer;
- ``convert``: Megatron checkpoint <-> Hugging Face folder;
- ``average``: the mean of a run's last checkpoints, as a checkpoint.
"""
