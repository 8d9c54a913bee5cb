"""gptlab.hf against Hugging Face transformers itself: a random GPT-2 imported gives the same logits and greedy
text; a gptlab run exported loads in transformers with the same logits, text and (for a chat run) the same
rendered conversation and answer; import(export(run)) gives the same weights bit for bit; tokenizers encode alike;
GPT-2's vocabulary is OpenAI's; every failure is one line."""

import hashlib
import json
import shutil

import pytest
import torch
from helpers import assert_one_line_error, base_and_chat, reply, run_cli, tiny, write_corpus

import gptlab
from gptlab.inference import generate

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny char "base" and "chat" runs, a word-tokenizer run with an exact GELU, biases and an untied head, a
    BPE run, and char runs with rotary positions (untied) and none (tied)."""
    folder = tmp_path_factory.mktemp("hf")
    served = base_and_chat(folder)
    corpus = write_corpus(folder / "words")
    gptlab.train(tiny(corpus, tokenizer="word", vocab_size=60, bias=True, tie_weights=False, activation="gelu",
                      max_iters=5), out=folder / "word", quiet=True)
    gptlab.train(tiny(corpus, tokenizer="bpe", vocab_size=300, max_iters=5), out=folder / "bpe", quiet=True)
    for pos, tied in (("rope", False), ("none", True)):  # (GPT-NeoX's format; no biases: zeros there)
        gptlab.train(tiny(corpus, pos=pos, tie_weights=tied, activation="gelu_tanh", block_size=48, max_iters=5),
                     out=folder / pos, quiet=True)
    return {**{name: s.run.path for name, s in served.items()}, "folder": folder,
            **{name: folder / name for name in ("word", "bpe", "rope", "none")}}


def same_logits(run, hf_model, text: str) -> None:
    ids = torch.tensor([run.tokenizer.encode(text)])
    with torch.no_grad():
        ours, _ = run.model(ids)
        theirs = hf_model(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()


def greedy(run, hf_model, text: str, n: int = 12) -> tuple[list[int], list[int]]:
    ids = run.tokenizer.encode(text)
    ours = [int(t) for t in generate(run.model, ids, n, temperature=0)]
    theirs = hf_model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0)[0, len(ids):].tolist()
    return ours, theirs


@pytest.mark.parametrize("name", ["base", "word", "bpe", "rope", "none"])
def test_an_exported_run_loads_in_transformers_with_the_same_logits_and_text(runs, name, tmp_path):
    from gptlab.hf.convert import export_run

    out = export_run(runs[name], tmp_path / "hf")
    run = gptlab.load_run(runs[name], device="cpu")
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "the cat sat on the mat.\nthe dog"
    assert tokenizer(text)["input_ids"] == run.tokenizer.encode(text)
    assert tokenizer.decode(run.tokenizer.encode(text)) == run.tokenizer.decode(run.tokenizer.encode(text))
    same_logits(run, model, text)
    ours, theirs = greedy(run, model, "the ")
    assert ours == theirs


def test_a_chat_run_exported_renders_and_answers_as_gptlab_chat(runs, tmp_path):
    from gptlab.chat.reply import format_for
    from gptlab.hf.convert import export_run

    export_run(runs["chat"], tmp_path / "hf")
    run = gptlab.load_run(runs["chat"], device="cpu")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    fmt = format_for(run.tokenizer)
    talk = [{"role": "system", "content": "a short reply."}, {"role": "user", "content": "the cat"},
            {"role": "assistant", "content": "sat on a mat"}, {"role": "user", "content": "the dog"}]
    for messages in (talk, talk[1:2]):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert list(ids) == fmt.prompt(messages)
    out = model.generate(torch.tensor([list(ids)]), max_new_tokens=20, do_sample=False)[0, len(ids):]
    answer = tokenizer.decode(out, skip_special_tokens=True)
    assert answer == reply(run.model, fmt, fmt.prompt(messages), max_new_tokens=20, temperature=0) == "sat on a mat"


def test_import_of_an_export_gives_the_same_weights_bit_for_bit(runs, tmp_path):
    from gptlab.hf.convert import export_run, import_model

    for name in ("base", "word", "bpe"):
        export_run(runs[name], tmp_path / name / "hf")
        import_model(tmp_path / name / "hf", tmp_path / name / "run")
        a, b = gptlab.load_run(runs[name], device="cpu"), gptlab.load_run(tmp_path / name / "run", device="cpu")
        theirs = b.model.state_dict()
        for key, tensor in a.model.state_dict().items():
            assert torch.equal(tensor, theirs[key]), key
        text = "the cat sat"
        assert b.tokenizer.encode(text) == a.tokenizer.encode(text)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A small random GPT2LMHeadModel saved by transformers, with GPT-2's own vocabulary files beside it (as a
    folder from the hub has them)."""
    from gptlab.hf.tokenizer import gpt2_files

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    vocab, merges = gpt2_files()
    shutil.copy(vocab, folder / "vocab.json")
    shutil.copy(merges, folder / "merges.txt")
    return folder, model


def test_a_gpt2_imported_gives_its_logits_and_greedy_text(gpt2_folder, tmp_path, capsys):
    folder, model = gpt2_folder
    code, _, err = run_cli(capsys, "import", folder, "--out", tmp_path / "run")
    assert code == 0 and "imported" in err
    run = gptlab.load_run(tmp_path / "run", device="cpu")
    assert run.model.config.activation == "gelu_tanh" and run.model.config.bias and run.model.config.tie_weights
    text = "Hello world, this is a test."
    assert run.tokenizer.encode(text) == transformers.AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    same_logits(run, model, text)
    ours, theirs = greedy(run, model, text)
    assert ours == theirs
    code, out, _ = run_cli(capsys, "sample", tmp_path / "run", "--prompt", "Hello", "--max-new-tokens", "5",
                           "--temperature", "0")
    assert code == 0 and out.startswith("Hello")
    code, out, _ = run_cli(capsys, "cost", tmp_path / "run", "--json")  # (estimated: it measured nothing here)
    assert code == 0 and "run" not in json.loads(out) and "estimate" in json.loads(out)


def test_a_pytorch_bin_is_read_as_tensors_only(gpt2_folder, tmp_path, capsys):
    folder, model = gpt2_folder
    bin_folder = tmp_path / "bin"
    shutil.copytree(folder, bin_folder)
    (bin_folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), bin_folder / "pytorch_model.bin")
    assert run_cli(capsys, "import", bin_folder, "--out", tmp_path / "run")[0] == 0
    same_logits(gptlab.load_run(tmp_path / "run", device="cpu"), model, "Hello there")

    class Payload:  # what an unrestricted unpickler would run
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"x": Payload()}, bin_folder / "pytorch_model.bin")
    assert_one_line_error(*run_cli(capsys, "import", bin_folder, "--out", tmp_path / "other"),
                          "holds something other than tensors")


def test_gpt2s_vocabulary_is_openais_published_one():
    """The sha256 of OpenAI's published encoder.json and vocab.bpe (the hashes tiktoken checks them against)."""
    from gptlab.hf.tokenizer import gpt2_files, gpt2_tokenizer

    vocab, merges = gpt2_files()
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == \
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
    assert hashlib.sha256(merges.read_bytes()).hexdigest() == \
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
    tokenizer = gpt2_tokenizer(vocab, merges)
    assert tokenizer.vocab_size == 50257 and tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("<|endoftext|>") == [50256]


def test_what_cannot_be_converted_is_one_line(runs, gpt2_folder, tmp_path, capsys):
    folder, _ = gpt2_folder
    cases = [
        (("import", tmp_path, "--out", tmp_path / "a"), "is not a Hugging Face model folder"),
        (("export", tmp_path / "nothing", "--out", tmp_path / "b"), "no such run"),
        (("export", runs["base"], "--out", runs["base"], "--overwrite"), "holds a gptlab run"),
    ]
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"my": "settings"}')
    cases += [(("export", runs["base"], "--out", project), "is not empty; pass --overwrite"),
              (("export", runs["base"], "--out", project, "--overwrite"), "no export of gptlab's wrote")]
    config = json.loads((folder / "config.json").read_text())
    for i, (change, fragment) in enumerate([({"n_inner": 100}, "n_inner = 100 cannot be held by gptlab"),
                                            ({"model_type": "llama"}, "model_type is 'llama'"),
                                            ({"n_embd": "32"}, "n_embd = '32' cannot be held by gptlab"),
                                            ({"n_head": 0}, "n_head = 0 cannot be held"),
                                            ({"n_positions": 128}, "size mismatch for transformer.wpe.weight")]):
        odd = tmp_path / f"odd{i}"
        shutil.copytree(folder, odd)
        (odd / "config.json").write_text(json.dumps({**config, **change}))
        cases.append((("import", odd, "--out", tmp_path / f"c{i}"), fragment))
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "vocab.json").unlink()
    cases.append((("import", bare, "--out", tmp_path / "e"), "has no tokenizer"))
    for argv, fragment in cases:
        assert_one_line_error(*run_cli(capsys, *argv), fragment)
    assert (project / "config.json").read_text() == '{"my": "settings"}' and gptlab.load_run(runs["base"])
    assert run_cli(capsys, "import", bare, "--out", tmp_path / "e", "--gpt2-tokenizer")[0] == 0


@pytest.mark.parametrize("change, fragment", [({"pos": "sinusoidal"}, "are 'sinusoidal'; GPT-NeoX has rotary"),
                                              ({"model": "gru", "n_hidden": 16}, "has no GPT-2 form")])
def test_runs_without_a_gpt2_form_are_refused(runs, tmp_path, capsys, change, fragment):
    values = {k: v for k, v in tiny(write_corpus(tmp_path), max_iters=1).items()
              if not ("model" in change and k in ("n_head", "block_size"))}
    gptlab.train({**values, **change}, out=tmp_path / "run", quiet=True)
    assert_one_line_error(*run_cli(capsys, "export", tmp_path / "run", "--out", tmp_path / "hf"), fragment)
    assert not (tmp_path / "hf").exists()


def test_a_word_tokenizer_splits_alike_in_tokenizers_for_any_script():
    """Python's \\w and \\s spelt out for Oniguruma: decomposed Danish, Devanagari, connector punctuation and the
    separators \\x1c-\\x1f give the same pieces (and ids) in both."""
    import unicodedata

    from tokenizers import Tokenizer

    from gptlab.data.tokenizer import WordTokenizer
    from gptlab.hf.tokenizer import to_hf

    texts = [unicodedata.normalize("NFD", "Blåbærgrød på Ærø, sagde Søren."), "हिन्दी", "a‿b", "x\x1cy  z\n\t½ ²"]
    word = WordTokenizer.train(" ".join(texts))
    hf = Tokenizer.from_str(to_hf(word, 64)[0])
    for text in texts:
        assert hf.encode(text).ids == word.encode(text), text


def test_a_hub_layout_imports_too(gpt2_folder, tmp_path, capsys):
    """As folders on the hub often are: keys without "transformer.", the old causal-mask buffers, a tokenizer.json,
    gelu_pytorch_tanh (the same function as gptlab's gelu_tanh)."""
    from safetensors.torch import load_file, save_file

    folder, model = gpt2_folder
    hub = tmp_path / "hub"
    hub.mkdir()
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(folder / "model.safetensors").items()}
    tensors["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    tensors["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, hub / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (hub / "config.json").write_text(json.dumps({**config, "activation_function": "gelu_pytorch_tanh"}))
    transformers.AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(hub / "tokenizer.json"))
    assert run_cli(capsys, "import", hub, "--out", tmp_path / "run")[0] == 0
    run = gptlab.load_run(tmp_path / "run", device="cpu")
    text = "Blåbærgrød på Ærø — “quoted” naïve café 😀"
    assert run.tokenizer.encode(text) == transformers.AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    same_logits(run, model, text)


def test_unknown_words_and_text_beyond_ascii_encode_alike(runs, tmp_path):
    from gptlab.hf.convert import export_run

    out = export_run(runs["word"], tmp_path / "hf")
    run = gptlab.load_run(runs["word"], device="cpu")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for text in ("the cat <unk> sat", "the æøå cat, naïve\tdog\n", "unseen words here"):
        ids = run.tokenizer.encode(text)
        assert tokenizer(text)["input_ids"] == ids and tokenizer.decode(ids) == run.tokenizer.decode(ids)
