"""Speed of the FID score command's two parts, and the wall time of one table row they imply.

    python benchmarks/fid_speed.py [--device cpu] [--feature_bs 50] [--chain_bs 1000]
                                   [--n 10000] [--chain_steps 1000] [--repeats 3]

Prints images per second of pytorch-fid's Inception (pool3) with contiguous and
channels_last tensors, image-steps per second of the mnist-ladder limiting chain
(nz0 30, nz1 100; untrained weights cost the same), and the estimated wall time of
`python -m symvae fid --n N --chain_steps S`: N data images once (then cached),
2N sample images through Inception, and N chains of S steps.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from symvae.cli import pick_device
from symvae.evaluate import frechet
from symvae.experiment import load_model_class
from symvae.model.sampling import chain_start, run_chain

REPO = Path(__file__).resolve().parent.parent


def best_rate(work: int, run, repeats: int) -> float:
    """Items per second of the fastest of `repeats` timed calls (after one warm-up call).

    Also prints the process's CPU seconds per item of that call: on a machine shared
    with other jobs, CPU seconds / threads estimates the wall time on a quiet one.
    """
    run()
    best, cpu = float("inf"), 0.0
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        if time.perf_counter() - start < best:
            best, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"  ({cpu / work:.3f} CPU s per item, {torch.get_num_threads()} threads)")
    return work / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--feature_bs", type=int, default=50)
    p.add_argument("--chain_bs", type=int, default=1000)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--chain_steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = pick_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")

    from pytorch_fid.inception import InceptionV3
    if not frechet.weights_path().is_file():
        raise SystemExit(f"{frechet.weights_path()} missing; "
                         "run `python -m symvae.data fetch inception`")
    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[frechet.POOL3]]).to(device).eval()
    x = frechet.inception_input(torch.rand(args.feature_bs, 1, 28, 28, device=device))
    rates = {}
    for name, fmt in (("contiguous", torch.contiguous_format),
                      ("channels_last", torch.channels_last)):
        net = net.to(memory_format=fmt)
        xf = x.contiguous(memory_format=fmt)
        with torch.inference_mode():
            rates[name] = best_rate(len(x), lambda n=net, x=xf: n(x), args.repeats)
        print(f"Inception pool3, batch {args.feature_bs}, {name}: {rates[name]:.2f} images/s")

    model = load_model_class(REPO / "mnist-ladder")(30, 100).to(device).eval()
    start = chain_start(model, model.fid_chain_start, args.chain_bs)
    steps = 3  # sampled steps; each call makes steps + 1 encoder passes
    chain = best_rate(args.chain_bs * (steps + 1), lambda: run_chain(model, start, steps),
                      args.repeats)
    print(f"limiting chain, {args.chain_bs} chains side by side: {chain:.0f} image-steps/s")

    feat = max(rates.values())
    data_s = args.n / feat
    samples_s = 2 * args.n / feat + args.n * (args.chain_steps + 2) / chain
    print(f"estimated row of --n {args.n} --chain_steps {args.chain_steps}: "
          f"{samples_s / 60:.1f} min with cached data statistics "
          f"(features {2 * args.n / feat / 60:.1f} min, chains "
          f"{args.n * (args.chain_steps + 2) / chain / 60:.1f} min), "
          f"+{data_s / 60:.1f} min the first time for the data statistics")


if __name__ == "__main__":
    main()
