"""Fine-tuning backend: a pretrained (or, offline, from-scratch) GPT-2 trained as a classifier with the Trainer."""
