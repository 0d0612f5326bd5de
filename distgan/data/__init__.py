"""Data: shard writing (prepare, demo), streaming reader for training and validation."""
