"""Sample quality: FID and KID (torchmetrics, the standard Inception network), SWD (no weights)."""
