"""The speech GPT: config, Megatron model building, weight layouts and vocabulary expansion."""
