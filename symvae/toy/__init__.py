"""A model small enough to enumerate, on which both learning rules are judged by exact figures
(`symvae toy`)."""
