"""The CLIP trainer: reads the pipeline's WebDataset shards, trains and evaluates."""
