"""What a trained model is judged by: its sample grids and image sets, FID (and KID,
precision, recall) against the data, the importance-sampled log-likelihood, the training
curves."""
