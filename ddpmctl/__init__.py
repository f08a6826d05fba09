"""ddpmctl: train, sample and evaluate denoising diffusion models.

    import ddpmctl
    run = ddpmctl.train(data="spiral", steps=2000)
    samples = run.sample(n=2000, sampler="dpm-solver++", steps=20)
    one = ddpmctl.distill("runs/spiral", "consistency", steps=2000)     # a one-step model
    ddpmctl.Run.load("runs/spiral").evaluate(["wasserstein"])

The API lives in ddpmctl.api (docs/api.md); its names are imported on first use, so that
`import ddpmctl` (and `ddpmctl --version`) stays light.
"""

import importlib

__version__ = "0.1.0"

_API = {"train": "ddpmctl.api", "distill": "ddpmctl.api", "sweep": "ddpmctl.api", "Run": "ddpmctl.api", "Evaluation": "ddpmctl.api", "load_dataset": "ddpmctl.api",
        "train_autoencoder": "ddpmctl.api", "load_autoencoder": "ddpmctl.api", "evaluate_autoencoder": "ddpmctl.api", "Autoencoder": "ddpmctl.latent",
        "Samples": "ddpmctl.samples", "Events": "ddpmctl.events", "Printer": "ddpmctl.events",
        "TrainSettings": "ddpmctl.config", "RunRecord": "ddpmctl.record", "DdpmctlError": "ddpmctl.errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ddpmctl' has no attribute {name!r}")
