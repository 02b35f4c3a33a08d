"""`symvae COMMAND [ARGS]`, or `python -m symvae COMMAND [ARGS]`: the library's tools under one
command. Each command is its module's own command line;
`symvae COMMAND --help` shows its flags. The experiment folders' scripts (main_sym.py,
main_elbo.py, generate.py, generate_data.py) stay as the authors type them.
"""
from __future__ import annotations

import importlib
import sys

# command -> (module of symvae whose main(argv) runs it, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("data.fetch", "MNIST, Fashion-MNIST and Inception weights, offline, verified"),
    "fid": ("evaluate.fid", "FIDs of a trained model's samples (in its experiment folder)"),
    "loglik": ("evaluate.loglik", "importance-sampled log-likelihood of data images under a model"),
    "plot": ("evaluate.plot", "training curves and the latest grids from an experiment's logs"),
    "reproduce": ("reproduce.runner", "the FID tables: train, sample and score a preset's rows"),
    "convert": ("learn.convert", "checkpoints to and from the authors' format"),
    "bench": ("reproduce.bench", "training speed per experiment and method, beside the authors'"),
    "crosscheck": ("authors.crosscheck", "one iteration against the authors' code, by figure"),
    "lockstep": ("authors.lockstep", "whole runs against the authors' code on shared draws"),
    "gpu-check": ("reproduce.gpu_check", "the prepared GPU check: speed, then one table row"),
    "gpu-assets": ("reproduce.gpu_assets", "pack what the GPU check needs on a machine offline"),
    "toy": ("toy.train", "the enumerable toy model: the equilibrium checked exactly"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: symvae COMMAND [ARGS]   (or: python -m symvae COMMAND [ARGS])", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "symvae COMMAND --help shows a command's flags. Training and sampling run in an",
              "experiment folder: python main_sym.py, main_elbo.py, generate.py, generate_data.py."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose from {', '.join(COMMANDS)} "
              "(symvae --help)", file=sys.stderr)
        return 2
    from symvae.entry import guarded
    module = importlib.import_module(f"symvae.{COMMANDS[name][0]}")
    sys.argv[0] = f"symvae {name}"  # the command's usage lines name it as typed
    # the outer handler every entry point has (those whose main() carries it keep theirs)
    return guarded(lambda: module.main(rest), name)


if __name__ == "__main__":
    sys.exit(main())
