"""The model layer: the VAE, its networks and the component tables. Pure torch + Pyro: no I/O."""
