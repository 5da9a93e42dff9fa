"""Attributions for the bot's decisions."""
