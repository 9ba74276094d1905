"""delay-stability: the stability of asynchronous (delayed) SGD, exactly.

The library (each module one concern; none imports an experiment or a plot):

theory     characteristic equations of delayed SGD and their stability edges (exact; no torch)
spec       training specs: defaults, validation, overrides (no torch)
asgd       DelayedSGD, a drop-in torch.optim.Optimizer that applies stale updates
models     the papers' networks and small stand-ins, built by name
data       datasets (digits, MNIST-1D, MNIST, CIFAR-10/100, ImageNet), held on the device
train      the training engine behind `delay-stability train`; load_run for analysis
sharpness  the top Hessian eigenvalue of the training loss (Lanczos / power iteration)
measure    `delay-stability sharpness`: the solver on a saved run
files      atomic writes, JSON/CSV readers, code hashes
errors     UserError (one line, exit status 2)
cli        `delay-stability`, the one entry point

experiments/  one module per experiment (theory, stability, eos, ...) and grid.py
plots/        one module per experiment and the shared style (docs/layout.md)
"""

__version__ = "0.1.0"
