"""Log-likelihood of held-out images by importance sampling, the encoder as proposal.

Run inside an experiment folder:

    python -m symvae loglik --call_prefix 0 --nz0 30 --nz1 100 [--k 100] [--n 1000]

For each of the last --n images of the data set (the official test split is the last
10,000; the authors train on all 70,000, so these images were seen in training too) it
draws K latent codes from q(z|x) and estimates log p(x) = log (1/K) sum_k p(z_k, x) /
q(z_k|x) (symvae.evaluate.metrics). The estimate is a stochastic lower bound that tightens as K
grows; K = 1 gives the single-sample ELBO. Printed as the mean over the images with its
standard error, in nats per image (for grey-level data a log density), and appended to
loglik_results.json in the folder. Cost: K x n passes of the encoder and decoder.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from symvae.cli import (
    check_flags,
    fail,
    interruptible,
    load_data,
    model_flags,
    pick_device,
    positive,
    seed_everything,
)
from symvae.entry import guarded, parse_args
from symvae.evaluate.generate import load_trained
from symvae.evaluate.metrics import importance_log_likelihood, mean_se
from symvae.experiment import load_model_class
from symvae.ground import atomic_write
from symvae.learn import checkpoint as ckpt_io
from symvae.learn import runtime

RESULTS = "loglik_results.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Importance-sampled log-likelihood of the test images (encoder as "
                    "proposal); run inside an experiment folder.")
    model_flags(p)
    p.add_argument("--k", type=int, default=100, help="codes drawn per image (default 100)")
    p.add_argument("--n", type=int, default=1000,
                   help="images, the last n of the data set (default 1000, at most 10000: "
                        "the official test split)")
    p.add_argument("--bs", type=int, default=10, help="images per pass (K codes each)")
    p.add_argument("--data_root", default=None, help="as for main_sym.py")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command; Ctrl-C or SIGTERM stop it with 130 or 143, before a record is written."""
    return interruptible(lambda: estimate(argv))


def estimate(argv: list[str] | None) -> int:
    args = parse_args(parser(), argv)
    folder = Path.cwd()
    try:
        model_cls = load_model_class(folder)
    except FileNotFoundError as err:
        fail(str(err))
    check_flags(args)  # the shared checks of --n, --bs and the model's flags
    positive("--k", args.k)
    if args.n > 10_000:
        fail(f"--n {args.n}: the test split has 10000 images; use --n 10000 or less")
    results = folder / RESULTS
    try:
        records = json.loads(results.read_text()) if results.is_file() else []
        if not isinstance(records, list):
            raise TypeError("not a list of records")
    except (ValueError, TypeError) as err:
        fail(f"{results}: unreadable results file ({err}); move it away or delete it")
    device = pick_device(args.device)
    model = load_trained(model_cls, args, device)
    runtime.configure(device, tf32=args.tf32, strict_fp32=args.fp32_strict)
    seed_everything(args.seed)
    data = load_data(model_cls.dataset, args.data_root, device)
    x = data.as_float(data.images[-args.n:])
    values = importance_log_likelihood(model, x, args.k, args.bs)
    mean, se = mean_se(values)
    method = ckpt_io.load(folder / "models" / f"m_{args.call_prefix}.pt").get("method")
    label = f"{method}/{args.call_prefix}" if method else args.call_prefix
    print(f"{label}: log p(x) = {mean:.3f} ± {se:.3f} nats per image "
          f"(K = {args.k}, last {len(x)} images)")
    records.append({"label": label, "tag": args.call_prefix, "method": method,
                    "experiment": model.experiment, "loglik": mean, "loglik_se": se,
                    "k": args.k, "n": len(x), "seed": args.seed,
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
    text = json.dumps(records, indent=1) + "\n"
    try:
        atomic_write(results, lambda f: f.write(text.encode()))
    except OSError as err:
        fail(f"cannot write {results} ({err.strerror or err}); the figure is printed above",
             code=4)
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded(main, "loglik"))
