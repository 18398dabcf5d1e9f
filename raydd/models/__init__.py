"""Networks used in the distillation literature and a flat-parameter functional view."""
