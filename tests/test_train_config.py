"""Training configs: every mistake is refused before any model loads, in one line; flags come from
the config's fields."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest

import shira_diffusion.training.trainer as trainer_module
from shira_diffusion import ShiraError
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import write_dataset
from shira_diffusion.training import TrainConfig, add_arguments, config_from_args, config_from_dict, train
from shira_diffusion.training.config import FlagParser

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("config-data")
    write_dataset(folder, 2, seed=5, style="zxq", look=LOOKS["hatching"])
    return str(folder)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: a refusal must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was refused")

    monkeypatch.setattr(trainer_module, "load_pipeline", refuse)


BAD = [
    (dict(adapter="dora"), "--adapter must be one of shira, lora"),
    (dict(mask="top"), "--mask must be one of"),
    (dict(density=0.0), r"--density must be a number in \(0, 1\]"),
    (dict(density=1.5), "--density"),
    (dict(density=math.nan), "--density"),
    (dict(rank=0), "--rank must be an integer >= 1"),
    (dict(adapter="lora", density=0.01), "--density is for SHiRA"),
    (dict(density=0.01, rank=2), "not both"),
    (dict(learning_rate=0.0), "--learning_rate must be a finite number > 0"),
    (dict(learning_rate=-1e-4), "--learning_rate"),
    (dict(learning_rate=math.nan), "--learning_rate"),
    (dict(learning_rate=math.inf), "--learning_rate"),
    (dict(lr_scheduler="cosine_annealing"), "--lr_scheduler must be one of constant"),
    (dict(lr_scheduler="piecewise_constant"), "--lr_scheduler"),
    (dict(max_train_steps=0), "--max_train_steps must be an integer >= 1"),
    (dict(train_batch_size=0), "--train_batch_size"),
    (dict(gradient_accumulation_steps=0), "--gradient_accumulation_steps"),
    (dict(lr_warmup_steps=-1), "--lr_warmup_steps"),
    (dict(seed=-1), r"--seed must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=2**63), "--seed"),
    (dict(seed=2**64 + 5), "--seed"),
    (dict(ema_decay=1.0), "--ema_decay"),
    (dict(guided_loss_scale=0.5), "--guided_loss_scale"),
    (dict(caption_dropout=1.5), "--caption_dropout must be a number in"),
    (dict(caption_dropout=-0.1), "--caption_dropout"),
    (dict(snr_gamma=-1.0), "--snr_gamma"),
    (dict(noise_offset=math.inf), "--noise_offset"),
    (dict(min_timestep=-1), "--min_timestep"),
    (dict(min_timestep=600, max_timestep=400), "--min_timestep < --max_timestep"),
    (dict(max_timestep=5000), "--max_timestep <= 1000"),  # read from the base's scheduler config
    (dict(resolution=30), "multiple of 8"),
    (dict(targets="everything"), "--targets must be one of"),
    (dict(mixed_precision="fp8"), "--mixed_precision"),
    (dict(save_dtype="int8"), "--save_dtype"),
    (dict(kohya=True), "--kohya writes a LoRA file"),
    (dict(output="x.bin"), "--output must be a .safetensors file"),
    (dict(base="no/such/base/anywhere"), "unknown base"),
    (dict(resume_from_checkpoint="latest"), "no checkpoint in"),
]


@pytest.mark.parametrize("fields, message", BAD, ids=[str(f) for f, _ in BAD])
def test_bad_configs_are_refused_before_any_model_loads(no_model_loads, toy_pipeline_folders, data, tmp_path,
                                                         fields, message):
    fields = {"base": toy_pipeline_folders["sd"], "train_data_dir": data,
              "output": str(tmp_path / "x.safetensors"), **fields}
    with pytest.raises(ShiraError, match=message) as info:
        train(TrainConfig(**fields))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_data_and_outputs_are_refused_before_any_model_loads(no_model_loads, data, tmp_path):
    def refused(match, **fields):
        fields = {"train_data_dir": data, "output": str(tmp_path / "out.safetensors"), **fields}
        with pytest.raises(ShiraError, match=match):
            train(TrainConfig(**fields))

    refused("does not exist", train_data_dir=str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    refused("no images", train_data_dir=str(empty))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    png = (Path(data) / "0000.png").read_bytes()
    (truncated / "0000.png").write_bytes(png[: len(png) // 2])
    refused(r"cannot read image .*0000.png", train_data_dir=str(truncated))
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "0000.png").write_bytes(png)
    (latin / "0000.txt").write_bytes("a red circle, caf\u00e9 style".encode("latin-1"))
    refused(r"caption file .*0000.txt is not UTF-8", train_data_dir=str(latin))
    # The output: an existing file needs --overwrite; a folder that cannot be made is named.
    (tmp_path / "taken.safetensors").write_bytes(b"an earlier adapter")
    refused("already exists; pass --overwrite", output=str(tmp_path / "taken.safetensors"))
    assert (tmp_path / "taken.safetensors").read_bytes() == b"an earlier adapter"
    (tmp_path / "a-file").write_text("")
    refused("cannot write the output folder", output=str(tmp_path / "a-file" / "x.safetensors"))
    # A new run never picks up another run's checkpoints.
    (tmp_path / "out.checkpoints").mkdir()
    (tmp_path / "out.checkpoints" / "step-000002.pt").write_bytes(b"")
    refused("holds checkpoints of an earlier run.*--overwrite")


def test_flags_come_from_the_config_fields():
    parser = FlagParser(prog="train_style.py")
    add_arguments(parser)
    options = {o for action in parser._actions for o in action.option_strings}
    # The flag names of every earlier release, unchanged.
    old = ("base train_data_dir output trigger adapter mask density rank targets resolution train_batch_size "
           "max_train_steps learning_rate lr_scheduler lr_warmup_steps gradient_accumulation_steps mixed_precision "
           "gradient_checkpointing checkpointing_steps resume_from_checkpoint validation_prompt validation_steps "
           "num_validation_images caption_dropout snr_gamma noise_offset guided_loss_scale ema_decay min_timestep "
           "max_timestep cache_latents random_flip seed name description save_dtype kohya single_file_config")
    new = {"--overwrite", "--mask_slot", "--discriminator", "--discriminator_samples", "--discriminator_sample_steps",
           "--no_check", "--no-check"}
    assert {f"--{n}" for n in old.split()} | new | {"-h", "--help"} == options
    # One source of defaults: the parsed defaults are the dataclass's.
    parsed = config_from_args(parser.parse_args(["--train_data_dir", "d", "--output", "o.safetensors"]))
    assert parsed == TrainConfig(train_data_dir="d", output="o.safetensors")
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("cli", True):
            assert f.metadata["help"], f.name
    assert config_from_dict({"train_data_dir": "d", "output": "o.safetensors", "rank": 4}).rank == 4
    with pytest.raises(ShiraError, match="unknown training option 'rnak'"):
        config_from_dict({"train_data_dir": "d", "output": "o.safetensors", "rnak": 4})


@pytest.mark.parametrize("argv, message", [
    (["--max_train_steps", "abc"], "argument --max_train_steps: invalid int value: 'abc'"),
    (["--rank", "2", "--density", "0.1"], "not allowed with argument"),
    (["--lr_scheduler", "cosine_annealing"], "invalid choice: 'cosine_annealing'"),
])
def test_bad_flags_end_in_one_line(argv, message, capsys):
    import train_style

    with pytest.raises(SystemExit) as info:
        train_style.main(["--train_data_dir", "d", "--output", "o.safetensors", *argv])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_style.py: error:") and message in lines[0]


def test_bad_values_end_in_one_line_in_both_entry_points(no_model_loads, data, tmp_path, capsys):
    import train_style
    from shira_diffusion.cli import main

    common = ["--train_data_dir", data, "--output", str(tmp_path / "o.safetensors")]
    assert train_style.main([*common, "--seed", str(2**64 + 1)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"train_style.py: error: --seed must be an integer in [0, 2**63), got {2**64 + 1}"]
    assert main(["train", *common, "--learning_rate", "nan"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["shira: error: --learning_rate must be a finite number > 0, got nan"]


def test_a_seed_past_2_64_is_one_line_from_the_command_line(data, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "train_style.py"), "--train_data_dir", data, "--output",
                          str(tmp_path / "o.safetensors"), "--seed", str(2**64 + 1)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"train_style.py: error: --seed must be an integer in [0, 2**63), "
                                               f"got {2**64 + 1}"]


def test_shira_train_interrupted_says_how_to_resume_and_exits_130(monkeypatch, data, tmp_path, capsys):
    import shira_diffusion.training as training
    from shira_diffusion.cli import main
    from shira_diffusion.training import TrainingInterrupted

    checkpoint = str(tmp_path / "o.checkpoints" / "step-000003.pt")

    def interrupted(config, **kwargs):
        raise TrainingInterrupted({"steps": 3, "total_steps": 10, "checkpoint": checkpoint})

    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(SystemExit) as info:
        main(["train", "--train_data_dir", data, "--output", str(tmp_path / "o.safetensors")])
    assert info.value.code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"shira: interrupted at step 3 of 10; checkpoint {checkpoint}: run the same command with "
                     "--resume_from_checkpoint latest to finish"]
