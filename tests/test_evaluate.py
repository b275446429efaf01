import numpy as np

from shira_diffusion.evaluate import held_out_prompts, style_strength, training_prompts
from shira_diffusion.toy.looks import LOOKS
from shira_diffusion.toy.world import render, sample_scene


def test_held_out_prompts_avoid_every_training_caption_and_are_fixed():
    prompts = held_out_prompts(100)
    assert len(prompts) == 100 and prompts == held_out_prompts(100)
    assert not {p["prompt"] for p in prompts} & training_prompts()


def test_style_strength_is_the_share_of_images_showing_the_look():
    rng = np.random.default_rng(0)
    plain = [render(sample_scene(rng)) for _ in range(10)]
    styled = [LOOKS["hatching"](image) for image in plain]
    assert style_strength(styled, "hatching") == 1.0
    assert style_strength(plain, "hatching") == 0.0
    assert style_strength(styled[:5] + plain[:5], "hatching") == 0.5


def test_eval_styles_runs_shira_and_lora_adapters_of_a_style(tmp_path, monkeypatch):
    import json

    from shira_diffusion import evaluate, generate, styles
    from shira_diffusion.evaluate import eval_styles, format_styles_table
    from shira_diffusion.training import TrainConfig, train

    monkeypatch.setattr(evaluate, "STYLES_DIR", tmp_path)
    monkeypatch.setattr(styles, "STYLES_DIR", tmp_path)
    monkeypatch.setattr(generate, "STYLES_DIR", tmp_path)
    spec = styles.STYLES["pastel"]
    styles.write_training_set(spec, tmp_path / "pastel")
    assert len(list((tmp_path / "pastel" / "images").glob("*.png"))) == styles.IMAGES
    assert (tmp_path / "pastel" / "thumbnail.png").is_file()
    files = {}
    for kind in ("shira", "lora"):
        out = styles.adapter_path("pastel", "toy-sd", kind)
        record = train(TrainConfig(train_data_dir=str(tmp_path / "pastel" / "images"), output=str(out),
                                   trigger=spec.trigger, adapter=kind, max_train_steps=1, progress=False))
        files[f"toy-sd/{kind}"] = {"params": record["trainable_params"], "seconds": record["seconds"]}
    (tmp_path / "pastel" / "style.json").write_text(json.dumps({"files": files}))
    result = eval_styles("toy-sd", ["pastel"], count=3, steps=2)
    assert set(result["styles"]) == {"pastel/shira", "pastel/lora"}
    for row in result["styles"].values():
        assert 0 <= row["strength"] <= 1 and 0 <= row["content"] <= 1 and row["params"] > 0
    assert "pastel" in format_styles_table(result)
