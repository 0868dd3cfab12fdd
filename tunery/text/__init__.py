"""Text: chat templates (render -> input_ids + labels, loss on model turns only)."""
