"""Research tools: datasets, synthetic subjects, training, evaluation, stability and group comparison."""
