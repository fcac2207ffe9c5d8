"""Fine-tuning: adapt a pretrained (or fresh) model to a task. `classify` adds a classification head."""
