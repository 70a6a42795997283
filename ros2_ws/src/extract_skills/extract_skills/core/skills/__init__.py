"""Skill extraction and skill learning: encoders, clustering/segmentation, the skill VAE, the checkpoint contract and what the nodes load."""
