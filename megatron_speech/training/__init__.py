"""Pre-training on Megatron-Core: config, data, the step, the loop."""
