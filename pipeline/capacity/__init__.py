"""Capacity planning: sizing formulas, a simulation of the autoscaled graph, and its chart."""
