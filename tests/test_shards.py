import json
import subprocess
import sys

import numpy as np
import torch

from ddim.checkpoint import load_model
from ddim.network.precision import eps_model_for
from ddim.sampling import (
    build_sampler,
    encode_images,
    encode_to_shards,
    generate_to_shards,
    read_latent_shards,
    read_shards,
)


def setup(path):
    net, config = load_model(path)
    eps_model = eps_model_for(net)
    return eps_model, config, config.diffusion.betas(), (3, 8, 8)


def test_images_depend_on_seed_not_batch(tiny_checkpoint, tmp_path):
    eps_model, config, betas, shape = setup(tiny_checkpoint)
    sampler = build_sampler(betas, 3, eta=1.0)
    seeds = list(range(7))
    cpu = torch.device("cpu")
    for batch in (1, 3, 7):
        generate_to_shards(
            eps_model, sampler, seeds, shape, tmp_path / f"b{batch}", batch=batch, device=cpu
        )
    a, b, c = (read_shards(tmp_path / f"b{k}", 7) for k in (1, 3, 7))
    assert a.shape == (7, 3, 8, 8) and a.dtype == torch.uint8
    # the promise (docs/reliability.md): other batch sizes round differently, by one level at most
    assert (a.int() - b.int()).abs().max() <= 1 and (a.int() - c.int()).abs().max() <= 1
    assert not torch.equal(a[0], a[1])


def test_ranks_split_work_and_merge_to_the_same_images(tiny_checkpoint, tmp_path):
    eps_model, config, betas, shape = setup(tiny_checkpoint)
    sampler, seeds, cpu = build_sampler(betas, 2, eta=0.0), list(range(10)), torch.device("cpu")
    made = [
        generate_to_shards(
            eps_model,
            sampler,
            seeds,
            shape,
            tmp_path / "w",
            batch=3,
            device=cpu,
            rank=r,
            world_size=2,
        )
        for r in (0, 1)
    ]
    assert made == [6, 4]  # batches 0, 2 → rank 0 (3 + 3); 1, 3 → rank 1 (3 + 1)
    generate_to_shards(eps_model, sampler, seeds, shape, tmp_path / "one", batch=3, device=cpu)
    assert torch.equal(read_shards(tmp_path / "w", 10), read_shards(tmp_path / "one", 10))


def test_interrupted_run_resumes_missing_shards_only(tiny_checkpoint, tmp_path):
    eps_model, config, betas, shape = setup(tiny_checkpoint)
    sampler = build_sampler(betas, 2, "uniform", "ddpm", variance="large")
    seeds, cpu = list(range(8)), "cpu"
    generate_to_shards(eps_model, sampler, seeds, shape, tmp_path, batch=4, device=cpu)
    full = read_shards(tmp_path, 8)
    (tmp_path / "parts" / "part-0000004.npz").unlink()
    again = generate_to_shards(eps_model, sampler, seeds, shape, tmp_path, batch=4, device=cpu)
    assert again == 4
    assert torch.equal(read_shards(tmp_path, 8), full)


def test_encoding_to_shards_resumes_and_equals_encoding_at_once(tiny_checkpoint, tmp_path):
    eps_model, config, betas, shape = setup(tiny_checkpoint)
    sampler = build_sampler(betas, 2, eta=0.0)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    images, parts = torch.from_numpy(pixels), tmp_path / "parts"
    whole = encode_images(eps_model, sampler, images, batch=2, device="cpu")
    assert encode_to_shards(eps_model, sampler, images, parts, batch=2, device="cpu") == 5
    assert sorted(p.name for p in parts.iterdir()) == [f"part-{k:07d}.npz" for k in (0, 2, 4)]
    (parts / "part-0000002.npz").unlink()  # as if killed before that batch
    assert encode_to_shards(eps_model, sampler, images, parts, batch=2, device="cpu") == 2
    latents = read_latent_shards(parts, 5)
    assert latents.dtype == torch.float32 and torch.equal(latents, whole)


def test_sample_command_writes_exactly_n_images(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ddim",
            "sample",
            "--ckpt",
            str(tiny_checkpoint),
            "--n",
            "10",
            "--batch",
            "4",
            "--steps",
            "3",
            "--skip",
            "quad",
            "--eta",
            "0.5",
            "--png",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (10, 8, 8, 3) and f["arr_0"].dtype == np.uint8
    assert len(list((out / "png").glob("*.png"))) == 10
    assert (out / "grid.png").exists()
    record = json.loads((out / "sample.json").read_text())
    assert record["network_calls_per_image"] == 3 and record["timesteps"] == [0, 200, 800]
    assert record["sampler"]["eta"] == 0.5 and len(record["checkpoint_sha256"]) == 64


def test_sample_command_rejects_bad_values(tiny_checkpoint, tmp_path):
    for flags, message in [
        (["--eta", "-1"], "--eta=-1.0 must be finite and >= 0"),
        (["--steps", "0"], "steps must be between 1 and T = 1000, got 0"),
        (["--n", "0"], "--n must be >= 1"),
        (["--batch", "-1"], "--batch must be >= 1, got -1"),
        (["--batch", "0"], "--batch must be >= 1, got 0"),
    ]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ddim",
                "sample",
                "--ckpt",
                str(tiny_checkpoint),
                "-o",
                str(tmp_path),
                *flags,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_sample_command_reads_an_official_ckpt_pth(tmp_path):
    """The official runner's list [model, optimizer, epoch, step, ema] with `module.` prefixes."""
    from ddim.network.unet import UNet

    net = UNet(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
               dropout=0.0, in_channels=3, resolution=32, resamp_with_conv=True)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save([state, {}, 1, 10, state], tmp_path / "ckpt.pth")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "sample", "--ckpt", str(tmp_path / "ckpt.pth"), "--n", "2",
         "--steps", "2", "-o", str(out)], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (2, 32, 32, 3)
    record = json.loads((out / "sample.json").read_text())
    assert record["config"]["diffusion"]["beta_schedule"] == "linear"
