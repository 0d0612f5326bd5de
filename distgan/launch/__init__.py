"""Launchers: the edge where Ray meets the (Ray-free) training loop."""
