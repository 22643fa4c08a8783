"""Generate a small Qwen3-architecture model directory that vLLM can serve with dummy weights.

Nothing is downloaded: the config is written by hand and the tokenizer is trained offline on a
seeded synthetic corpus. The tokenizer is a Metaspace BPE over printable ASCII with no byte
fallback, so every id below the model's vocab size decodes to non-empty text on its own (a
byte-level BPE would leave lone UTF-8 continuation bytes that stream out as empty deltas).

Usage: python scripts/make_model.py OUT_DIR              the native stack's small model
       python scripts/make_model.py --qwen3-8b OUT_DIR   a Qwen3-8B-shaped model for a GPU (dummy bf16
                                                         weights: 16.4 GB read per decoded token)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Qwen3-8B's real shape (hidden 4096, 36 layers, 32 query / 8 KV heads of 128, vocab 151,936), so a GPU
# server reads the same bytes per token and holds the same KV per token as with the real weights.
QWEN3_8B_CONFIG: dict[str, object] = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096,
    "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 3,
    "use_sliding_window": False,
}

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
EOS_TOKEN = "<|im_end|>"

# Qwen3-architecture, shrunk, but not so far that the engine outruns its own front-end: with
# hidden 256 x 2 layers a decode step took ~1 ms, the API server (sharing one core with the
# collector, k6 and Prometheus) fell behind, and tokens reached clients in bursts with first
# tokens up to ~0.9 s late while vLLM's engine was idle (front-end bound, unlike a GPU box).
# At hidden 1024 x 4 layers (~55 M parameters, ~110 MB of bf16 weights read per step) a step
# takes ~5 ms at one stream and ~10 ms at 16, so the engine is the bottleneck as on a GPU:
# ~200 tok/s at 1 stream, ~1,500 at 16 on a 2-core machine, one chunk per token, and a full
# sequence budget queues and preempts. 8 KV heads x 64 dims x 4 layers: 8 KiB of KV per token.
MODEL_CONFIG: dict[str, object] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": None,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": VOCAB_SIZE,
    "bos_token_id": None,
    "eos_token_id": SPECIAL_TOKENS.index(EOS_TOKEN),
    "pad_token_id": SPECIAL_TOKENS.index("<|endoftext|>"),
}

# The usual ChatML layout Qwen models use.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
_PUNCT = [".", ",", "?", "!", ";", ":", " -", "'s", "(", ")", "0", "1", "2", "42", "100"]


def synthetic_corpus(lines: int = 20000, seed: int = 7) -> list[str]:
    """Seeded pseudo-text: enough distinct words for BPE to learn a few thousand merges."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(6000)]
    words += ["the", "a", "to", "of", "and", "in", "is", "you", "that", "it", "user", "assistant"]
    ascii_line = "".join(chr(c) for c in range(32, 127))
    corpus = [ascii_line]
    for _ in range(lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 16)))
        corpus.append(sentence.capitalize() + rng.choice(_PUNCT))
    return corpus


def build_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=[chr(c) for c in range(32, 127)] + ["\n", "\u2581"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(synthetic_corpus(), trainer=trainer)
    # Pad with plain (non-special) added tokens so every id the model can emit has text.
    missing = VOCAB_SIZE - tokenizer.get_vocab_size()
    if missing > 0:
        tokenizer.add_tokens([f" w{i:04d}" for i in range(missing)])
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tokenizer.get_vocab_size()} ids, model expects {VOCAB_SIZE}")
    return tokenizer


def is_current(out: Path) -> bool:
    """True when OUT already holds this model (same config): generation is skipped."""
    try:
        return bool(json.loads((out / "config.json").read_text()) == MODEL_CONFIG
                    and (out / "tokenizer.json").exists() and (out / "tokenizer_config.json").exists())
    except (OSError, ValueError):
        return False


def write_model(out: Path) -> None:
    if is_current(out):
        return
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 4096,
        "eos_token": EOS_TOKEN,
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    generation_config = {"eos_token_id": MODEL_CONFIG["eos_token_id"], "do_sample": True}
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    # Last: a config.json means the directory is complete (is_current).
    (out / "config.json").write_text(json.dumps(MODEL_CONFIG, indent=2) + "\n")


def write_qwen3_8b(out: Path) -> None:
    """Config and a word-level tokenizer covering every id (w4 .. w151935), no weights."""
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = int(str(QWEN3_8B_CONFIG["vocab_size"]))
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # Digits and brackets are tokens of their own, so loadgen's per-request nonce ("[12345] ...") makes each
    # prompt a distinct token sequence; with words only, every prompt was the same run of <unk> tokens and
    # vLLM's prefix cache served 90% of the prompt tokens of the first H200 run.
    symbols = [*"0123456789", "[", "]"]
    vocab = ({token: i for i, token in enumerate(specials + symbols)}
             | {f"w{i}": i for i in range(len(specials) + len(symbols), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": "<unk>", "model_max_length": 40960,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(QWEN3_8B_CONFIG, indent=2) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--qwen3-8b":
        write_qwen3_8b(Path(argv[1]))
        return 0
    if len(argv) != 1:
        print("usage: make_model.py [--qwen3-8b] OUT_DIR", file=sys.stderr)
        return 2
    write_model(Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
