"""Mixing styles: what a mix does to each member, in weight space and in the images."""

from .deltas import AdapterDeltas, load_deltas
from .weight_metrics import pair_metrics, pairwise_metrics

__all__ = ["AdapterDeltas", "load_deltas", "pair_metrics", "pairwise_metrics"]
