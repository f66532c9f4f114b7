"""Tools on top of the library: explain, the catalogue, plots, the demo."""
