"""Train fresh networks on a (distilled) set, test them on the real test set."""
