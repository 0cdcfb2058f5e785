"""Model source -> versioned SavedModel with serving signatures; verification; inspection."""
