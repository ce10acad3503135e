"""Training: the state pytree, the jitted step per task, and the one train loop."""
