"""Relevance: LRP rules, the kernels that run them and the driver that explains a prediction."""
