"""Training engine: state, the n_critic/1 step, the loop, checkpoints and logging. Free of Ray."""
