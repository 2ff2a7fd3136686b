"""wsviz: weight-space visual analysis for merging and pruning."""
