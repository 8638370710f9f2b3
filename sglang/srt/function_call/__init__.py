"""Tool calling: parsers of the model's tool-call text, and the grammar that forces a call."""
