"""Ray Tune sweeps over IPC, loss weights and distillation hyperparameters (``raydd tune``)."""
