#!/usr/bin/env python3
"""Sample class-conditional latents (and images) from a DiT teacher or a distilled CLEAR student.

    python tools/sample_dit.py --model dit_xl_2 --image-size 256 --pretrained --classes 207 360 387 --out samples
    python tools/sample_dit.py --student output/dit_xl_2_256_r8/last.pth --teacher-path DiT-XL-2-256x256.pt \\
        --classes 207 360 --sampler ddim --steps 50 --vae /path/to/sd-vae-ft-ema --out samples

Defaults follow DiT's sample.py: 250 respaced DDPM steps, guidance 4.0 against the null class. The latents are
always saved (out/latents.pt: latents, labels and the settings); with --vae (a diffusers AutoencoderKL folder,
e.g. stabilityai/sd-vae-ft-ema downloaded beforehand) they are decoded with DiT's scale 0.18215 and written as PNGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from vizattn.diffusion.distill import load_student, resolve_device, sample_latents
from vizattn.diffusion.dit import create_dit, list_dit_models
from vizattn.train.config import ConfigError

LATENT_SCALE = 0.18215


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model (a teacher, or --student)")
    src.add_argument("--model", default="dit_xl_2", help=f"DiT name, one of {', '.join(list_dit_models())}")
    src.add_argument("--image-size", type=int, default=256, help="image side in pixels (latent side = size / 8)")
    src.add_argument("--model-kwargs", type=yaml.safe_load, default={}, metavar="YAML",
                     help="extra DiT constructor arguments, e.g. '{depth: 4, num_classes: 10}'")
    src.add_argument("--pretrained", action="store_true", help="download the official weights (dit_xl_2 only)")
    src.add_argument("--teacher-path", help="DiT weights: official .pt, train.py checkpoint or diffusers file/folder")
    src.add_argument("--student", help="a tools/distill_clear.py checkpoint; the teacher comes from its settings "
                     "unless --teacher-path is given")
    smp = p.add_argument_group("sampling")
    smp.add_argument("--classes", type=int, nargs="+", default=[207, 360, 387, 974, 88, 979, 417, 279],
                     help="ImageNet class of each sample")
    smp.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    smp.add_argument("--steps", type=int, default=250, help="respaced sampling steps")
    smp.add_argument("--cfg-scale", type=float, default=4.0, help="classifier-free guidance (1: none)")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="samples", help="output folder")
    out.add_argument("--vae", help="diffusers AutoencoderKL folder to decode the latents into PNG images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        if args.student:
            overrides = {"teacher_path": args.teacher_path, "pretrained": False, "random_teacher": False} \
                if args.teacher_path else {}
            model = load_student(args.student, **overrides)
        else:
            if bool(args.pretrained) == bool(args.teacher_path):
                raise ConfigError("give exactly one of --pretrained and --teacher-path (or --student).")
            if args.image_size % 8:
                raise ConfigError(f"--image-size must be a multiple of 8, got {args.image_size}.")
            model = create_dit(args.model, pretrained=args.pretrained, checkpoint_path=args.teacher_path,
                               **dict(args.model_kwargs or {}, input_size=args.image_size // 8))
    except (ConfigError, ValueError) as e:
        print(f"sample_dit.py: error: {e}", file=sys.stderr)
        return 2
    model = model.to(device).eval()
    if device.type == "cuda":  # as DiT's sample.py
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    labels = torch.tensor(args.classes)
    latents = sample_latents(model, labels, args.sampler, args.steps, args.cfg_scale, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(dict(latents=latents.cpu(), labels=labels, args=vars(args)), out / "latents.pt")
    written = [out / "latents.pt"]
    if args.vae:
        from diffusers import AutoencoderKL
        from torchvision.utils import save_image

        vae = AutoencoderKL.from_pretrained(args.vae).to(device).eval()
        with torch.no_grad():
            images = vae.decode(latents.to(device) / LATENT_SCALE).sample
        for i, img in enumerate(images):
            path = out / f"{i:03d}_class{int(labels[i])}.png"
            save_image(img, path, normalize=True, value_range=(-1, 1))
            written.append(path)
    print(f"sampled {len(labels)} latents of shape {tuple(latents.shape[1:])}; wrote {', '.join(map(str, written[:4]))}"
          f"{' ...' if len(written) > 4 else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
