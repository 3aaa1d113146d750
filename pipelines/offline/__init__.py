"""Offline tools: the labeled tweets, head training, fine-tuning (full and LoRA) and evaluation.
Nothing here touches Kafka or the control plane."""
