"""Chat: the template, conversations, finetuning (LoRA), evaluation."""
