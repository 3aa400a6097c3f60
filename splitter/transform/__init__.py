"""Graph surgery into blocks that keep the model's FQNs, and its verification on the real model."""
