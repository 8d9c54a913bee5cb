"""gptlab.rundir: the run folder's layout, checkpoints written atomically with checksums, and a damaged newest
checkpoint reported in one line and passed over for the previous intact one, by sampling and resuming alike."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import latest_name, losses, tiny, tiny_model, untimed, write_corpus
from safetensors.torch import load_file

from gptlab import rundir as ckpt_io
from gptlab.data.tokenizer import CharTokenizer
from gptlab.errors import GptlabError
from gptlab.files import sha256_file
from gptlab.records import read_config
from gptlab.run import load_run
from gptlab.rundir import default_run_dir
from gptlab.training.config import TrainConfig
from gptlab.training.trainer import train


def weights(ckpt) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / "model.safetensors"))


@pytest.fixture
def two_checkpoints(tmp_path):
    """A run with checkpoints at steps 3 and 6 (the newest is what each test damages)."""
    out = tmp_path / "run"
    train(tiny(write_corpus(tmp_path / "data"), max_iters=6, eval_interval=3), out=out, quiet=True)
    return out


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- writing -------------------------------------------------------------------------------------------------------

def test_save_checkpoint_replaces_the_same_step(tmp_path):
    model, tok = tiny_model(), CharTokenizer.train("abc")
    first = ckpt_io.save_checkpoint(tmp_path, 3, model, {"iter": 3}, {"a": 1}, tok)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    again = ckpt_io.save_checkpoint(tmp_path, 3, model, {"iter": 3}, {"a": 2}, tok)
    assert again == first and read_config(again, run=False) == {"a": 2}
    assert torch.equal(weights(again)["lm_head.weight"], model.lm_head.weight)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000003"]


def test_checksums_are_recorded_in_sha256sum_format(two_checkpoints):
    ckpt = ckpt_io.latest_checkpoint(two_checkpoints)
    lines = (ckpt / "SHA256SUMS").read_text().splitlines()
    names = ("model.safetensors", "trainer.pt", "config.json", "tokenizer.json")
    assert lines == [f"{sha256_file(ckpt / name)}  {name}" for name in names]
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=ckpt, check=True)


def test_checkpoints_past_the_one_saved_are_pruned(tmp_path):
    """After a resume from an earlier checkpoint, the newer ones belong to an abandoned future."""
    model, tok = tiny_model(), CharTokenizer.train("abc")
    for step in (2, 4, 6):
        ckpt_io.save_checkpoint(tmp_path, step, model, {"iter": step}, {}, tok)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000004", "step-000006"]
    ckpt_io.save_checkpoint(tmp_path, 5, model, {"iter": 5}, {}, tok)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000004", "step-000005"]
    assert latest_name(tmp_path) == "step-000005"


# --- finding and reading --------------------------------------------------------------------------------------------

def test_find_checkpoint_errors(tmp_path):
    with pytest.raises(GptlabError, match="no such run"):
        ckpt_io.open_checkpoint(tmp_path / "nothing")
    with pytest.raises(GptlabError, match="holds no checkpoint"):
        ckpt_io.open_checkpoint(tmp_path)


def test_checkpoints_are_ordered_by_step_number(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (999_998, 999_999, 1_000_000):
        (root / f"step-{step:06d}").mkdir(parents=True)
        (root / f"step-{step:06d}" / "model.safetensors").write_bytes(b"")
    assert ckpt_io.latest_checkpoint(tmp_path).name == "step-1000000"  # no `latest` pointer: the highest step


def test_default_run_dir_names():
    assert default_run_dir(TrainConfig(corpus="shakespeare")) == Path("runs/shakespeare-char")
    assert default_run_dir(TrainConfig(corpus="data/tales.txt", tokenizer="bpe")) == Path("runs/tales-bpe")
    assert default_run_dir(TrainConfig(corpus="my/tok.json", tokenizer="x/tok.json")) == Path("runs/tok-custom")
    name = default_run_dir(TrainConfig(corpus="books/*.txt")).name
    assert not set(name) & set("*?[]"), name


@pytest.mark.parametrize("damage", [cut_short, flip_a_byte])
def test_sampling_passes_over_damaged_weights_in_one_line(two_checkpoints, capsys, damage):
    damage(two_checkpoints / "checkpoints" / "step-000006" / "model.safetensors")
    run = load_run(two_checkpoints, device="cpu")
    assert run.path.name == "step-000003"
    err = capsys.readouterr().err
    assert err == ("gptlab: warning: checkpoint step-000006 is damaged (model.safetensors does not match its "
                   "checksum); using step-000003 instead\n")
    with pytest.raises(GptlabError, match="step-000006 cannot be used: model.safetensors does not match"):
        load_run(two_checkpoints / "checkpoints" / "step-000006")  # named directly: refused, not replaced


def test_resume_passes_over_a_damaged_trainer_state_and_equals_an_uninterrupted_run(two_checkpoints, tmp_path):
    flip_a_byte(two_checkpoints / "checkpoints" / "step-000006" / "trainer.pt")
    assert load_run(two_checkpoints, device="cpu").path.name == "step-000006"  # sampling needs no trainer.pt
    resumed = train({"max_iters": 9}, out=two_checkpoints, resume=True, quiet=True)
    assert sorted(losses(two_checkpoints)) == list(range(1, 10))
    whole = tmp_path / "whole"
    train(tiny(write_corpus(tmp_path / "data"), max_iters=9, eval_interval=3), out=whole, quiet=True)
    assert untimed(whole) == untimed(two_checkpoints)  # resumed at 3: the damaged 6 was trained again
    wa, wb = weights(ckpt_io.latest_checkpoint(whole)), weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_without_checksums_are_checked_by_their_structure(two_checkpoints, capsys):
    """Checkpoints written before gptlab recorded checksums: a cut-short file is found all the same, and
    reported as unreadable, not as a checkpoint that does not fit the model."""
    for ckpt in (two_checkpoints / "checkpoints").glob("step-*"):
        (ckpt / "SHA256SUMS").unlink()
    newest = two_checkpoints / "checkpoints" / "step-000006"
    cut_short(newest / "trainer.pt")
    assert load_run(two_checkpoints, device="cpu").path == newest
    assert ckpt_io.open_checkpoint(two_checkpoints, need=ckpt_io.FOR_RESUME).name == "step-000003"
    cut_short(newest / "model.safetensors")
    capsys.readouterr()
    assert load_run(two_checkpoints, device="cpu").path.name == "step-000003"
    assert "model.safetensors cannot be read" in capsys.readouterr().err


def test_a_changed_tokenizer_or_unreadable_bookkeeping_is_damage_too(two_checkpoints, capsys):
    """A vocabulary that still parses but changed on disk; a checksum file or a `latest` pointer of junk."""
    newest = two_checkpoints / "checkpoints" / "step-000006"
    tokenizer = newest / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"t"', '"q"'))
    assert load_run(two_checkpoints, device="cpu").path.name == "step-000003"
    assert "tokenizer.json does not match its checksum" in capsys.readouterr().err
    shutil.copy(two_checkpoints / "checkpoints" / "step-000003" / "tokenizer.json", tokenizer)
    assert load_run(two_checkpoints, device="cpu").path == newest
    (newest / "SHA256SUMS").write_bytes(b"\xff\xfe\x00junk")
    assert load_run(two_checkpoints, device="cpu").path.name == "step-000003"
    assert "SHA256SUMS cannot be read" in capsys.readouterr().err
    (two_checkpoints / "checkpoints" / "latest").write_bytes(b"\xff\xfe\x00junk")
    assert ckpt_io.latest_checkpoint(two_checkpoints) == newest  # the folders speak for themselves
    assert load_run(two_checkpoints, device="cpu").path.name == "step-000003"


def test_no_intact_checkpoint_is_one_line(two_checkpoints):
    for ckpt in (two_checkpoints / "checkpoints").glob("step-*"):
        cut_short(ckpt / "model.safetensors")
    with pytest.raises(GptlabError, match="no intact checkpoint in .*step-000006: model.safetensors"):
        load_run(two_checkpoints, device="cpu")
    with pytest.raises(GptlabError, match="no intact checkpoint"):
        train({}, out=two_checkpoints, resume=True, quiet=True)


def test_a_weights_file_of_another_model_is_not_called_damaged(two_checkpoints):
    with pytest.raises(GptlabError, match="does not fit this model"):
        ckpt_io.load_weights(tiny_model(vocab_size=50, n_layer=1), ckpt_io.latest_checkpoint(two_checkpoints))
