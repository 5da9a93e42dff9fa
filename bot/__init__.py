"""Candor core: bot files, the GPT-2 dialogue model, training, evaluation and dialogue turns.

Nothing here imports safety/, explain/ or ui/.
"""
