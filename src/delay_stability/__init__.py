"""delay-stability: the stability of asynchronous (delayed) SGD, exactly.

Modules
-------
theory     characteristic equations of delayed SGD and their stability edges (exact)
asgd       DelayedSGD, a drop-in torch.optim.Optimizer that applies stale updates
sharpness  the top Hessian eigenvalue of the training loss (Lanczos / power iteration)
models     the papers' networks and small stand-ins, built by name
data       datasets (digits, MNIST, CIFAR-10/100, ImageNet), held on the device
train      the training engine behind `delay-stability train`
pipeline   the minima-stability experiment: minimum, kick, threshold searches, long continuations
tables     its tidy tables (thresholds, fits, probes, curves)
eos        sharpness tracking along training (the delayed edge of stability)
eos_tables its plateau analysis and tables
plots      figure helpers (read tidy tables only; never train)
files      atomic JSON/CSV writers
"""

__version__ = "0.1.0"
