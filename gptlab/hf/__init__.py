"""In and out of the Hugging Face ecosystem: GPT-2's format (gpt2.py), tokenizers as `tokenizers` files and GPT-2's
own vocabulary (tokenizer.py), and the `gptlab import` / `gptlab export` commands' work (convert.py).

`transformers` is needed by nothing here: an export is read by it, and the tests use it to check that."""
