"""The ``wsinuclei`` command: a thin layer over the library. Errors the user can fix come out as one line."""

from __future__ import annotations

import argparse
import shlex
import sys

from .errors import WsinucleiError


def _cmd_prepare(args) -> int:
    from .data import prepare

    m = prepare(args.data, args.out, mpp=args.mpp, source_mpp=args.source_mpp, tile=args.tile,
                val_fraction=args.val_fraction, seed=args.seed)
    print(f"prepared {m['tiles']['train']} train tiles ({m['boxes']['train']} boxes) and {m['tiles']['val']} "
          f"validation tiles from {len(m['images'])} images into {args.out}; validation images: {', '.join(m['val'])}")
    return 0


def _cmd_train(args) -> int:
    from .models import load_preset
    from .train import train

    config = load_preset(args.preset)
    if args.input_channels:
        config.input_channels = args.input_channels
    command = "wsinuclei " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    best = train(config, args.data, args.run_dir, steps=args.steps, resume=args.resume, seed=args.seed,
                 device=args.device, threads=args.threads, color_jitter=args.color_jitter, command=command)
    print(f"best validation F1@0.5 {best.get('val_f1', float('nan')):.3f} at step {best.get('step')}; "
          f"model: {args.run_dir}/best.safetensors")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsinuclei", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("prepare", help="cut annotated images into normalised training tiles with boxes")
    sp.add_argument("data", help="folder of images with annotations (A.png + A_labels.png, or A.tif + A.xml)")
    sp.add_argument("--out", required=True, help="output folder for tiles and manifest.json")
    sp.add_argument("--mpp", type=float, default=0.25, help="the model's µm/px (default 0.25, 40x)")
    sp.add_argument("--source-mpp", type=float, default=None,
                    help="µm/px of the images when not 40x (e.g. 0.5 for 20x: upsampled to --mpp)")
    sp.add_argument("--tile", type=int, default=512, help="training tile size in px (default 512)")
    sp.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out (default 0.1)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    sp.set_defaults(func=_cmd_prepare)

    sp = sub.add_parser("train", help="train a detector preset on prepared tiles (resumable)")
    sp.add_argument("--preset", default="fast", help="preset name (fast, resnet50, resnet101) or TOML path")
    sp.add_argument("--data", required=True, help="folder written by 'wsinuclei prepare'")
    sp.add_argument("--run-dir", required=True, help="folder for checkpoints, log.csv and best.safetensors")
    sp.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sp.add_argument("--input-channels", choices=["rgb", "hematoxylin"], default=None,
                    help="override the preset's input channels")
    sp.add_argument("--color-jitter", type=float, default=0.0, help="colour jitter strength (default 0: off)")
    sp.set_defaults(func=_cmd_train)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WsinucleiError as exc:
        print(f"wsinuclei: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsinuclei: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
