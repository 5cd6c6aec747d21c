"""Evaluation of trained dictionaries and inference methods: held-out reconstruction, downstream loss, matched-L0
comparison of runs, refinement of pretrained SAEs, and one-shot inference on synthetic problems or files."""
