"""Built-in trainer side effects implemented as hook plugins (plots, TensorBoard, validation on whole volumes)."""
