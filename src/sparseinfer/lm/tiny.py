"""A tiny random-initialised Llama model and byte-level BPE tokenizer, built locally: for tests and smoke runs."""

from __future__ import annotations

from pathlib import Path

import torch

from sparseinfer.lm.model import _transformers

_SAMPLE = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "All that glitters is not gold. To be, or not to be, that is the question. "
)


def build_tiny_model(folder: str | Path, hidden: int = 32, layers: int = 3, vocab: int = 300, seed: int = 0) -> Path:
    """Write a random Llama (`layers` blocks, width `hidden`) and a tokenizer trained on a fixed sample to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tf = _transformers()
    folder = Path(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([_SAMPLE] * 4, trainer=trainer)
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    config = tf.LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
