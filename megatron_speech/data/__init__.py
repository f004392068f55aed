"""Corpora in, Megatron indexed binaries out (the data contracts of DESIGN.md, items 3 and 6)."""
