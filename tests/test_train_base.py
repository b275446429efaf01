import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from shira_diffusion.toy.generic import SAMPLERS, STRUCTURED, apply_generic, random_texture
from shira_diffusion.toy.looks import MEASURES, THRESHOLDS
from shira_diffusion.toy.train_base import caption_batch, decoder_batch, main, vae_batch
from shira_diffusion.toy.world import SIZE, parse_prompt, render, sample_scene


def test_generic_looks_caption_what_they_do_and_stay_clear_of_the_bundled_looks():
    rng = np.random.default_rng(0)
    fired = 0
    for name, sampler in SAMPLERS.items():
        for _ in range(10):
            image, phrase = sampler(render(sample_scene(rng)), rng)
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            assert phrase.startswith("with ")
            fired += sum(MEASURES[k](image) >= THRESHOLDS[k] for k in MEASURES)
    # Residual overlap: darkened whites (vignette, gradient) read as pastel black's gray.
    assert fired <= 0.1 * 10 * len(SAMPLERS)
    assert "grain" not in STRUCTURED
    assert random_texture(rng).shape == (SIZE, SIZE, 3)
    assert apply_generic(render(sample_scene(rng)), rng, ["border"])[1].endswith("border")


def test_batches_are_seeded_by_step():
    assert torch.equal(vae_batch(0, 5, 4), vae_batch(0, 5, 4))
    assert not torch.equal(vae_batch(0, 5, 4), vae_batch(0, 6, 4))
    assert torch.equal(decoder_batch(0, 5, 4), decoder_batch(0, 5, 4))
    assert decoder_batch(0, 5, 6).shape == (6, 3, SIZE, SIZE)
    images, captions = caption_batch(0, 3, 16)
    assert images.shape == (16, 3, SIZE, SIZE) and -1 <= images.min() and images.max() <= 1
    for caption in captions:
        if caption:
            parse_prompt(caption.split(", with")[0])


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("arch, cls", [("sd", StableDiffusionPipeline), ("sdxl", StableDiffusionXLPipeline)])
def test_training_writes_a_loadable_base_and_resumes_exactly(tmp_path, arch, cls):
    common = ["--arch", arch, "--batch-size", "2", "--vae-steps", "2", "--checkpoint-every", "1",
              "--sample-every", "0", "--sample-steps", "2"]
    main(common + ["--unet-steps", "2", "--out", str(tmp_path / "a"), "--work-dir", str(tmp_path / "wa")])
    main(common + ["--unet-steps", "1", "--out", str(tmp_path / "b1"), "--work-dir", str(tmp_path / "wb")])
    main(common + ["--unet-steps", "2", "--out", str(tmp_path / "b"), "--work-dir", str(tmp_path / "wb"), "--resume"])
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.dtype == torch.float16 for t in a.values())  # stored in fp16 to stay small
    pipe = cls.from_pretrained(tmp_path / "a")
    assert pipe.unet.config.sample_size == 16
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["size_mb"] < 25
    assert set(record["vae_median_psnr_db"]) == {"plain", "structured", "bundled looks"}
    assert (tmp_path / "a" / "README.md").read_text().startswith(f"# toy-{arch}")
    assert (tmp_path / "a" / "samples.png").is_file()


@pytest.mark.slow
def test_decoder_stage_changes_only_the_decoder(tmp_path):
    """``--decoder-steps`` continues a base: the encoder (hence the latent space), the UNet and
    the text encoder stay bit-exact; the decoder learns; the card repeats both commands."""
    from safetensors.torch import load_file

    common = ["--arch", "sd", "--batch-size", "2", "--sample-every", "0", "--sample-steps", "2"]
    main(common + ["--vae-steps", "2", "--unet-steps", "1", "--out", str(tmp_path / "a"), "--work-dir", str(tmp_path / "wa")])
    main(common + ["--vae-steps", "0", "--unet-steps", "0", "--decoder-steps", "2", "--init-from", str(tmp_path / "a"),
                   "--out", str(tmp_path / "b"), "--work-dir", str(tmp_path / "wb")])
    assert all(torch.equal(t, _weights(tmp_path / "b")[k]) for k, t in _weights(tmp_path / "a").items())
    vae_a = load_file(str(tmp_path / "a" / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_b = load_file(str(tmp_path / "b" / "vae" / "diffusion_pytorch_model.safetensors"))
    changed = {k for k in vae_a if not torch.equal(vae_a[k], vae_b[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    card = (tmp_path / "b" / "README.md").read_text()
    assert "--decoder-steps 2" in card and "--vae-steps 2" in card


class _RunsCode:
    """A pickled object that would run code when unpickled: what a crafted checkpoint carries."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_runs_no_code_when_resumed(tmp_path):
    """``--resume`` loads only tensors, numbers and strings (``weights_only``), whatever the torch."""
    import pickle

    from shira_diffusion.toy.train_base import load_checkpoint

    marker = tmp_path / "ran"
    crafted = tmp_path / "checkpoint-5.pt"
    torch.save({"step": 5, "payload": _RunsCode(str(marker))}, crafted)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(str(crafted))
    assert not marker.exists()
    plain = tmp_path / "checkpoint-6.pt"
    torch.save({"step": 6, "stage": "vae", "unet": {"w": torch.ones(2)}, "optimizer": {"betas": (0.9, 0.99)}}, plain)
    assert load_checkpoint(str(plain))["step"] == 6
