"""Model roles behind small interfaces: vision/text encoder, activation head, reaction VLM."""
