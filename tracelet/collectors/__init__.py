"""Collectors: what the machine did and which code ran, sampled beside the training."""
