"""What a client computes: datasets and partitions, models, engines, local training, the Ray worker."""
