"""Training: the loop, adversarial fine-tuning losses, and the pretrain / train stages' work."""
