"""Automated interpretability: latent examples from an activation store, an OpenAI-compatible LLM client, a local
llama.cpp server, explanations, detection/fuzzing scores, encoder comparison and a static feature browser."""
