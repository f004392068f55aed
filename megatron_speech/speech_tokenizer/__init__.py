"""The supervised speech tokenizer: a NeMo ASR model with a vector-quantized bottleneck, the job that
turns a speech manifest into speech tokens, and its evaluation."""
